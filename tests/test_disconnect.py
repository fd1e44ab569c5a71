"""A client that goes away cancels the upstream call, in every window, and the proxy keeps
serving with nothing left in flight; more concurrent calls than the upstream pool holds queue
and all complete."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import openai
import pytest

from proxy import forward
from proxy.app import FORWARDER, METRICS
from proxy.server import RunningProxy
from tests.conftest import proxy_for
from tests.fake_upstream import HANG, FakeUpstream, Reply, sse
from tests.leaks import settled, task_count
from tests.spans import Traced, traced_proxy

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]
BODY = {"model": "m", "messages": MESSAGES}
ANSWER = sse({"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]})


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
    baseline = task_count()
    upstream.script(CHAT, Reply(before=[HANG]))
    await _abandon(proxy, upstream, {**BODY, "stream": stream})
    await _still_serving(proxy, baseline)


async def test_disconnect_while_json_body_pending(upstream: FakeUpstream, proxy: RunningProxy) -> None:
    baseline = task_count()
    upstream.script(CHAT, Reply(body=[b'{"id":', HANG]))  # headers sent, body not finished
    await _abandon(proxy, upstream, BODY)
    await _still_serving(proxy, baseline)


async def test_disconnect_mid_stream(upstream: FakeUpstream, proxy: RunningProxy) -> None:
    baseline = task_count()
    upstream.script(CHAT, Reply(content_type="text/event-stream", body=[sse({"n": 1}, done=False)[0], HANG]))
    async with aiohttp.ClientSession() as session:
        response = await session.post(proxy.url + CHAT, json={**BODY, "stream": True})
        assert await asyncio.wait_for(response.content.readany(), 5)
        seen = upstream.seen[-1]
        response.close()  # drop the connection mid-stream
    await asyncio.wait_for(seen.closed.wait(), 5)
    await _still_serving(proxy, baseline)


@pytest.fixture(autouse=True)
def no_error_logged(caplog: pytest.LogCaptureFixture) -> Any:
    """A client going away is routine: nothing may be logged as an error (aiohttp's included)."""
    caplog.set_level(logging.DEBUG)
    yield
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_twice_the_pool_limit_queues_and_completes(upstream: FakeUpstream) -> None:
    gate = asyncio.Event()
    upstream.script(CHAT, *(Reply(before=[gate]) for _ in range(8)))
    async with proxy_for(upstream, max_connections=4) as proxy:
        async with aiohttp.ClientSession() as session:

            async def call(stream: bool) -> int:
                async with session.post(proxy.url + CHAT, json={**BODY, "stream": stream}) as r:
                    await r.read()
                    return r.status

            calls = [asyncio.create_task(call(i % 2 == 0)) for i in range(8)]
            for _ in range(4):
                await upstream.next_request()
            assert len(upstream.seen) == 4  # the pool is full: the other four wait for a connection
            assert proxy.app[METRICS].in_flight == 8
            gate.set()
            assert await asyncio.gather(*calls) == [200] * 8
        assert len(upstream.seen) == 8
        await settled(proxy, task_count() + 4)  # at most the four pooled upstream connections' tasks
        assert proxy.app[METRICS].in_flight == 0


async def _still_serving(proxy: RunningProxy, baseline: int) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy.url + CHAT, json=BODY) as r:
            assert r.status == 200
    # Nothing of the abandoned call is left: no call in flight, no task beyond the
    # pooled upstream connection's (one on the fake's side).
    await settled(proxy, baseline + 1)


async def _sdk_stream_to_done(traced: Traced) -> None:
    """A stream read with openai-python, which closes the response at [DONE]; returns once
    the proxy has seen the app go (the call's span is recorded)."""
    async with openai.AsyncOpenAI(base_url=traced.url + "/v1", api_key="sk-test", max_retries=0) as client:
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        assert [c.choices[0].delta.content async for c in stream] == ["hi"]
    await traced.spans.one("chat")


async def test_an_app_gone_after_done_leaves_the_upstream_connection_pooled(upstream: FakeUpstream) -> None:
    """openai-python closes at [DONE]; the provider's last bytes, due a moment later, are
    read in the background so the next call reuses the connection (no new handshake)."""
    held = asyncio.Event()
    upstream.script(CHAT, Reply(content_type="text/event-stream", body=[*ANSWER, held]))
    async with traced_proxy(upstream) as traced:
        await _sdk_stream_to_done(traced)
        first = upstream.seen[-1]
        held.set()
        await traced.proxy.app[FORWARDER].settled()
        async with aiohttp.ClientSession() as session:
            async with session.post(traced.url + CHAT, json=BODY) as r:
                assert r.status == 200
    second = upstream.seen[-1]
    assert not first.closed.is_set() and first.peer == second.peer


@pytest.mark.parametrize("ending", ["never", "at_shutdown"])
async def test_reading_the_rest_after_done_is_bounded(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    """A provider that never ends its stream after [DONE] is cut off after the bound, and a
    proxy shutting down does not wait for it."""
    monkeypatch.setattr(forward, "_REST_SECONDS", 0.2 if ending == "never" else 60.0)
    upstream.script(CHAT, Reply(content_type="text/event-stream", body=[*ANSWER, HANG]))
    async with traced_proxy(upstream) as traced:
        await _sdk_stream_to_done(traced)
        if ending == "never":
            await asyncio.wait_for(traced.proxy.app[FORWARDER].settled(), 5)
            await asyncio.wait_for(upstream.seen[-1].closed.wait(), 5)
    await asyncio.wait_for(upstream.seen[-1].closed.wait(), 5)  # closed by the proxy's shutdown at the latest
