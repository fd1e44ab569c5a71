"""Spans in the GenAI conventions (SDK in-memory exporter), the usage chunk, traceparent,
the schema evaluator, content capture and feedback."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from opentelemetry.trace import SpanKind, StatusCode

from flywheel.registry import Version, open_registry
from flywheel.registry.version import content_from_mapping
from flywheel.spans import open_span_source
from proxy.app import METRICS, TELEMETRY
from proxy.content import CaptureContent, ContentRecorder
from proxy.observation import Outcome
from proxy.server import running
from proxy.tracing import Export
from tests.conftest import API_KEY, config_for
from tests.fake_upstream import FakeUpstream, Reply, sse
from tests.spans import traced_proxy

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0)


async def test_chat_span_follows_the_genai_conventions(upstream: FakeUpstream) -> None:
    async with traced_proxy(upstream) as traced, client(traced.url) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, temperature=0.3, max_tokens=50, seed=4
        )
        span = await traced.spans.one("chat")
    a = span.attributes
    assert span.name == "chat gpt-4o-mini" and span.kind is SpanKind.CLIENT
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "gpt-4o-mini" and a["gen_ai.response.model"] == "gpt-4o-mini"
    assert a["gen_ai.response.id"] == "chatcmpl-fake" and a["gen_ai.response.finish_reasons"] == ("stop",)
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (7, 5)
    assert (a["gen_ai.request.temperature"], a["gen_ai.request.max_tokens"], a["gen_ai.request.seed"]) == (0.3, 50, 4)
    assert a["flywheel.request_id"] == raw.headers["X-Request-Id"] and a["http.response.status_code"] == 200
    assert a["server.address"] == "127.0.0.1" and a["flywheel.cost.usd"] == pytest.approx(7 * 1.5e-7 + 5 * 6e-7)
    assert "error.type" not in a and span.status.status_code is StatusCode.UNSET
    assert not [k for k in a if k.startswith("gen_ai.input") or k.startswith("gen_ai.output")]  # content is opt-in


async def test_stream_usage_is_read_and_hidden_from_an_app_that_did_not_ask(upstream: FakeUpstream) -> None:
    async with traced_proxy(upstream) as traced, client(traced.url) as c:
        stream = await c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        chunks = [chunk async for chunk in stream]
        span = await traced.spans.one("chat")
    assert upstream.seen[-1].json()["stream_options"] == {"include_usage": True}
    assert chunks and all(chunk.usage is None and chunk.choices for chunk in chunks)  # no usage chunk shown
    a = span.attributes
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (7, 3)
    assert a["gen_ai.response.finish_reasons"] == ("stop",) and a["gen_ai.response.id"] == "chatcmpl-fake"
    assert a["gen_ai.request.stream"] is True and 0 < a["flywheel.time_to_first_chunk"] < 5
    assert a["gen_ai.response.time_to_first_chunk"] == a["flywheel.time_to_first_chunk"]


@pytest.mark.parametrize("include_usage", [True, False])
async def test_app_choice_about_the_usage_chunk_is_respected(upstream: FakeUpstream, include_usage: bool) -> None:
    async with traced_proxy(upstream) as traced, client(traced.url) as c:
        stream = await c.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": include_usage}
        )
        chunks = [chunk async for chunk in stream]
        span = await traced.spans.one("chat")
    assert upstream.seen[-1].json()["stream_options"] == {"include_usage": include_usage}
    assert any(chunk.usage is not None for chunk in chunks) is include_usage
    assert ("gen_ai.usage.output_tokens" in span.attributes) is include_usage


async def test_usage_chunk_split_across_reads_is_still_hidden(upstream: FakeUpstream) -> None:
    events = sse(
        {"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}]},
        {"id": "c1", "model": "m", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}},
    )
    whole = b"".join(events)
    pieces = [whole[i : i + 7] for i in range(0, len(whole), 7)]  # every event split mid-line, no CRLF
    upstream.script(CHAT, Reply(content_type="text/event-stream", body=pieces))
    async with traced_proxy(upstream) as traced, aiohttp.ClientSession() as session:
        body = {"model": "m", "messages": MESSAGES, "stream": True}
        async with session.post(traced.url + CHAT, json=body) as r:
            received = await r.read()
        span = await traced.spans.one("chat")
    assert received == events[0] + events[2]  # the content event and [DONE], byte for byte
    assert span.attributes["gen_ai.usage.input_tokens"] == 3


async def test_azure_stream_ids_come_after_its_prompt_filter_chunk(upstream: FakeUpstream) -> None:
    """Azure OpenAI's first chunk carries prompt filter results and an empty id and model."""
    az = {"id": "chatcmpl-az", "model": "gpt-4o-2024-08-06"}
    events = sse(
        {"id": "", "object": "", "created": 0, "model": "", "choices": [], "prompt_filter_results": []},
        {**az, "choices": [{"index": 0, "delta": {"content": "Hi"}}]},
        {**az, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**az, "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 1}},
    )
    for reply in (events, [b"".join(events)]):  # as it comes, and in one read
        upstream.script(CHAT, Reply(content_type="text/event-stream", body=reply))
        async with traced_proxy(upstream) as traced, client(traced.url) as c:
            stream = await c.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
            assert "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices]) == "Hi"
            span = await traced.spans.one("chat")
        a = span.attributes
        assert (a["gen_ai.response.id"], a["gen_ai.response.model"]) == ("chatcmpl-az", "gpt-4o-2024-08-06")
        assert a["gen_ai.response.finish_reasons"] == ("stop",) and a["gen_ai.usage.output_tokens"] == 1


async def test_request_options_and_response_details_follow_the_conventions(upstream: FakeUpstream) -> None:
    answer = {
        "id": "chatcmpl-1",
        "model": "gpt-4o-mini-2024-07-18",
        "service_tier": "flex",
        "system_fingerprint": "fp_1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "{}"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 2000,
            "completion_tokens": 10,
            "prompt_tokens_details": {"cached_tokens": 1536},
            "completion_tokens_details": {"reasoning_tokens": 6},
        },
    }
    upstream.script(CHAT, Reply(body=[orjson.dumps(answer)]))
    async with traced_proxy(upstream) as traced, client(traced.url) as c:
        await c.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stop=["END", "STOP"],
            frequency_penalty=0.25,
            presence_penalty=0.5,
            response_format={"type": "json_object"},
            service_tier="flex",
        )
        chat = await traced.spans.one("chat")
        await c.responses.create(
            model="gpt-4o-mini", input="Hi", conversation="conv_123", text={"format": {"type": "text"}}
        )
        responses = (await traced.spans.wait_for(2, "chat"))[-1]
        await c.embeddings.create(model="text-embedding-3-small", input="x", encoding_format="float")
        embeddings = await traced.spans.one("embeddings")
    a = chat.attributes
    assert a["gen_ai.request.stop_sequences"] == ("END", "STOP") and a["gen_ai.output.type"] == "json"
    assert (a["gen_ai.request.frequency_penalty"], a["gen_ai.request.presence_penalty"]) == (0.25, 0.5)
    assert a["openai.request.service_tier"] == "flex" and a["openai.response.service_tier"] == "flex"
    assert a["openai.response.system_fingerprint"] == "fp_1"
    # Cached input tokens are part of the input tokens, and cost the table's cache-read price.
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.cache_read.input_tokens"]) == (2000, 1536)
    assert a["flywheel.cost.usd"] == pytest.approx(464 * 1.5e-7 + 1536 * 7.5e-8 + 10 * 6e-7)
    assert a["gen_ai.usage.reasoning.output_tokens"] == 6 and "gen_ai.usage.cache_creation.input_tokens" not in a
    r = responses.attributes
    assert r["gen_ai.conversation.id"] == "conv_123" and r["gen_ai.output.type"] == "text"
    e = embeddings.attributes
    assert e["gen_ai.request.encoding_formats"] == ("float",) and e["gen_ai.embeddings.dimension.count"] == 3


