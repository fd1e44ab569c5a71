"""The proxy's own errors in the OpenAI shape; the provider's errors passed through unchanged."""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from multidict import CIMultiDict

from proxy.config import Timeouts
from proxy.server import RunningProxy
from tests.conftest import API_KEY, proxy_for
from tests.fake_upstream import HANG, FakeUpstream, Reply
from tests.rawhttp import raw_request

CHAT = "/v1/chat/completions"


def assert_openai_error(body: bytes, code: str | None = None) -> dict[str, Any]:
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


async def _post(url: str, data: bytes, headers: dict[str, str] | None = None) -> tuple[int, CIMultiDict[str], bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=data, headers=headers or {"Content-Type": "application/json"}) as r:
            return r.status, CIMultiDict(r.headers), await r.read()


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b'{"model": "m",}', b"[1, 2]", b'"text"', b'{"temperature": NaN}', b"\xff\xfe{}", b"{" * 2000],
    ids=["empty", "truncated", "trailing-comma", "array", "string", "nan", "bad-utf8", "deep"],
)
async def test_bad_json_is_400_and_never_forwarded(body: bytes, upstream: FakeUpstream, proxy: RunningProxy) -> None:
    status, headers, answer = await _post(proxy.url + CHAT, body)
    assert status == 400
    assert headers["X-Request-Id"].startswith("req_")
    assert_openai_error(answer, "invalid_json")
    assert upstream.seen == []


async def test_body_over_limit_is_413_by_length_and_by_chunks(upstream: FakeUpstream) -> None:
    async with proxy_for(upstream, max_body_size=1024) as proxy:
        status, _, answer = await _post(proxy.url + CHAT, b'{"x":"' + b"a" * 2000 + b'"}')
        assert status == 413
        assert_openai_error(answer, "payload_too_large")

        async def chunks() -> Any:  # no Content-Length: refused while reading
            for _ in range(64):
                yield b"a" * 512

        async with aiohttp.ClientSession() as session:
            async with session.post(proxy.url + CHAT, data=chunks()) as r:
                assert r.status == 413
                assert_openai_error(await r.read(), "payload_too_large")
        status, _, _ = await _post(proxy.url + CHAT, b'{"model":"m","messages":[]}')
        assert status == 200  # under the limit still served
    assert len(upstream.seen) == 1


async def test_default_limit_accepts_large_image_bodies(upstream: FakeUpstream, proxy: RunningProxy) -> None:
    image = "data:image/png;base64," + "A" * (8 * 1024 * 1024)
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}]}],
    }
    status, _, _ = await _post(proxy.url + CHAT, orjson.dumps(body))
    assert status == 200
    assert len(upstream.seen[-1].body) > 8 * 1024 * 1024


async def test_unknown_paths_and_methods(proxy: RunningProxy) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/not-v1") as r:
            assert r.status == 404
            assert_openai_error(await r.read(), "not_found")
        async with session.post(proxy.url + "/healthz") as r:
            assert r.status == 405
            assert_openai_error(await r.read(), "method_not_allowed")
    # HTTP clients normalize dot segments themselves; a raw request does not.
    for path in ("/v1/files/%2e%2e/secrets", "/v1/files/../../admin"):
        status, body = await raw_request(
            proxy.url, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        assert status == 400
        assert_openai_error(body)


async def test_unreachable_upstream_is_502() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fake = FakeUpstream()
    fake.url = f"http://127.0.0.1:{port}"
    async with proxy_for(fake) as proxy:
        status, _, answer = await _post(proxy.url + CHAT, b'{"model":"m","messages":[]}')
    assert status == 502
    assert_openai_error(answer, "upstream_unreachable")


async def test_upstream_silent_before_headers_is_504(upstream: FakeUpstream) -> None:
    upstream.script(CHAT, Reply(before=[HANG]))
    async with proxy_for(upstream, timeouts=Timeouts(connect=2, read=0.3)) as proxy:
        status, _, answer = await _post(proxy.url + CHAT, b'{"model":"m","messages":[]}')
    assert status == 504
    assert_openai_error(answer, "upstream_timeout")
    assert upstream.seen[-1].closed.is_set()


@pytest.mark.parametrize(
    "reply",
    [
        Reply(
            status=429,
            headers={"Retry-After": "7"},
            body=[b'{"error":{"message":"slow down","type":"requests","param":null,"code":"rate_limit_exceeded"}}'],
            content_length=True,
        ),
        Reply(
            status=429,
            body=[b'{"error":{"message":"quota","type":"insufficient_quota","param":null,"code":null}}'],
            content_length=True,
        ),
        Reply(
            status=503,
            headers={"Retry-After": "1"},
            body=[b'{"error":{"message":"overloaded","type":"server_error","param":null,"code":null}}'],
        ),
        Reply(status=502, content_type="text/html", body=[b"<html><body>502 Bad Gateway</body></html>"]),
        Reply(
            status=401,
            body=[
                b'{"error":{"message":"bad key","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}'
            ],
        ),
    ],
    ids=["429-retry-after", "429-no-retry-after", "503", "html-502", "401"],
)
async def test_upstream_errors_pass_through_unchanged(
    reply: Reply, upstream: FakeUpstream, proxy: RunningProxy
) -> None:
    upstream.script(CHAT, reply)
    status, headers, answer = await _post(proxy.url + CHAT, b'{"model":"m","messages":[]}')
    assert status == reply.status
    assert answer == b"".join(p for p in reply.body if isinstance(p, bytes))
    assert headers.get("Retry-After") == reply.headers.get("Retry-After")


async def test_sdk_sees_provider_rate_limit(upstream: FakeUpstream, proxy: RunningProxy) -> None:
    upstream.script(
        CHAT,
        Reply(
            status=429,
            headers={"Retry-After": "3"},
            body=[b'{"error":{"message":"slow down","type":"requests","param":null,"code":"rate_limit_exceeded"}}'],
        ),
    )
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=API_KEY, max_retries=0) as client:
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert info.value.response.headers["retry-after"] == "3"
    assert info.value.code == "rate_limit_exceeded"
