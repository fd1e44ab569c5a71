"""HTTP-level abuse from the app's side: framing lies, header floods, control characters,
slow and idle clients, odd content types and encodings. Each gets a clear answer (or a
closed connection where HTTP allows no answer), nothing is forwarded, no byte of the
request is echoed, and the proxy keeps serving."""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.config import ClientTimeouts
from proxy.server import RunningProxy
from tests.conftest import API_KEY, proxy_for
from tests.fake_upstream import FakeUpstream
from tests.leaks import settled, task_count
from tests.rawhttp import RawConnection, raw_connection

CHAT = "/v1/chat/completions"
BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
AUTH = b"Authorization: Bearer " + API_KEY.encode() + b"\r\n"


def head(*lines: bytes, length: int | None = len(BODY)) -> bytes:
    framing = [b"Content-Length: %d\r\n" % length] if length is not None else []
    return b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: proxy\r\n" + AUTH + b"".join([*lines, *framing]) + b"\r\n"


@pytest.fixture
async def quick(upstream: FakeUpstream) -> AsyncIterator[RunningProxy]:
    """A proxy with short client timeouts, so slow-client tests finish in a second."""
    async with proxy_for(upstream, client_timeouts=ClientTimeouts(idle=0.5, body=0.5)) as proxy:
        yield proxy


@pytest.fixture(autouse=True)
def logs_stay_clean(caplog: pytest.LogCaptureFixture) -> AsyncIterator[None]:
    """No key and no traceback in any log line, whatever the client sent."""
    caplog.set_level(logging.DEBUG)
    yield  # type: ignore[misc]
    for record in caplog.records:
        text = record.getMessage() + (logging.Formatter().formatException(record.exc_info) if record.exc_info else "")
        assert API_KEY not in text
        assert record.levelno < logging.ERROR, text


MALFORMED = {
    "te-and-cl": (head(b"Transfer-Encoding: chunked\r\n") + b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n", 400),
    "two-content-lengths": (head(b"Content-Length: 5\r\n") + BODY, 400),
    "cl-not-a-number": (head(length=None).replace(b"\r\n\r\n", b"\r\nContent-Length: 12a\r\n\r\n") + BODY, 400),
    "negative-cl": (head(length=None).replace(b"\r\n\r\n", b"\r\nContent-Length: -1\r\n\r\n") + BODY, 400),
    "cr-in-header-value": (head(b"X-Prompt-Key: a\rInjected: " + API_KEY.encode() + b"\r\n") + BODY, 400),
    "lf-in-header-value": (head(b"X-Prompt-Key: a\nInjected: " + API_KEY.encode() + b"\r\n") + BODY, 400),
    "nul-in-header-value": (head(b"X-Prompt-Key: a\x00" + API_KEY.encode() + b"\r\n") + BODY, 400),
    "space-before-colon": (head(b"Content-Type : application/json\r\n") + BODY, 400),
    "200-headers": (head(*(b"X-Filler-%d: v\r\n" % i for i in range(200))) + BODY, 431),
    "20kb-header": (head(b"X-Long: " + b"a" * 20_000 + b"\r\n") + BODY, 431),
    "20kb-authorization": (
        head(length=len(BODY)).replace(AUTH, AUTH[:-2] + b"x" * 20_000 + b"\r\n") + BODY,
        431,
    ),
    "20kb-request-line": (b"POST /v1/chat/completions?" + b"q" * 20_000 + b" HTTP/1.1\r\nHost: p\r\n\r\n", 431),
    "not-http": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64, 400),  # a TLS ClientHello
}


