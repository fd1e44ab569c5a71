"""A client that goes away cancels the upstream call, in every window, and the proxy keeps serving."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest

from proxy.server import RunningProxy
from tests.fake_upstream import HANG, FakeUpstream, Reply, sse

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def _abandon(proxy: RunningProxy, upstream: FakeUpstream, body: dict[str, Any]) -> None:
    """Send a request and drop the connection once the upstream has it."""
    session = aiohttp.ClientSession()
    task = asyncio.create_task(session.post(proxy.url + CHAT, json=body))
    seen = await upstream.next_request()
    task.cancel()
    await session.close()
    await asyncio.wait_for(seen.closed.wait(), 5)


@pytest.mark.parametrize("stream", [True, False], ids=["stream-before-headers", "non-streaming"])
async def test_disconnect_while_upstream_thinks(stream: bool, upstream: FakeUpstream, proxy: RunningProxy) -> None:
    upstream.script(CHAT, Reply(before=[HANG]))
    await _abandon(proxy, upstream, {**BODY, "stream": stream})
    await _still_serving(proxy)


async def test_disconnect_while_json_body_pending(upstream: FakeUpstream, proxy: RunningProxy) -> None:
    upstream.script(CHAT, Reply(body=[b'{"id":', HANG]))  # headers sent, body not finished
    await _abandon(proxy, upstream, BODY)
    await _still_serving(proxy)


async def test_disconnect_mid_stream(upstream: FakeUpstream, proxy: RunningProxy) -> None:
    upstream.script(CHAT, Reply(content_type="text/event-stream", body=[sse({"n": 1}, done=False)[0], HANG]))
    async with aiohttp.ClientSession() as session:
        response = await session.post(proxy.url + CHAT, json={**BODY, "stream": True})
        assert await asyncio.wait_for(response.content.readany(), 5)
        seen = upstream.seen[-1]
        response.close()  # drop the connection mid-stream
    await asyncio.wait_for(seen.closed.wait(), 5)
    await _still_serving(proxy)


@pytest.fixture(autouse=True)
def no_error_logged(caplog: pytest.LogCaptureFixture) -> Any:
    """A client going away is routine: nothing may be logged as an error (aiohttp's included)."""
    caplog.set_level(logging.DEBUG)
    yield
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def _still_serving(proxy: RunningProxy) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy.url + CHAT, json=BODY) as r:
            assert r.status == 200
