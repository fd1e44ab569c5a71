"""Content capture through the proxy and on the recorder: the conventions' message parts
(text, tool calls and their answers, reasoning), tool definitions, and the capture modes."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from flywheel.registry import open_registry
from flywheel.registry.version import content_from_mapping
from proxy.content import CaptureContent, ContentRecorder
from proxy.observation import Outcome
from tests.conftest import API_KEY
from tests.fake_upstream import FakeUpstream, Reply, sse
from tests.spans import traced_proxy
from tests.test_telemetry import CHAT, MESSAGES, client


@pytest.mark.parametrize("mode", list(CaptureContent))
async def test_content_capture_modes(upstream: FakeUpstream, mode: CaptureContent) -> None:
    user = f"Mail bob@example.com, card 4111 1111 1111 1111, key sk-live-abcdefghijklmnop1234 and {API_KEY}"
    async with traced_proxy(upstream, capture_content=mode) as traced, client(traced.url) as c:
        await c.chat.completions.create(
            model="m", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": user}]
        )
        span = await traced.spans.one("chat")
    a = span.attributes
    if mode is CaptureContent.NONE:
        assert "gen_ai.input.messages" not in a and "gen_ai.output.messages" not in a
        return
    inputs, outputs = orjson.loads(a["gen_ai.input.messages"]), orjson.loads(a["gen_ai.output.messages"])
    assert inputs[0] == {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]}
    assert outputs[0]["role"] == "assistant" and outputs[0]["finish_reason"] == "stop"
    said, answered = inputs[1]["parts"][0]["content"], outputs[0]["parts"][0]["content"]
    assert API_KEY not in said and API_KEY not in answered  # the request's own key, in every mode
    if mode is CaptureContent.FULL:
        assert "bob@example.com" in said and "4111 1111 1111 1111" in said
    else:
        for secret in ("bob@example.com", "4111 1111 1111 1111", "sk-live-abcdefghijklmnop1234"):
            assert secret not in said and secret not in answered
        assert said.count("[REDACTED]") == 4


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "description": f"Ask ops@example.com; key {API_KEY}",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_calls_are_captured_as_the_conventions_parts(upstream: FakeUpstream, stream: bool) -> None:
    """An agent's turn: the model's earlier call and the tool's answer go in, a new call comes
    out (whole, or in pieces in a stream) — as ``tool_call`` / ``tool_call_response`` parts."""
    earlier = {"id": "call_0", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}
    messages = [
        {"role": "user", "content": "Weather in Oslo, then Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [earlier]},
        {"role": "tool", "tool_call_id": "call_0", "content": f'{{"celsius": 3, "token": "{API_KEY}"}}'},
    ]
    async with (
        traced_proxy(upstream, capture_content=CaptureContent.REDACTED) as traced,
        client(traced.url) as c,
    ):
        if stream:
            chunks = await c.chat.completions.create(model="m", messages=messages, tools=TOOLS, stream=True)
            pieces = [ch.choices[0].delta.tool_calls async for ch in chunks if ch.choices]
            assert len([p for p in pieces if p]) == 4  # the call came in pieces
        else:
            await c.chat.completions.create(model="m", messages=messages, tools=TOOLS)
        span = await traced.spans.one("chat")
    inputs = orjson.loads(span.attributes["gen_ai.input.messages"])
    assert inputs[1] == {
        "role": "assistant",
        "parts": [{"type": "tool_call", "id": "call_0", "name": "weather", "arguments": {"city": "Oslo"}}],
    }
    assert inputs[2] == {
        "role": "tool",
        "parts": [{"type": "tool_call_response", "id": "call_0", "response": {"celsius": 3, "token": "[REDACTED]"}}],
    }
    assert orjson.loads(span.attributes["gen_ai.tool.definitions"]) == [
        {
            "type": "function",
            "name": "weather",
            "description": "Ask [REDACTED]; key [REDACTED]",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    outputs = orjson.loads(span.attributes["gen_ai.output.messages"])
    assert outputs == [
        {
            "role": "assistant",
            "parts": [{"type": "tool_call", "id": "call_1", "name": "weather", "arguments": {"city": "Paris"}}],
            "finish_reason": "tool_calls",
        }
    ]


def test_responses_api_tool_items_are_captured_as_parts() -> None:
    recorder = ContentRecorder(CaptureContent.FULL)
    body = {
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Oslo?"}]},
            {"type": "function_call", "call_id": "fc_1", "name": "weather", "arguments": '{"city":"Oslo"}'},
            {"type": "function_call_output", "call_id": "fc_1", "output": "3 degrees"},
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [{"type": "summary_text", "text": "Cold; say so."}],
                "encrypted_content": "gAAAAB-opaque",
            },
            {"type": "web_search_call", "id": "ws_1", "status": "completed"},
        ]
    }
    inputs, _ = recorder.input_messages("responses", body, None)
    assert "gAAAAB" not in inputs
    assert orjson.loads(inputs)[3:] == [
        {"role": "assistant", "parts": [{"type": "reasoning", "content": "Cold; say so."}]},
        {"role": "assistant", "parts": [{"type": "web_search_call"}]},
    ]
    assert orjson.loads(inputs)[1:3] == [
        {
            "role": "assistant",
            "parts": [{"type": "tool_call", "id": "fc_1", "name": "weather", "arguments": {"city": "Oslo"}}],
        },
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "fc_1", "response": "3 degrees"}]},
    ]
    outcome = Outcome("responses", keep_text=True)
    outcome.read_json(
        {
            "id": "resp_1",
            "status": "completed",
            "output": [{"type": "function_call", "call_id": "fc_2", "name": "weather", "arguments": '{"city":"Rome"}'}],
        }
    )
    outputs = recorder.output_messages(outcome, None)
    assert orjson.loads(outputs)[0]["parts"] == [
        {"type": "tool_call", "id": "fc_2", "name": "weather", "arguments": {"city": "Rome"}}
    ]


async def test_a_reasoning_models_thinking_is_a_reasoning_part(upstream: FakeUpstream, tmp_path: Path) -> None:
    """vLLM and DeepSeek stream the model's thinking as ``reasoning_content`` (OpenRouter as
    ``reasoning``) before the answer: a ``reasoning`` part, masked like text; the schema
    is checked on the answer alone."""
    registry = open_registry(tmp_path / "r")
    registry.push("p", content_from_mapping({"template": "Answer.", "response_schema": {"type": "object"}}))
    base = {"id": "c", "model": "deepseek-r1"}
    events = sse(
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": "The user wants "}}]},
        {**base, "choices": [{"index": 0, "delta": {"reasoning_content": f"JSON; key {API_KEY}."}}]},
        {**base, "choices": [{"index": 0, "delta": {"reasoning": None, "content": '{"ok": true}'}}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    )
    upstream.script(CHAT, Reply(content_type="text/event-stream", body=events))
    async with (
        traced_proxy(upstream, registry=registry, capture_content=CaptureContent.FULL) as traced,
        client(traced.url) as c,
    ):
        stream = await c.chat.completions.create(
            model="deepseek-r1", messages=MESSAGES, stream=True, extra_headers={"X-Prompt-Name": "p"}
        )
        _ = [chunk async for chunk in stream]
        span = await traced.spans.one("chat")
    assert orjson.loads(span.attributes["gen_ai.output.messages"])[0]["parts"] == [
        {"type": "reasoning", "content": "The user wants JSON; key [REDACTED]."},
        {"type": "text", "content": '{"ok": true}'},
    ]
    assert span.attributes["flywheel.eval.schema_valid"] is True


def test_streamed_tool_calls_without_an_index_stay_apart() -> None:
    """Gemini's OpenAI-compatible streams leave out each call's ``index``: parallel calls
    come one a chunk with their own ids, a call's arguments may follow in pieces without
    one. Taken as index 0 they were one call with the last name and arguments run together."""
    outcome = Outcome("chat/completions", keep_text=True)
    deltas = [
        {"tool_calls": [{"id": "a", "type": "function", "function": {"name": "weather", "arguments": '{"city":'}}]},
        {"tool_calls": [{"function": {"arguments": '"Oslo"}'}}]},
        {"tool_calls": [{"id": "b", "type": "function", "function": {"name": "time", "arguments": '{"tz":"CET"}'}}]},
    ]
    for delta in deltas:
        outcome.read_event({"id": "c", "model": "gemini", "choices": [{"index": 0, "delta": delta}]})
    outcome.read_event({"id": "c", "model": "gemini", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    written = ContentRecorder(CaptureContent.FULL).output_messages(outcome, None)
    assert orjson.loads(written)[0]["parts"] == [
        {"type": "tool_call", "id": "a", "name": "weather", "arguments": {"city": "Oslo"}},
        {"type": "tool_call", "id": "b", "name": "time", "arguments": {"tz": "CET"}},
    ]


def test_tool_definitions_of_every_api_shape_are_the_conventions_flat_ones() -> None:
    """Chat nests under ``function``, the Responses API is flat with built-in tools beside,
    chat's older ``functions`` has no wrapper: one shape on the span. No tools, no attribute."""
    recorder = ContentRecorder(CaptureContent.FULL)
    weather = {"name": "weather", "description": "Today's weather", "parameters": {"type": "object"}}
    flat = {"type": "function", **weather}
    assert recorder.tool_definitions({"messages": []}, None) is None
    assert recorder.tool_definitions({"tools": []}, None) is None
    chat = {"tools": [{"type": "function", "function": weather}], "functions": [{"name": "time"}, "junk"]}
    assert orjson.loads(recorder.tool_definitions(chat, None) or "") == [flat, {"type": "function", "name": "time"}]
    responses = {"tools": [flat, {"type": "web_search"}, 7]}
    assert orjson.loads(recorder.tool_definitions(responses, None) or "") == [
        flat,
        {"type": "web_search", "name": "web_search"},
    ]


async def test_tool_definitions_are_content_and_off_by_default(upstream: FakeUpstream) -> None:
    async with traced_proxy(upstream) as traced, client(traced.url) as c:
        await c.chat.completions.create(model="m", messages=MESSAGES, tools=TOOLS)
        span = await traced.spans.one("chat")
    assert "gen_ai.tool.definitions" not in span.attributes
