"""SSE streams pass chunk by chunk, byte for byte, whatever the upstream's TCP chunking."""

from __future__ import annotations

import asyncio

import aiohttp
import httpx
import openai
import pytest
from multidict import CIMultiDict

from proxy.server import RunningProxy
from tests.conftest import API_KEY, proxy_for
from tests.fake_upstream import CUT, HANG, FakeUpstream, Reply, sse

CHAT = "/v1/chat/completions"
REQUEST = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}], "stream": True}
EVENT = b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}'

PATTERNS = {
    "event_split_across_writes": [EVENT[:20], EVENT[20:] + b"\n", b"\ndata: [DONE]", b"\n\n"],
    "several_events_in_one_write": [EVENT + b"\n\n" + EVENT + b"\n\n" + b"data: [DONE]\n\n"],
    "crlf_line_endings": [EVENT + b"\r\n\r\n", EVENT + b"\r\n\r\n", b"data: [DONE]\r\n\r\n"],
    "comments_and_fields": [
        b": keep-alive\n\n",
        b"event: message\nid: 7\nretry: 100\n" + EVENT + b"\n\n",
        b"data: [DONE]\n\n",
    ],
    "one_byte_writes": [bytes([b]) for b in EVENT + b"\n\ndata: [DONE]\n\n"],
    "one_megabyte_data_line": [
        b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"'
        + b"x" * (1024 * 1024)
        + b'"},"finish_reason":null}]}\n\n',
        b"data: [DONE]\n\n",
    ],
}


async def _raw_stream(proxy: RunningProxy) -> tuple[int, CIMultiDict[str], bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy.url + CHAT, json=REQUEST) as response:
            return response.status, CIMultiDict(response.headers), await response.read()


@pytest.mark.parametrize("name", sorted(PATTERNS))
async def test_stream_bytes_unchanged(name: str, upstream: FakeUpstream, proxy: RunningProxy) -> None:
    pieces = PATTERNS[name]
    upstream.script(CHAT, Reply(content_type="text/event-stream", body=pieces))
    status, headers, body = await _raw_stream(proxy)
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    assert body == b"".join(pieces)
    assert body.rstrip().endswith(b"[DONE]")


@pytest.mark.parametrize("name", ["event_split_across_writes", "crlf_line_endings", "comments_and_fields"])
async def test_sdk_parses_every_pattern(name: str, upstream: FakeUpstream, proxy: RunningProxy) -> None:
    upstream.script(CHAT, Reply(content_type="text/event-stream", body=PATTERNS[name]))
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=API_KEY, max_retries=0) as client:
        stream = await client.chat.completions.create(model="gpt-fake", messages=REQUEST["messages"], stream=True)
        contents = [chunk.choices[0].delta.content async for chunk in stream]
    assert contents and all(c == "hi" for c in contents)


async def test_first_chunk_arrives_while_upstream_holds_the_second(upstream: FakeUpstream, proxy: RunningProxy) -> None:
    first, second = sse({"n": 1}, done=False)[0], sse({"n": 2})
    gate = asyncio.Event()
    upstream.script(CHAT, Reply(content_type="text/event-stream", body=[first, gate, *second]))
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy.url + CHAT, json=REQUEST) as response:
            received = b""
            while len(received) < len(first):
                received += await asyncio.wait_for(response.content.readany(), 5)
            assert received == first and not gate.is_set()  # no buffering in the proxy
            gate.set()
            rest = await response.read()
    assert received + rest == first + b"".join(second)


async def test_stream_cut_off_upstream_is_not_a_clean_end(upstream: FakeUpstream, proxy: RunningProxy) -> None:
    upstream.script(CHAT, Reply(content_type="text/event-stream", body=[sse({"n": 1}, done=False)[0], CUT]))
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy.url + CHAT, json=REQUEST) as response:
            assert response.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
    # and the official SDK reports it instead of ending the iteration quietly
    upstream.script(CHAT, Reply(content_type="text/event-stream", body=[sse({"n": 1}, done=False)[0], CUT]))
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=API_KEY, max_retries=0) as client:
        stream = await client.chat.completions.create(model="gpt-fake", messages=REQUEST["messages"], stream=True)
        with pytest.raises((httpx.RemoteProtocolError, openai.APIConnectionError)):
            async for _ in stream:
                pass


async def test_idle_upstream_mid_stream_is_cut_after_read_timeout(upstream: FakeUpstream) -> None:
    upstream.script(CHAT, Reply(content_type="text/event-stream", body=[sse({"n": 1}, done=False)[0], HANG]))
    async with proxy_for(upstream, timeouts=_short_read()) as proxy:
        async with aiohttp.ClientSession() as session:
            async with session.post(proxy.url + CHAT, json=REQUEST) as response:
                with pytest.raises(aiohttp.ClientPayloadError):
                    await response.read()
        seen = upstream.seen[-1]
        await asyncio.wait_for(seen.closed.wait(), 5)  # the proxy hung up on the idle upstream


async def test_clean_end_without_done_passes_as_sent(upstream: FakeUpstream, proxy: RunningProxy) -> None:
    # Responses-API and other streams have no [DONE]; a clean end upstream stays a clean end.
    pieces = [b"event: response.completed\ndata: {}\n\n"]
    upstream.script("/v1/responses", Reply(content_type="text/event-stream", body=pieces))
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy.url + "/v1/responses", json={"model": "m", "input": "x", "stream": True}) as r:
            assert await r.read() == pieces[0]


async def test_binary_answers_stream_through(upstream: FakeUpstream, proxy: RunningProxy) -> None:
    audio = bytes(range(256)) * 4096
    upstream.script("/v1/audio/speech", Reply(content_type="audio/mpeg", body=[audio[:1000], audio[1000:]]))
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=API_KEY, max_retries=0) as client:
        speech = await client.audio.speech.create(model="tts-fake", voice="alloy", input="hello")
        assert speech.read() == audio


def _short_read() -> object:
    from proxy.config import Timeouts

    return Timeouts(connect=2, read=0.3)
