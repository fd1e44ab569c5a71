"""The schema evaluator: verdicts on JSON answers and streams (whole ones only), in place
for small outputs and in the worker for large ones, and at shutdown."""

from __future__ import annotations

import threading
from pathlib import Path

import aiohttp
import orjson

from flywheel.registry import Version, open_registry
from flywheel.registry.version import content_from_mapping
from flywheel.spans import open_span_source
from proxy.app import TELEMETRY
from proxy.observation import Outcome
from proxy.server import running
from proxy.tracing import Export
from tests.conftest import config_for
from tests.fake_upstream import FakeUpstream, Reply, sse
from tests.spans import traced_proxy
from tests.test_telemetry import CHAT, MESSAGES, client


async def test_prompt_and_schema_evaluation_on_the_span(upstream: FakeUpstream, tmp_path: Path) -> None:
    registry = open_registry(tmp_path / "r")
    good = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    bad = {"type": "object", "required": ["score"]}
    registry.push("good", content_from_mapping({"template": "Answer.", "response_schema": good}))
    registry.push("bad", content_from_mapping({"template": "Score.", "response_schema": bad}))
    json_stream = [b'{"ans', b'wer": ', b'"yes"}']
    events = sse(
        *[{"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": p.decode()}}]} for p in json_stream],
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    )
    async with traced_proxy(upstream, registry=registry) as traced, client(traced.url) as c:
        for name in ("good", "bad"):
            await c.chat.completions.create(model="m", messages=MESSAGES, extra_headers={"X-Prompt-Name": name})
        upstream.script(CHAT, Reply(content_type="text/event-stream", body=events))
        stream = await c.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, extra_headers={"X-Prompt-Name": "good"}
        )
        _ = [chunk async for chunk in stream]
        spans = await traced.spans.wait_for(3, "chat")
        async with aiohttp.ClientSession() as session, session.get(traced.url + "/metrics") as r:
            metrics = await r.text()
    results = [(s.attributes["gen_ai.prompt.name"], s.attributes["flywheel.eval.schema_valid"]) for s in spans]
    assert results == [("good", True), ("bad", False), ("good", True)]
    assert all(
        s.attributes["flywheel.prompt.arm"] == "stable" and len(s.attributes["gen_ai.prompt.version"]) == 12
        for s in spans
    )
    assert 'flywheel_schema_results_total{arm="stable",model="m",prompt="good"' in metrics
    assert 'result="invalid",version=' in metrics


async def test_a_stream_without_done_is_whole_when_every_choice_finished(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Some OpenAI-compatible servers end a stream without ``[DONE]``. A clean end after the
    finish reason is a whole answer (its schema is checked); a clean end before it is not."""
    registry = open_registry(tmp_path / "r")
    schema = {"type": "object", "required": ["answer"]}
    registry.push("p", content_from_mapping({"template": "Answer.", "response_schema": schema}))
    text = {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": '{"answer": "yes"}'}}]}
    finished = {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    async with traced_proxy(upstream, registry=registry) as traced, client(traced.url) as c:
        for events in (sse(text, finished, done=False), sse(text, done=False)):
            upstream.script(CHAT, Reply(content_type="text/event-stream", body=events))
            stream = await c.chat.completions.create(
                model="m", messages=MESSAGES, stream=True, extra_headers={"X-Prompt-Name": "p"}
            )
            _ = [chunk async for chunk in stream]
        whole, cut = await traced.spans.wait_for(2, "chat")
    assert whole.attributes["flywheel.eval.schema_valid"] is True
    assert whole.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert "flywheel.eval.schema_valid" not in cut.attributes and "error.type" not in cut.attributes


def test_a_clean_end_is_whole_only_when_every_choice_with_output_finished() -> None:
    outcome = Outcome("chat/completions", keep_text=True)
    for index in (0, 1):
        outcome.read_event({"id": "c", "model": "m", "choices": [{"index": index, "delta": {"content": "x"}}]})
    outcome.read_event({"id": "c", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    outcome.stream_ended()
    assert not outcome.completed  # choice 1 was cut short
    outcome.read_event({"id": "c", "model": "m", "choices": [{"index": 1, "delta": {}, "finish_reason": "length"}]})
    outcome.stream_ended()
    assert outcome.completed
    responses = Outcome("responses", keep_text=True)
    responses.finish_reasons[0] = "stop"
    responses.stream_ended()
    assert not responses.completed  # the Responses API ends with its terminal event, or not at all


def _big_answer(valid: bool) -> bytes:
    """A JSON answer of ~600 KB: jsonschema takes a few hundred ms over it."""
    items = [{"id": i, "name": f"item {i}", "tags": ["a", "b"]} for i in range(12_000)]
    if not valid:
        items[-1]["id"] = "last"
    text = orjson.dumps({"items": items}).decode()
    message = {"role": "assistant", "content": text}
    return orjson.dumps(
        {"id": "c", "model": "m", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    )


ITEMS_SCHEMA = {
    "type": "object",
    "required": ["items"],
    "properties": {"items": {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "integer"}}}}},
}


async def test_a_large_output_is_checked_off_the_event_loop(upstream: FakeUpstream, tmp_path: Path) -> None:
    """A large answer's schema check runs in the schema worker, not on the loop that
    serves every call; its verdict reaches the span and the metrics all the same."""
    registry = open_registry(tmp_path / "r")
    registry.push("p", content_from_mapping({"template": "List.", "response_schema": ITEMS_SCHEMA}))
    upstream.script(CHAT, Reply(body=[_big_answer(True)]), Reply(body=[_big_answer(False)]))
    async with traced_proxy(upstream, registry=registry) as traced, client(traced.url) as c:
        checks = traced.proxy.app[TELEMETRY].schemas
        threads: list[str] = []
        check = checks.valid

        def valid(version: Version, text: str) -> bool:
            threads.append(threading.current_thread().name)
            return check(version, text)

        checks.valid = valid  # type: ignore[method-assign]
        for _ in range(2):
            await c.chat.completions.create(model="m", messages=MESSAGES, extra_headers={"X-Prompt-Name": "p"})
        spans = await traced.spans.wait_for(2, "chat")
        async with aiohttp.ClientSession() as session, session.get(traced.url + "/metrics") as r:
            metrics = await r.text()
    assert [s.attributes["flywheel.eval.schema_valid"] for s in spans] == [True, False]
    assert all(name.startswith("flywheel-schema") for name in threads) and len(threads) == 2
    assert 'result="invalid"' in metrics and 'result="valid"' in metrics


async def test_schema_checks_still_running_at_shutdown_are_recorded(upstream: FakeUpstream, tmp_path: Path) -> None:
    registry = open_registry(tmp_path / "r")
    registry.push("p", content_from_mapping({"template": "List.", "response_schema": ITEMS_SCHEMA}))
    upstream.script(CHAT, Reply(body=[_big_answer(True)]))
    path = tmp_path / "spans.jsonl"
    config = config_for(upstream.url, registry=registry, export=Export(spans_file=path))
    async with running(config) as proxy, client(proxy.url) as c:
        await c.chat.completions.create(model="m", messages=MESSAGES, extra_headers={"X-Prompt-Name": "p"})
        # stopping now: the check of that answer has only begun
    [span] = [s for s in open_span_source(path).spans() if s.name.startswith("chat")]
    assert span.attributes["flywheel.eval.schema_valid"] is True