@pytest.mark.parametrize("request_bytes,status", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_http_is_refused_without_echo(
    request_bytes: bytes, status: int, upstream: FakeUpstream, proxy: RunningProxy
) -> None:
    baseline = task_count()
    async with raw_connection(proxy.url) as conn:
        await conn.send(request_bytes)
        answer = await conn.answer()
        assert answer.status == status
        error = orjson.loads(answer.body)["error"]
        assert error["type"] == "invalid_request_error" and error["message"]
        assert API_KEY.encode() not in answer.body and b"aaaa" not in answer.body
        assert await conn.closed_by_peer(2)  # a broken framing poisons the connection
    assert upstream.seen == []
    await settled(proxy, baseline)
    await _still_serving(proxy)


async def test_content_length_shorter_than_body_never_forwards_the_rest(
    upstream: FakeUpstream, proxy: RunningProxy
) -> None:
    # What follows the declared length is read as the next request on the connection.
    async with raw_connection(proxy.url) as conn:
        await conn.send(head(length=10) + BODY)
        answer = await conn.answer()
        assert answer.status == 400 and orjson.loads(answer.body)["error"]["type"] == "invalid_request_error"
        assert await conn.closed_by_peer(2)
    assert upstream.seen == []


async def test_content_length_longer_than_body_is_408_after_body_timeout(
    upstream: FakeUpstream, quick: RunningProxy
) -> None:
    await _still_serving(quick)  # the pooled upstream connection is part of the baseline
    baseline = task_count()
    async with raw_connection(quick.url) as conn:
        started = asyncio.get_running_loop().time()
        await conn.send(head(length=len(BODY) + 100) + BODY)
        answer = await conn.answer(timeout=3)
        waited = asyncio.get_running_loop().time() - started
        assert answer.status == 408
        assert orjson.loads(answer.body)["error"]["code"] == "request_timeout"
        assert answer.headers["connection"] == "close"
        assert 0.4 < waited < 2
    assert len(upstream.seen) == 1  # the warm-up call only
    await settled(quick, baseline)


async def test_slowloris_body_is_408(upstream: FakeUpstream, quick: RunningProxy) -> None:
    """A byte every 100 ms keeps every gap short; the whole body still has to arrive in time."""
    async with raw_connection(quick.url) as conn:
        await conn.send(head())
        answer_task = asyncio.create_task(conn.answer(timeout=3))
        await _drip(conn, BODY, answer_task, gap=0.1)
        answer = await answer_task
    assert answer.status == 408
    assert upstream.seen == []


async def test_slowloris_headers_are_cut_off_while_others_are_served(
    upstream: FakeUpstream, quick: RunningProxy
) -> None:
    await _still_serving(quick)  # the pooled upstream connection is part of the baseline
    baseline = task_count()
    async with raw_connection(quick.url) as conn:
        started = asyncio.get_running_loop().time()
        closed = asyncio.create_task(conn.closed_by_peer(3))
        await _drip(conn, head(), closed, gap=0.05)
        await _still_serving(quick)  # a slow client takes no one else's turn
        assert await closed
        assert asyncio.get_running_loop().time() - started < 2
    assert len(upstream.seen) == 2  # the other client's calls only
    await settled(quick, baseline)


async def test_idle_connections_are_closed(quick: RunningProxy) -> None:
    async with raw_connection(quick.url) as never_speaks:
        assert await never_speaks.closed_by_peer(3)
    async with raw_connection(quick.url) as keep_alive:
        await keep_alive.send(head() + BODY)
        assert (await keep_alive.answer()).status == 200
        await keep_alive.send(head() + BODY)  # kept alive: a second request on it is served
        assert (await keep_alive.answer()).status == 200
        assert await keep_alive.closed_by_peer(3)  # then closed once idle


async def test_json_sent_with_the_wrong_content_type_is_forwarded_as_json(
    upstream: FakeUpstream, proxy: RunningProxy
) -> None:
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": content_type} if content_type else {}
        async with aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as session:
            async with session.post(proxy.url + CHAT, data=BODY, headers=headers) as r:
                assert r.status == 200
        seen = upstream.seen[-1]
        assert seen.headers["Content-Type"] == "application/json" and seen.body == BODY


async def test_form_body_is_a_clear_400(upstream: FakeUpstream, proxy: RunningProxy) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy.url + CHAT, data={"model": "m"}) as r:
            assert r.status == 400
            assert (await r.json())["error"]["code"] == "invalid_json"
    assert upstream.seen == []


async def test_gzip_request_body_is_forwarded_plain(upstream: FakeUpstream, proxy: RunningProxy) -> None:
    async with raw_connection(proxy.url) as conn:
        packed = gzip.compress(BODY)
        await conn.send(head(b"Content-Encoding: gzip\r\n", length=len(packed)) + packed)
        assert (await conn.answer()).status == 200
    seen = upstream.seen[-1]
    assert seen.body == BODY and "Content-Encoding" not in seen.headers


async def test_gzip_bomb_is_413_without_inflating_it_whole(upstream: FakeUpstream) -> None:
    async with proxy_for(upstream, max_body_size=1024 * 1024) as proxy:
        packed = gzip.compress(b'{"model":"m","x":"' + b"0" * (200 * 1024 * 1024) + b'"}', compresslevel=9)
        assert len(packed) < 1024 * 1024  # under the limit as sent, 200 MB inflated
        async with raw_connection(proxy.url) as conn:
            await conn.send(head(b"Content-Encoding: gzip\r\n", length=len(packed)) + packed)
            answer = await conn.answer(timeout=10)
        assert answer.status == 413
        assert orjson.loads(answer.body)["error"]["code"] == "payload_too_large"
        await _still_serving(proxy)
    assert len(upstream.seen) == 1  # only the still-serving call


async def test_bad_gzip_is_a_clear_400(upstream: FakeUpstream, proxy: RunningProxy) -> None:
    async with raw_connection(proxy.url) as conn:
        await conn.send(head(b"Content-Encoding: gzip\r\n") + BODY)  # says gzip, is not
        answer = await conn.answer()
    assert answer.status == 400
    assert orjson.loads(answer.body)["error"]["type"] == "invalid_request_error"
    assert upstream.seen == []


async def _drip(conn: RawConnection, data: bytes, until: asyncio.Task[Any], gap: float) -> None:
    """Send ``data`` a byte at a time, ``gap`` seconds apart, until ``until`` is done."""
    for byte in data:
        if until.done():
            return
        await conn.send(bytes([byte]))
        await asyncio.wait({until}, timeout=gap)


async def _still_serving(proxy: RunningProxy) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy.url + CHAT, data=BODY, headers={"Content-Type": "application/json"}) as r:
            assert r.status == 200
