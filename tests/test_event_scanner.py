"""The SSE scanner against a plain reference: whatever the events and however the
stream is cut into reads, the app gets the same bytes (minus the usage chunk flywheel
asked for) and the outcome records the same ids, finish reasons, usage and text."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import event_scanner
from proxy.event_scanner import EventScanner
from proxy.observation import Outcome

BASE = {"object": "chat.completion.chunk", "created": 1}


def _delta(i: int, text: str) -> bytes:
    chunk = {"id": f"c{i}", "model": f"m{i}", **BASE, "choices": [{"index": 0, "delta": {"content": text}}]}
    return b"data: " + orjson.dumps(chunk)


def _finish(i: int, reason: str) -> bytes:
    chunk = {"id": f"c{i}", "model": "m", **BASE, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}
    return b"data: " + orjson.dumps(chunk)


def _usage(i: int, tokens: int) -> bytes:
    usage = {"prompt_tokens": tokens, "completion_tokens": tokens + 1}
    return b"data: " + orjson.dumps({"id": f"c{i}", "model": "m", **BASE, "choices": [], "usage": usage})


# Azure OpenAI's first chunk: prompt filter results, with an empty id and model.
AZURE_FILTER = b'data: {"id":"","object":"","created":0,"model":"","choices":[],"prompt_filter_results":[]}'

EVENTS = st.one_of(
    st.builds(_delta, st.integers(0, 3), st.text(max_size=12)),
    st.builds(_finish, st.integers(0, 3), st.sampled_from(["stop", "length", "tool_calls"])),
    st.builds(_usage, st.integers(0, 3), st.integers(0, 99)),
    st.just(b": keep-alive"),
    st.just(b'data: {"error":{"type":"server_error","message":"boom"}}'),
    st.just(b"event: ping\ndata: {}"),
    st.just(b"data: not json"),
    st.just(b"data: [DONE]"),
    st.just(AZURE_FILTER),
)


def _usage_only(event: bytes) -> bool:
    payload = event.removeprefix(b"data: ")
    if not payload.startswith(b"{"):
        return False
    parsed = orjson.loads(payload)
    return parsed.get("choices") == [] and isinstance(parsed.get("usage"), dict)


def _reference(events: list[bytes], keep_text: bool) -> Outcome:
    """Every event parsed in order, through the outcome's own reading of one event."""
    outcome = Outcome("chat/completions", keep_text=keep_text)
    for event in events:
        payload = b"\n".join(line[6:] for line in event.split(b"\n") if line.startswith(b"data: "))
        if payload == b"[DONE]":
            outcome.completed = True
        elif payload.startswith(b"{"):
            outcome.read_event(orjson.loads(payload))
    return outcome


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(EVENTS, max_size=14),
    cuts=st.lists(st.integers(0, 2000), max_size=6),
    hide_usage=st.booleans(),
    keep_text=st.booleans(),
    crlf=st.booleans(),
)
def test_scanner_matches_reading_every_event(
    events: list[bytes], cuts: list[int], hide_usage: bool, keep_text: bool, crlf: bool
) -> None:
    separator = b"\r\n\r\n" if crlf else b"\n\n"
    stream = b"".join((event.replace(b"\n", b"\r\n") if crlf else event) + separator for event in events)
    outcome = Outcome("chat/completions", keep_text=keep_text)
    scanner = EventScanner(outcome, hide_usage)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    relayed = b"".join(scanner.feed(stream[a:b]) for a, b in zip(points, points[1:], strict=False) if b > a)
    relayed += scanner.close()

    kept = [e for e in events if not (hide_usage and _usage_only(e))]
    expected = b"".join((e.replace(b"\n", b"\r\n") if crlf else e) + separator for e in kept)
    assert relayed == expected
    want = _reference(events, keep_text)
    assert (outcome.response_id, outcome.response_model) == (want.response_id, want.response_model)
    assert (outcome.input_tokens, outcome.output_tokens) == (want.input_tokens, want.output_tokens)
    assert outcome.finish_reasons == want.finish_reasons
    assert (outcome.error_type, outcome.completed) == (want.error_type, want.completed)
    assert outcome.texts == want.texts


def test_one_read_of_a_whole_stream_parses_only_what_it_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """A provider's whole answer in one read: the content deltas in between are skipped."""
    events = [_delta(0, "a"), *(_delta(1, w) for w in "bcdefgh"), _finish(2, "stop"), _usage(3, 5), b"data: [DONE]"]
    outcome = Outcome("chat/completions")
    scanner = EventScanner(outcome, hide_usage=True)
    parsed: list[bytes] = []
    loads = orjson.loads

    def counting(data: bytes) -> object:
        parsed.append(bytes(data))
        return loads(data)

    shown = b"".join(e + b"\n\n" for e in events if not _usage_only(e))
    monkeypatch.setattr(event_scanner.orjson, "loads", counting)
    assert scanner.feed(b"".join(e + b"\n\n" for e in events)) == shown
    # The closing [DONE] is known without a look at it.
    assert parsed == [e.removeprefix(b"data: ") for e in (events[0], events[-3], events[-2])]
    assert (outcome.response_id, outcome.finish_reasons, outcome.output_tokens) == ("c0", {0: "stop"}, 6)
    assert outcome.completed


def test_a_provider_that_writes_json_with_spaces_is_read_all_the_same() -> None:
    """After the first event the scanner looks only for the spelling the provider uses."""
    spaced = [
        b'data: {"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"content": "a"}}]}',
        b'data: {"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}',
        b'data: {"id": "c1", "model": "m", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}',
        b"data: [DONE]",
    ]
    for reads in (spaced, [b"\n\n".join(spaced)]):  # event by event, and all in one read
        outcome = Outcome("chat/completions")
        scanner = EventScanner(outcome, hide_usage=True)
        relayed = b"".join(scanner.feed(read + b"\n\n") for read in reads) + scanner.close()
        assert relayed == spaced[0] + b"\n\n" + spaced[1] + b"\n\n" + spaced[3] + b"\n\n"
        assert (outcome.response_id, outcome.finish_reasons, outcome.input_tokens, outcome.output_tokens) == (
            "c1",
            {0: "stop"},
            3,
            4,
        )
        assert outcome.completed


def test_ids_left_empty_by_a_first_chunk_come_from_the_next() -> None:
    """Azure OpenAI opens a stream with a prompt-filter chunk whose id and model are empty."""
    events = [AZURE_FILTER, _delta(1, "a"), _finish(1, "stop"), _usage(1, 2), b"data: [DONE]"]
    for reads in (events, [b"\n\n".join(events)]):  # event by event, and all in one read
        outcome = Outcome("chat/completions")
        scanner = EventScanner(outcome, hide_usage=True)
        for read in reads:
            scanner.feed(read + b"\n\n")
        scanner.close()
        assert (outcome.response_id, outcome.response_model) == ("c1", "m1")
        assert (outcome.finish_reasons, outcome.output_tokens) == ({0: "stop"}, 3)