async def test_embeddings_span(upstream: FakeUpstream) -> None:
    async with traced_proxy(upstream) as traced, client(traced.url) as c:
        await c.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        span = await traced.spans.one("embeddings")
    assert span.name == "embeddings text-embedding-3-small"
    assert span.attributes["gen_ai.operation.name"] == "embeddings"
    assert span.attributes["gen_ai.usage.input_tokens"] == 3


async def test_upstream_error_and_unreachable_upstream_set_error_type(upstream: FakeUpstream) -> None:
    error = b'{"error":{"message":"slow down","type":"requests","param":null,"code":"rate_limit_exceeded"}}'
    upstream.script(CHAT, Reply(status=429, body=[error]))
    async with traced_proxy(upstream) as traced, client(traced.url) as c:
        with pytest.raises(openai.RateLimitError):
            await c.chat.completions.create(model="m", messages=MESSAGES)
        span = await traced.spans.one("chat")
        assert span.attributes["error.type"] == "429" and span.status.status_code is StatusCode.ERROR
    async with traced_proxy(upstream, upstreams=_unreachable()) as traced, client(traced.url) as c:
        with pytest.raises(openai.APIStatusError):
            await c.chat.completions.create(model="m", messages=MESSAGES)
        span = await traced.spans.one("chat")
        assert span.attributes["error.type"] == "upstream_unreachable"
        assert span.attributes["http.response.status_code"] == 502


