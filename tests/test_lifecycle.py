"""The real ``flywheel proxy`` process: flags and env, health, readiness, SIGTERM drain."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import aiohttp
import pytest

from proxy.server import RunningProxy
from tests.fake_upstream import FakeUpstream, Reply, sse
from tests.processes import flywheel_proxy

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def test_serves_health_and_readiness(upstream: FakeUpstream) -> None:
    async with flywheel_proxy("--upstream", upstream.url + "/v1") as proxy:
        async with aiohttp.ClientSession() as session:
            for path in ("/healthz", "/readyz"):
                async with session.get(proxy.url + path) as r:
                    assert r.status == 200 and (await r.json())["status"] == "ok"


async def test_env_vars_stand_in_for_flags(upstream: FakeUpstream) -> None:
    env = {"FLYWHEEL_UPSTREAM": upstream.url + "/v1", "FLYWHEEL_UPSTREAM_API_KEY": "sk-from-env"}
    async with flywheel_proxy(env=env) as proxy:
        async with aiohttp.ClientSession() as session:
            async with session.post(proxy.url + CHAT, json={**BODY, "stream": False}) as r:
                assert r.status == 200
    assert upstream.seen[-1].headers["Authorization"] == "Bearer sk-from-env"
    assert not any("sk-from-env" in line for line in proxy.log)


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "give --upstream"),
        (("--upstream", "ftp://x"), "http(s) URL"),
        (("--upstream", "http://x/v1", "--read-timeout", "0"), "--read-timeout must be > 0"),
        (("--upstreams", "/nonexistent.toml"), "--upstreams /nonexistent.toml"),
    ],
)
async def test_bad_configuration_exits_2_with_a_reason(args: tuple[str, ...], message: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flywheel.cli", "proxy", *args, stderr=asyncio.subprocess.PIPE, env=env
    )
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert message in err.decode() and "Traceback" not in err.decode()


async def test_sigterm_finishes_open_stream_then_exits(upstream: FakeUpstream) -> None:
    first, rest = sse({"n": 1}, done=False)[0], sse({"n": 2})
    gate = asyncio.Event()
    upstream.script(CHAT, Reply(content_type="text/event-stream", body=[first, gate, *rest]))
    async with flywheel_proxy("--upstream", upstream.url + "/v1") as proxy:
        async with aiohttp.ClientSession() as session:
            async with session.post(proxy.url + CHAT, json=BODY) as response:
                assert await asyncio.wait_for(response.content.readany(), 5) == first
                proxy.process.send_signal(signal.SIGTERM)
                await proxy.wait_for_log("draining")
                with pytest.raises(aiohttp.ClientConnectionError):  # no new connections while draining
                    async with aiohttp.ClientSession() as other:
                        await other.get(proxy.url + "/readyz")
                gate.set()
                assert await response.read() == b"".join(rest)  # the stream finished, [DONE] included
        assert await asyncio.wait_for(proxy.process.wait(), 10) == 0
    assert not upstream.seen[-1].closed.is_set()


async def test_readyz_fails_while_draining(upstream: FakeUpstream, proxy: RunningProxy) -> None:
    from proxy.app import LIFECYCLE

    async with aiohttp.ClientSession() as session:
        proxy.app[LIFECYCLE].draining = True
        async with session.get(proxy.url + "/readyz") as r:
            assert r.status == 503
        async with session.get(proxy.url + "/healthz") as r:
            assert r.status == 200
