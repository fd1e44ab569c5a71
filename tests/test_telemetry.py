"""Spans in the GenAI conventions (SDK in-memory exporter), the usage chunk, traceparent,
feedback and metrics. Content capture and the schema evaluator have files of their own."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from opentelemetry.trace import SpanKind, StatusCode

from proxy.app import METRICS
from proxy.content import CaptureContent
from tests.conftest import API_KEY
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