def _unreachable() -> Any:
    import socket

    from proxy.upstreams import OpenAIUpstream, Upstreams

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return Upstreams(default=OpenAIUpstream(f"http://127.0.0.1:{port}/v1"))


async def test_traceparent_from_the_sdk_is_the_parent_and_goes_upstream(upstream: FakeUpstream) -> None:
    trace_id, parent_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    async with traced_proxy(upstream) as traced, client(traced.url) as c:
        await c.chat.completions.create(
            model="m", messages=MESSAGES, extra_headers={"traceparent": f"00-{trace_id}-{parent_id}-01"}
        )
        span = await traced.spans.one("chat")
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.parent is not None and format(span.parent.span_id, "016x") == parent_id
    sent = upstream.seen[-1].headers["traceparent"]
    assert sent == f"00-{trace_id}-{format(span.context.span_id, '016x')}-01"


async def test_tracestate_and_an_unsampled_parent_go_upstream(upstream: FakeUpstream) -> None:
    trace_id, parent_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    headers = {"traceparent": f"00-{trace_id}-{parent_id}-00", "tracestate": "vendor=abc,other=1"}
    async with traced_proxy(upstream) as traced, client(traced.url) as c:
        await c.chat.completions.create(model="m", messages=MESSAGES, extra_headers=headers)
        await c.chat.completions.create(model="m", messages=MESSAGES)  # a sampled one after it
        assert len(await traced.spans.wait_for(1)) == 1  # the unsampled call made no span
    unsampled, fresh = upstream.seen[-2].headers, upstream.seen[-1].headers
    version, sent_trace, sent_span, flags = unsampled["traceparent"].split("-")
    assert (version, sent_trace, flags) == ("00", trace_id, "00") and sent_span != parent_id
    assert unsampled["tracestate"] == "vendor=abc,other=1"
    assert fresh["traceparent"].endswith("-01") and trace_id not in fresh["traceparent"]
    assert "tracestate" not in fresh


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


async def test_feedback_is_an_evaluation_result_in_the_call_trace(upstream: FakeUpstream) -> None:
    async with traced_proxy(upstream, capture_content=CaptureContent.REDACTED) as traced, client(traced.url) as c:
        raw = await c.chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
        call = await traced.spans.one("chat")
        request_id = raw.headers["X-Request-Id"]
        async with aiohttp.ClientSession() as session:
            feedback = {
                "request_id": request_id,
                "thumbs": "down",
                "comment": "wrong, mail me at a@b.co",
                "correction": "Hi!",
            }
            async with session.post(traced.url + "/v1/feedback", json=feedback) as r:
                assert r.status == 202 and (await r.json())["request_id"] == request_id
            async with session.post(
                traced.url + "/v1/feedback", json={"request_id": "req_elsewhere", "score": 0.75}
            ) as r:
                assert r.status == 202
            async with session.get(traced.url + "/metrics") as r:
                metrics = await r.text()
        first, second = await traced.spans.wait_for(2, "gen_ai.evaluation.result")
    assert first.context.trace_id == call.context.trace_id and first.parent.span_id == call.context.span_id
    assert first.links[0].context.span_id == call.context.span_id
    assert dict(first.attributes) == {
        "gen_ai.evaluation.name": "user_feedback",
        "gen_ai.evaluation.score.value": 0.0,
        "gen_ai.evaluation.score.label": "down",
        "gen_ai.evaluation.explanation": "wrong, mail me at [REDACTED]",
        "flywheel.feedback.correction": "Hi!",
        "flywheel.request_id": request_id,
        "gen_ai.prompt.name": "",
        "gen_ai.prompt.version": "",
        "flywheel.prompt.arm": "",
        "gen_ai.response.id": "chatcmpl-fake",
    }
    assert second.parent is None and second.attributes["gen_ai.evaluation.score.value"] == 0.75
    assert 'flywheel_feedback_total{arm="",kind="down",prompt="",version=""} 1.0' in metrics


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"", None),
        (b"[1]", None),
        (b'{"score": 1}', "request_id"),
        (b'{"request_id": "r"}', "score"),
        (b'{"request_id": "r", "score": 1.5}', "score"),
        (b'{"request_id": "r", "score": true}', "score"),
        (b'{"request_id": "r", "thumbs": "sideways"}', "thumbs"),
        (b'{"request_id": "r", "score": 1, "comment": 5}', "comment"),
        (b'{"request_id": "r", "score": 1, "rating": 5}', "rating"),
    ],
)
async def test_bad_feedback_is_400_in_openai_shape(upstream: FakeUpstream, body: bytes, param: str | None) -> None:
    async with traced_proxy(upstream) as traced, aiohttp.ClientSession() as session:
        async with session.post(
            traced.url + "/v1/feedback", data=body, headers={"Content-Type": "application/json"}
        ) as r:
            answer = await r.json()
            assert r.status == 400 and set(answer["error"]) == {"message", "type", "param", "code"}
            assert answer["error"]["param"] == param
    assert not traced.spans.get_finished_spans()


