"""The provider misbehaving, one fault at a time, from a fault-injecting fake on loopback.

Each fault gets a clear OpenAI-shape error from the proxy (502/504) or the provider's
answer passed through as it came; the call's span says what went wrong; the proxy
keeps serving and leaves no call in flight and no task behind. Faults covered in
other files: refused connection and silence before headers (test_errors), 429/503/
HTML 502 pass-through (test_errors), hang and cut mid-stream, clean end without
[DONE], byte-by-byte delivery (test_streaming).
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from proxy.config import Timeouts
from tests.conftest import API_KEY
from tests.fake_upstream import CUT, HANG, FakeUpstream, Reply, chat_completion, sse
from tests.leaks import settled, task_count
from tests.spans import Traced, traced_proxy

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
CHUNK = {
    "id": "c",
    "object": "chat.completion.chunk",
    "model": "m",
    "choices": [{"index": 0, "delta": {"content": "hi"}}],
}


@pytest.fixture
async def traced(upstream: FakeUpstream) -> AsyncIterator[Traced]:
    async with traced_proxy(upstream, timeouts=Timeouts(connect=2, read=0.5)) as traced:
        yield traced


async def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url + CHAT, json=body, headers={"Authorization": f"Bearer {API_KEY}"}) as r:
            return r.status, dict(r.headers), await r.read()


async def _after_fault(traced: Traced, baseline: int) -> None:
    status, _, _ = await _post(traced.url, BODY)
    assert status == 200, "the proxy keeps serving"
    await settled(traced.proxy, baseline + 1)  # + the pooled upstream connection's server task


async def test_dns_failure_is_502() -> None:
    fake = FakeUpstream()
    fake.url = "http://flywheel-upstream.invalid"  # .invalid never resolves (RFC 6761)
    async with traced_proxy(fake) as traced:
        status, _, body = await _post(traced.url, BODY)
        span = await traced.spans.one("chat")
    assert status == 502
    assert orjson.loads(body)["error"]["code"] == "upstream_unreachable"
    assert span.attributes is not None and span.attributes["error.type"] == "upstream_unreachable"


async def test_hang_mid_json_body_is_504(upstream: FakeUpstream, traced: Traced) -> None:
    baseline = task_count()
    upstream.script(CHAT, Reply(body=[b'{"id":"chatcmpl-1",', HANG]))
    status, _, body = await _post(traced.url, BODY)
    assert status == 504
    assert orjson.loads(body)["error"]["code"] == "upstream_timeout"
    assert upstream.seen[-1].closed.is_set() or await _closed(upstream)
    span = await traced.spans.one("chat")
    assert span.attributes is not None and span.attributes["error.type"] == "upstream_timeout"
    await _after_fault(traced, baseline)


async def test_json_body_cut_short_is_502(upstream: FakeUpstream, traced: Traced) -> None:
    upstream.script(CHAT, Reply(body=[b'{"id":"chatcmpl-1",', CUT]))
    status, _, body = await _post(traced.url, BODY)
    assert status == 502
    assert orjson.loads(body)["error"]["code"] == "upstream_unreachable"
    span = await traced.spans.one("chat")
    assert span.attributes is not None and span.attributes["error.type"] == "upstream_unreachable"


@pytest.mark.parametrize(
    "reply",
    [
        Reply(status=524, content_type="text/html", body=[b"<html><title>524: A timeout occurred</title></html>"]),
        Reply(status=500, body=[b'{"error":{"message":"boom","type":"server_error","param":null,"code":null}}']),
        Reply(status=200, content_type="text/html", body=[b"<html>maintenance</html>"]),
        Reply(status=200, body=[b"this is not json"]),
        Reply(status=200, body=[b'{"choices": "not a list", "usage": 7}']),
        Reply(status=200, body=[b""]),
    ],
    ids=["html-524", "500-json", "html-200", "non-json-200", "odd-json-200", "empty-200"],
)
async def test_odd_answers_pass_through_as_sent(reply: Reply, upstream: FakeUpstream, traced: Traced) -> None:
    baseline = task_count()
    upstream.script(CHAT, reply)
    status, headers, body = await _post(traced.url, BODY)
    assert status == reply.status
    assert body == b"".join(p for p in reply.body if isinstance(p, bytes))
    assert headers["Content-Type"].startswith(reply.content_type)
    span = await traced.spans.one("chat")  # reading it for telemetry did not break the call
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == reply.status
    if reply.status >= 400:
        assert span.attributes["error.type"] == str(reply.status)
    await _after_fault(traced, baseline)


async def test_gzip_json_answer_reaches_the_app_plain_and_is_read(upstream: FakeUpstream, traced: Traced) -> None:
    answer = chat_completion(BODY)
    upstream.script(
        CHAT,
        Reply(headers={"Content-Encoding": "gzip"}, body=[gzip.compress(orjson.dumps(answer))], content_length=True),
    )
    async with openai.AsyncOpenAI(base_url=traced.url + "/v1", api_key=API_KEY, max_retries=0) as client:
        completion = await client.chat.completions.create(model="m", messages=BODY["messages"])
    assert completion.choices[0].message.content == answer["choices"][0]["message"]["content"]
    span = await traced.spans.one("chat")
    assert span.attributes is not None
    assert span.attributes["gen_ai.usage.output_tokens"] == answer["usage"]["completion_tokens"]


async def test_gzip_stream_reaches_the_app_plain(upstream: FakeUpstream, traced: Traced) -> None:
    packed = gzip.compress(b"".join(sse(CHUNK, CHUNK)))
    upstream.script(
        CHAT,
        Reply(content_type="text/event-stream", headers={"Content-Encoding": "gzip"}, body=[packed[:20], packed[20:]]),
    )
    async with openai.AsyncOpenAI(base_url=traced.url + "/v1", api_key=API_KEY, max_retries=0) as client:
        stream = await client.chat.completions.create(model="m", messages=BODY["messages"], stream=True)
        texts = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices]
    assert texts == ["hi", "hi"]


async def test_gzip_that_is_not_gzip_is_502(upstream: FakeUpstream, traced: Traced) -> None:
    upstream.script(CHAT, Reply(headers={"Content-Encoding": "gzip"}, body=[b'{"id": 1}'], content_length=True))
    status, _, body = await _post(traced.url, BODY)
    assert status == 502
    assert orjson.loads(body)["error"]["code"] == "upstream_unreachable"


async def test_error_event_inside_a_200_stream_reaches_the_sdk(upstream: FakeUpstream, traced: Traced) -> None:
    baseline = task_count()
    error = {"error": {"message": "The server had an error while processing your request.", "type": "server_error"}}
    upstream.script(CHAT, Reply(content_type="text/event-stream", body=sse(CHUNK, error, done=False)))
    async with openai.AsyncOpenAI(base_url=traced.url + "/v1", api_key=API_KEY, max_retries=0) as client:
        stream = await client.chat.completions.create(model="m", messages=BODY["messages"], stream=True)
        with pytest.raises(openai.APIError, match="server had an error"):
            async for _ in stream:
                pass
    span = await traced.spans.one("chat")
    assert span.attributes is not None and span.attributes["error.type"] == "server_error"
    await _after_fault(traced, baseline)


@pytest.mark.parametrize("retry_after", ["2", None])
async def test_429_on_a_stream_request_passes_through(
    retry_after: str | None, upstream: FakeUpstream, traced: Traced
) -> None:
    headers = {"Retry-After": retry_after} if retry_after else {}
    body = b'{"error":{"message":"slow down","type":"requests","param":null,"code":"rate_limit_exceeded"}}'
    upstream.script(CHAT, Reply(status=429, headers=headers, body=[body], content_length=True))
    status, got_headers, got = await _post(traced.url, {**BODY, "stream": True})
    assert (status, got) == (429, body)
    assert got_headers.get("Retry-After") == retry_after
    span = await traced.spans.one("chat")
    assert span.attributes is not None and span.attributes["error.type"] == "429"


async def test_connection_reset_before_headers_is_502(upstream: FakeUpstream, traced: Traced) -> None:
    baseline = task_count()
    upstream.script(CHAT, Reply(before=[CUT]))
    status, _, body = await _post(traced.url, BODY)
    assert status == 502
    assert orjson.loads(body)["error"]["code"] == "upstream_unreachable"
    await _after_fault(traced, baseline)


async def _closed(upstream: FakeUpstream) -> bool:
    await upstream.seen[-1].closed.wait()
    return True
