"""What crosses the proxy: credentials, flywheel's own headers, hop-by-hop headers, queries."""

from __future__ import annotations

import dataclasses
import logging

import aiohttp
import openai
import pytest

from proxy.server import RunningProxy, running
from proxy.upstreams import OpenAIUpstream, Upstreams
from tests.conftest import API_KEY, config_for
from tests.fake_upstream import CUT, FakeUpstream, Reply, sse
from tests.rawhttp import raw_request

MESSAGES = [{"role": "user", "content": "hi"}]


async def test_app_authorization_passes_and_own_headers_stay(upstream: FakeUpstream, proxy: RunningProxy) -> None:
    async with openai.AsyncOpenAI(
        base_url=proxy.url + "/v1", api_key=API_KEY, max_retries=0, organization="org-1"
    ) as c:
        await c.chat.completions.create(
            model="m",
            messages=MESSAGES,
            extra_headers={"X-Prompt-Vars": '{"secret": "x"}', "X-Prompt-Key": "user-1", "X-Custom": "kept"},
        )
    sent = {k.lower(): v for k, v in upstream.seen[-1].headers.items()}
    assert sent["authorization"] == f"Bearer {API_KEY}"
    assert sent["openai-organization"] == "org-1"
    assert sent["x-custom"] == "kept"
    assert "x-prompt-vars" not in sent and "x-prompt-key" not in sent
    assert sent["host"] == upstream.url.removeprefix("http://")


async def test_configured_key_replaces_the_apps(upstream: FakeUpstream) -> None:
    config = config_for(upstream.url)
    config = dataclasses.replace(
        config, upstreams=Upstreams(default=OpenAIUpstream(upstream.url + "/v1", "sk-sidecar"))
    )
    async with running(config) as proxy:
        async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-app", max_retries=0) as client:
            await client.chat.completions.create(model="m", messages=MESSAGES)
    assert upstream.seen[-1].headers["Authorization"] == "Bearer sk-sidecar"


async def test_hop_by_hop_dropped_query_kept(upstream: FakeUpstream, proxy: RunningProxy) -> None:
    headers = {"Connection": "keep-alive, X-Hop", "X-Hop": "1", "Proxy-Authorization": "Basic eA==", "TE": "trailers"}
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/v1/models?api-version=2024-10-21&x=%2F", headers=headers) as r:
            assert r.status == 200
    sent = {k.lower() for k in upstream.seen[-1].headers}
    assert not sent & {"x-hop", "proxy-authorization", "te"}
    request = b"GET /v1/models?api-version=2024-10-21&x=%2F HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    status, _ = await raw_request(proxy.url, request)
    assert status == 200
    assert upstream.seen[-1].query == "api-version=2024-10-21&x=%2F"  # the query reaches the provider as sent


async def test_no_cookies_shared_between_requests(upstream: FakeUpstream, proxy: RunningProxy) -> None:
    upstream.script("/v1/models", Reply(headers={"Set-Cookie": "session=abc; Path=/"}, body=[b"{}"]))
    async with aiohttp.ClientSession() as a, aiohttp.ClientSession() as b:
        async with a.get(proxy.url + "/v1/models") as r:
            assert "session=abc" in r.headers["Set-Cookie"]  # the app gets the provider's cookie
        async with b.get(proxy.url + "/v1/models"):
            pass
    assert "Cookie" not in upstream.seen[-1].headers  # …but another app request never carries it


async def test_api_key_never_logged(upstream: FakeUpstream, caplog: pytest.LogCaptureFixture) -> None:
    """Whatever happens to a request (success, provider error, cut stream), the key stays out of the log."""
    caplog.set_level(logging.DEBUG)
    upstream.script("/v1/chat/completions", Reply(status=401, body=[b'{"error":{"message":"bad key"}}']))
    upstream.script("/v1/chat/completions", Reply(content_type="text/event-stream", body=[sse({"n": 1})[0], CUT]))
    config = dataclasses.replace(
        config_for(upstream.url), upstreams=Upstreams(default=OpenAIUpstream(upstream.url + "/v1", "sk-sidecar-SECRET"))
    )
    async with running(config) as proxy, aiohttp.ClientSession() as session:
        for body in (b'{"model":"m","messages":[]}', b'{"model":"m","stream":true}', b"{bad", b'{"model":"m"}'):
            async with session.post(
                proxy.url + "/v1/chat/completions", data=body, headers={"Authorization": f"Bearer {API_KEY}"}
            ) as r:
                try:
                    await r.read()
                except aiohttp.ClientPayloadError:
                    pass
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args}" for r in caplog.records)
    assert "upstream stream broke off" in logged  # the log did capture this run
    assert API_KEY not in logged and "sk-sidecar-SECRET" not in logged
