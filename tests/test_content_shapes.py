"""Content capture on whatever JSON an app or a provider sends: the recorder never fails
(a failure would lose the call's span and metrics), always writes the conventions' JSON,
and masks credentials wherever in the shape they sit: the request's own key as it is,
another key by its look (anywhere for a prefix no word has, such as sk-ant-; where a word
starts, in the text or in the JSON text tool arguments and answers are masked as, for the
short generic ones), a password by what it is given to."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.content import MAX_CAPTURED, TRUNCATED, CaptureContent, ContentRecorder
from proxy.observation import Outcome

KEY = "sk-proj-abcdefghijklmnopqrstuvwx1234"  # the request's own
OTHER = "sk-ant-zyxwvutsrqponmlkjihgfedcba9876"  # seen by its look only
PASSWORD = "Tr0ub4dor3"  # seen by what it is given to
scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
)
texts = (
    st.text(max_size=12)
    | st.just(KEY)
    | st.just(f'{{"token": "{KEY}"}}')
    | st.just(f" {OTHER} ")
    | st.just(f"log:\n{OTHER}")  # in JSON text (a tool's arguments or answer) that is log:\\n<key>
    | st.just(f"id0{OTHER}")  # glued to a word: its prefix is no word's
    | st.just(f"DB_PASSWORD={PASSWORD}")
    | st.just(f"postgres://app:{PASSWORD}@db/x")
    | st.just(f'{{"api_key": "{PASSWORD}"}}')
)
values = st.recursive(
    scalars | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
calls = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "id": texts | values,
            "index": st.integers(0, 2) | values,
            "function": st.fixed_dictionaries({}, optional={"name": texts | values, "arguments": texts | values})
            | values,
        },
    ),
    max_size=3,
)
messages = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "role": st.sampled_from(["user", "assistant", "tool", "function", "system"]) | values,
            "content": texts | values,
            "tool_calls": calls | values,
            "tool_call_id": texts | values,
            "function_call": st.fixed_dictionaries({}, optional={"name": texts, "arguments": texts}) | values,
            "type": st.sampled_from(["function_call", "function_call_output", "message"]) | values,
            "call_id": texts | values,
            "arguments": texts | values,
            "output": texts | values,
        },
    )
    | values,
    max_size=4,
)


definitions = st.fixed_dictionaries(
    {},
    optional={
        "type": st.just("function") | texts | values,
        "name": texts | values,
        "description": texts | values,
        "parameters": values,
        "function": st.fixed_dictionaries(
            {}, optional={"name": texts | values, "description": texts | values, "parameters": values}
        )
        | values,
    },
)
tools = st.lists(definitions | values, max_size=3) | values


def _masked(written: str) -> None:
    assert KEY not in written and OTHER not in written and PASSWORD not in written
    orjson.loads(written)  # JSON, whatever came in


@settings(max_examples=300, deadline=None)
@given(
    items=messages,
    endpoint=st.sampled_from(["chat/completions", "responses"]),
    mode=st.sampled_from([CaptureContent.REDACTED, CaptureContent.FULL]),
)
def test_any_input_shape_is_captured_as_json_with_credentials_masked(
    items: Any, endpoint: str, mode: CaptureContent
) -> None:
    body = {"messages": items} if endpoint == "chat/completions" else {"input": items, "instructions": KEY}
    inputs, system = ContentRecorder(mode).input_messages(endpoint, body, KEY)
    _masked(inputs)
    if system is not None:
        _masked(system)


@settings(max_examples=300, deadline=None)
@given(
    message=st.fixed_dictionaries({}, optional={"content": texts | values, "tool_calls": calls | values}),
    deltas=st.lists(
        st.fixed_dictionaries(
            {}, optional={"content": texts, "tool_calls": calls | values, "reasoning_content": texts | values}
        ),
        max_size=4,
    ),
    output=st.lists(
        st.fixed_dictionaries(
            {"type": st.just("function_call")}, optional={"call_id": texts | values, "arguments": texts | values}
        )
        | values,
        max_size=2,
    ),
)
def test_any_output_shape_is_captured_as_json_with_credentials_masked(
    message: dict[str, Any], deltas: list[dict[str, Any]], output: list[Any]
) -> None:
    recorder = ContentRecorder(CaptureContent.FULL)
    answered = Outcome("chat/completions", keep_text=True)
    answered.read_json({"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})
    streamed = Outcome("chat/completions", keep_text=True)
    for delta in deltas:
        streamed.read_event({"id": "c", "model": "m", "choices": [{"index": 0, "delta": delta}]})
    responded = Outcome("responses", keep_text=True)
    responded.read_json({"id": "r", "status": "completed", "output": output})
    for outcome in (answered, streamed, responded):
        _masked(recorder.output_messages(outcome, KEY))


@settings(max_examples=300, deadline=None)
@given(given_tools=tools, functions=tools, mode=st.sampled_from([CaptureContent.REDACTED, CaptureContent.FULL]))
def test_any_tool_definitions_are_captured_as_json_with_credentials_masked(
    given_tools: Any, functions: Any, mode: CaptureContent
) -> None:
    written = ContentRecorder(mode).tool_definitions({"tools": given_tools, "functions": functions}, KEY)
    if written is not None:
        _masked(written)
        assert all(isinstance(d.get("type"), str) and isinstance(d.get("name"), str) for d in orjson.loads(written))


def test_what_follows_an_escaped_newline_in_tool_json_is_masked() -> None:
    """Tool arguments and answers are masked as JSON text, where a line break is the two
    characters \\n: a key, an email or a card number on the next line is still a word's start,
    and the JSON keeps its shape (nothing of the escape is masked away)."""
    answer = {
        "log": f"first\n{OTHER}",
        "env": f"A=1\t{OTHER}",
        "mail": "to:\nbob@example.com",
        "path": "C:\\bob@example.com",
        "card": "paid with\n4111 1111 1111 1111",
    }
    body = {"messages": [{"role": "tool", "tool_call_id": "c", "content": orjson.dumps(answer).decode()}]}
    inputs, _ = ContentRecorder(CaptureContent.REDACTED).input_messages("chat/completions", body, None)
    assert orjson.loads(inputs)[0]["parts"][0]["response"] == {
        "log": "first\n[REDACTED]",
        "env": "A=1\t[REDACTED]",
        "mail": "to:\n[REDACTED]",
        "path": "C:\\[REDACTED]",
        "card": "paid with\n[REDACTED]",
    }


@pytest.mark.parametrize("mode", [CaptureContent.REDACTED, CaptureContent.FULL])
def test_credentials_without_a_tokens_look_are_masked_in_every_mode(mode: CaptureContent) -> None:
    """What a tool reads from a config file or a log: a private key, a URL with its
    password, secret-named settings. The names and the rest of the text stay."""
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"
    config = {
        "DATABASE_URL": "postgres://app:Tr0ub4dor3@db:5432/shop",
        "settings": "DB_PASSWORD=Tr0ub4dor3\nclient_secret: Tr0ub4dor3\nport: 5432",
        "api_key": "Tr0ub4dor3",
        "key": pem + "\nafter",
        "cut": "-----BEGIN PRIVATE KEY-----\nMIIEv",
    }
    body = {"messages": [{"role": "tool", "tool_call_id": "c", "content": orjson.dumps(config).decode()}]}
    inputs, _ = ContentRecorder(mode).input_messages("chat/completions", body, None)
    assert orjson.loads(inputs)[0]["parts"][0]["response"] == {
        "DATABASE_URL": "postgres://app:[REDACTED]@db:5432/shop",
        "settings": "DB_PASSWORD=[REDACTED]\nclient_secret: [REDACTED]\nport: 5432",
        "api_key": "[REDACTED]",
        "key": "[REDACTED]\nafter",
        "cut": "[REDACTED]",
    }
    text = ContentRecorder(mode).clean("Log in with password: Tr0ub4dor3, or https://me:Tr0ub4dor3@host/")
    assert text == "Log in with password: [REDACTED], or https://me:[REDACTED]@host/"


@pytest.mark.parametrize(
    "text",
    ["a." * 100_000, "-----BEGIN PRIVATE KEY-----!" * 10_000, "a@" * 100_000, ("a." * 40 + "b@" + "c." * 300) * 150],
    ids=["dotted words", "unended key blocks", "at signs", "long addresses"],
)
def test_hostile_text_is_masked_in_linear_time(text: str) -> None:
    """Content is the app's users' to shape, and masking runs on the proxy's event loop: a
    quadratic search there stalls every call. Before, 200 KB of "a." took ~30 s (emails)
    and 280 KB of unended key blocks ~11 s; linear, each is well under a second."""
    started = time.process_time()
    ContentRecorder(CaptureContent.REDACTED).clean(text)
    assert time.process_time() - started < 2.0


def test_captured_content_is_cut_at_its_room_with_no_key_left_across_the_cut() -> None:
    """A request may carry 50 MiB; an attribute holds at most MAX_CAPTURED characters of
    content (what the output keeps too), so masking and export stay bounded. The text at
    the cut is masked past it first: a key across the cut is never half-written. The
    messages keep their roles; those past the cut are left out."""
    first = "a" * 100
    cut = MAX_CAPTURED - (len(first) + 32)  # the room the second message's text finds
    second = "b" * (cut - 5) + OTHER + " " + "c" * 3_000_000  # the key starts 5 before the cut
    body = {
        "messages": [
            {"role": "system", "content": first},
            {"role": "user", "content": second},
            {"role": "user", "content": "never reached"},
        ]
    }
    inputs, _ = ContentRecorder(CaptureContent.FULL).input_messages("chat/completions", body, None)
    written = orjson.loads(inputs)
    assert [m["role"] for m in written] == ["system", "user"]
    text = written[1]["parts"][0]["content"]
    assert text == "b" * (cut - 5) + "[REDA" + TRUNCATED  # not "sk-an": masked, then cut
    assert len(inputs) < MAX_CAPTURED + 1000


def test_many_small_parts_run_out_of_room_too() -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}] * 200_000}]}
    inputs, _ = ContentRecorder(CaptureContent.FULL).input_messages("chat/completions", body, None)
    assert len(inputs) < 2 * MAX_CAPTURED