def test_model_label_is_bounded() -> None:
    from proxy.metrics import MAX_MODELS, OTHER, ProxyMetrics

    metrics = ProxyMetrics()
    labels = {metrics.model_label(f"model-{i}") for i in range(MAX_MODELS + 50)}
    assert len(labels) == MAX_MODELS + 1 and OTHER in labels
    assert metrics.model_label("model-3") == "model-3" and metrics.model_label(None) == ""


async def test_in_flight_gauge_counts_calls_being_proxied(upstream: FakeUpstream) -> None:
    import asyncio

    gate = asyncio.Event()
    upstream.script(CHAT, Reply(before=[gate], body=[b'{"id": "x", "choices": []}']))

    async def in_flight(session: aiohttp.ClientSession, url: str) -> float:
        async with session.get(url + "/metrics") as r:
            line = next(x for x in (await r.text()).splitlines() if x.startswith("flywheel_in_flight_requests "))
        return float(line.split()[1])

    async with traced_proxy(upstream) as traced, aiohttp.ClientSession() as session:
        call = asyncio.create_task(session.post(traced.url + CHAT, json={"model": "m", "messages": MESSAGES}))
        await upstream.next_request()
        assert await in_flight(session, traced.url) == 1
        gate.set()
        (await call).release()
        await traced.spans.one("chat")
        assert await in_flight(session, traced.url) == 0


@pytest.mark.parametrize("hangs_up", ["after_done", "before_done"])
async def test_an_app_that_hangs_up_after_done_has_had_its_answer(upstream: FakeUpstream, hangs_up: str) -> None:
    """Clients that stop reading at [DONE] (``break`` in a loop over lines) close before the
    response's last bytes: the call is a success, not a cancellation in the spans and the
    metrics the canary judges by. Hanging up before [DONE] is one."""
    base = {"id": "c1", "model": "m", "object": "chat.completion.chunk"}
    pieces = sse(
        {**base, "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    )
    held = asyncio.Event()  # the upstream's own end comes only after the app has hung up
    body = [*pieces, held] if hangs_up == "after_done" else [pieces[0], held, *pieces[1:]]
    upstream.script(CHAT, Reply(content_type="text/event-stream", body=body))
    async with traced_proxy(upstream) as traced:
        async with aiohttp.ClientSession() as session:
            response = await session.post(traced.url + CHAT, json={"model": "m", "messages": MESSAGES, "stream": True})
            got = b""
            while not got.endswith(b"data: [DONE]\n\n" if hangs_up == "after_done" else b"\n\n"):
                got += await asyncio.wait_for(response.content.readany(), 5)
            response.close()
        span = await traced.spans.one("chat")
        held.set()
        metrics = traced.proxy.app[METRICS]
    a = span.attributes
    assert a["http.response.status_code"] == (200 if hangs_up == "after_done" else 499)
    requests = metrics.registry.get_sample_value(
        "flywheel_requests_total", {"prompt": "", "version": "", "arm": "", "model": "m", "status_class": "2xx"}
    )
    if hangs_up == "after_done":
        assert "error.type" not in a and span.status.status_code is StatusCode.UNSET and requests == 1
        assert a["gen_ai.response.finish_reasons"] == ("stop",)
    else:
        assert a["error.type"] == "cancelled" and span.status.status_code is StatusCode.ERROR and requests is None


async def test_the_openai_sdk_closing_at_done_leaves_a_served_call(upstream: FakeUpstream) -> None:
    """openai-python stops at [DONE] and closes the response without reading its end: with
    a provider whose last bytes come a moment after [DONE], every such stream was counted
    as cancelled."""
    base = {"id": "c1", "model": "m", "object": "chat.completion.chunk"}
    held = asyncio.Event()
    body = [*sse({**base, "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}), held]
    upstream.script(CHAT, Reply(content_type="text/event-stream", body=body))
    async with traced_proxy(upstream) as traced, client(traced.url) as c:
        stream = await c.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        assert [chunk.choices[0].delta.content async for chunk in stream] == ["hi"]
        span = await traced.spans.one("chat")
        held.set()
    assert "error.type" not in span.attributes and span.attributes["http.response.status_code"] == 200


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
