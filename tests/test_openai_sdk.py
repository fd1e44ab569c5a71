"""The official openai SDK, sync and async, gets the same answers through the proxy as directly."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import openai
import pytest

from proxy.server import RunningProxy
from tests.conftest import API_KEY
from tests.fake_upstream import FakeUpstream, Reply

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "answer", "schema": {"type": "object", "properties": {"answer": {"type": "string"}}}},
}

CALLS: dict[str, Callable[[Any], Any]] = {
    "chat": lambda c: c.chat.completions.create(model="gpt-fake", messages=MESSAGES),
    "chat_n": lambda c: c.chat.completions.create(model="gpt-fake", messages=MESSAGES, n=2, temperature=0.3),
    "tools": lambda c: c.chat.completions.create(model="gpt-fake", messages=MESSAGES, tools=TOOLS),
    "response_format": lambda c: c.chat.completions.create(model="gpt-fake", messages=MESSAGES, response_format=SCHEMA),
    "embeddings": lambda c: c.embeddings.create(model="emb-fake", input=["a", "bb"]),
    "models": lambda c: c.models.list(),
    "completions": lambda c: c.completions.create(model="gpt-fake", prompt="Say hi"),
    "responses": lambda c: c.responses.create(model="gpt-fake", input="Hi", instructions="Be brief."),
}


def _dump(result: Any) -> Any:
    if isinstance(result, (openai.pagination.SyncPage, openai.pagination.AsyncPage)):
        return [m.model_dump() for m in result.data]
    return result.model_dump()


def _sync_client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0)


def _async_client(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0)


@pytest.mark.parametrize("name", sorted(CALLS))
async def test_async_sdk_same_answer_through_proxy(name: str, upstream: FakeUpstream, proxy: RunningProxy) -> None:
    call = CALLS[name]
    async with _async_client(upstream.url) as direct, _async_client(proxy.url) as proxied:
        expected = _dump(await call(direct))
        got = _dump(await call(proxied))
    assert got == expected
    direct_seen, proxied_seen = upstream.seen[-2], upstream.seen[-1]
    assert proxied_seen.body == direct_seen.body  # the request reached the provider byte for byte
    assert proxied_seen.path == direct_seen.path


@pytest.mark.parametrize("name", ["chat", "tools", "embeddings", "models", "responses"])
async def test_sync_sdk_same_answer_through_proxy(name: str, upstream: FakeUpstream, proxy: RunningProxy) -> None:
    call = CALLS[name]

    def both() -> tuple[Any, Any]:
        with _sync_client(upstream.url) as direct, _sync_client(proxy.url) as proxied:
            return _dump(call(direct)), _dump(call(proxied))

    expected, got = await asyncio.to_thread(both)
    assert got == expected


async def test_async_stream_same_chunks(upstream: FakeUpstream, proxy: RunningProxy) -> None:
    async def chunks(base: str, **extra: Any) -> list[Any]:
        async with _async_client(base) as client:
            stream = await client.chat.completions.create(model="gpt-fake", messages=MESSAGES, stream=True, **extra)
            return [chunk.model_dump() async for chunk in stream]

    expected = await chunks(upstream.url)
    got = await chunks(proxy.url)
    assert got == expected and len(got) >= 4
    with_usage = await chunks(proxy.url, stream_options={"include_usage": True})
    assert with_usage[-1]["usage"]["prompt_tokens"] == 7


async def test_sync_stream_same_chunks(upstream: FakeUpstream, proxy: RunningProxy) -> None:
    def chunks(base: str) -> list[Any]:
        with _sync_client(base) as client:
            stream = client.chat.completions.create(model="gpt-fake", messages=MESSAGES, stream=True, tools=TOOLS)
            return [chunk.model_dump() for chunk in stream]

    assert await asyncio.to_thread(chunks, proxy.url) == await asyncio.to_thread(chunks, upstream.url)


async def test_unknown_fields_pass_both_ways(upstream: FakeUpstream, proxy: RunningProxy) -> None:
    async with _async_client(proxy.url) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-fake", messages=MESSAGES, extra_body={"x_vendor": {"deep": [1, 2]}, "store": True}
        )
    sent = (await upstream.next_request()).json()
    assert sent["x_vendor"] == {"deep": [1, 2]} and sent["store"] is True
    assert raw.http_response.json()["x_unknown_field"] == {"kept": True}


async def test_request_id_is_ours_and_provider_id_kept(upstream: FakeUpstream, proxy: RunningProxy) -> None:
    upstream.script("/v1/chat/completions", Reply(headers={"x-request-id": "prov-123"}, body=[b'{"id":"x"}']))
    async with _async_client(proxy.url) as client:
        raw = await client.chat.completions.with_raw_response.create(model="gpt-fake", messages=MESSAGES)
        given = await client.chat.completions.with_raw_response.create(
            model="gpt-fake", messages=MESSAGES, extra_headers={"X-Request-Id": "app-chosen-1"}
        )
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["x-upstream-request-id"] == "prov-123"
    assert given.headers["x-request-id"] == "app-chosen-1"
