"""The one fake in the suite: an external LLM provider served on a loopback port.

By default it answers like OpenAI (and like Anthropic on ``/v1/messages``) with
deterministic bodies derived from the request. A test can script the next reply
of a path byte for byte: status, headers, body pieces written one write at a
time, gates the test opens (``asyncio.Event``), a hang, or a cut connection.
Every request is recorded with an event that is set when its connection closes,
so tests await what the fake saw instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict


class Hang:
    """Wait here until the connection goes away."""


class Cut:
    """Close the connection abruptly here (no terminating chunk)."""


HANG = Hang()
CUT = Cut()
Piece = bytes | asyncio.Event | Hang | Cut


@dataclass
class Reply:
    """One scripted answer. ``before`` runs before the headers are sent, ``body`` after."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    before: Sequence[asyncio.Event | Hang | Cut] = ()
    body: Sequence[Piece] = ()
    content_length: bool = False  # send Content-Length instead of chunked


@dataclass
class Seen:
    method: str
    path: str
    query: str  # raw, as sent
    headers: CIMultiDict[str]
    body: bytes
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # the proxy closed the connection early
    peer: Any = None  # the proxy's end of the connection: the same for calls over a pooled one

    def json(self) -> Any:
        return orjson.loads(self.body)


def sse(*events: Any, done: bool = True) -> list[bytes]:
    """OpenAI-style SSE pieces, one per event."""
    pieces = [b"data: " + orjson.dumps(event) + b"\n\n" for event in events]
    return pieces + ([b"data: [DONE]\n\n"] if done else [])


class FakeUpstream:
    """A fake OpenAI-compatible (and Anthropic) provider in the test's event loop."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._arrivals: asyncio.Queue[Seen] = asyncio.Queue()
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._runner: web.AppRunner | None = None
        self.url = ""
        # A simulated model for tests that need behaviour, not canned text: request body → answer.
        self.model: Callable[[Mapping[str, Any]], str] | None = None

    def script(self, path: str, *replies: Reply) -> None:
        """Answer the next requests to ``path`` (e.g. "/v1/chat/completions") with these."""
        self._scripts[path].extend(replies)

    def unscript(self, path: str) -> None:
        """Forget the replies scripted for ``path`` that no request used."""
        self._scripts[path].clear()

    async def next_request(self, timeout: float = 10) -> Seen:
        return await asyncio.wait_for(self._arrivals.get(), timeout)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeUpstream]:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        try:
            yield self
        finally:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(
            request.method,
            request.path,
            request.raw_path.partition("?")[2],
            request.headers.copy(),  # case-insensitive, as HTTP headers are
            await request.read(),
        )
        seen.peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        self.seen.append(seen)
        self._arrivals.put_nowait(seen)
        try:
            queue = self._scripts.get(request.path)
            reply = queue.popleft() if queue else (self._simulated(seen) or canned(seen))
            return await self._play(request, reply)
        except (asyncio.CancelledError, ConnectionResetError):
            seen.closed.set()
            raise

    def _simulated(self, seen: Seen) -> Reply | None:
        if self.model is None or not seen.path.endswith("/chat/completions") or seen.method != "POST":
            return None
        body = seen.json()
        answer = chat_completion(body)
        answer["choices"][0]["message"]["content"] = self.model(body)
        return _json(answer)

    async def _play(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        for step in reply.before:
            await _step(request, step)
        pieces = list(reply.body)
        if reply.content_length and all(isinstance(p, bytes) for p in pieces):
            body = b"".join(p for p in pieces if isinstance(p, bytes))
            return web.Response(status=reply.status, body=body, headers=reply.headers, content_type=reply.content_type)
        response = web.StreamResponse(status=reply.status, headers=reply.headers)
        response.content_type = reply.content_type
        await response.prepare(request)
        for piece in pieces:
            if isinstance(piece, bytes):
                await response.write(piece)
            else:
                await _step(request, piece)
        await response.write_eof()
        return response


async def _step(request: web.Request, step: asyncio.Event | Hang | Cut) -> None:
    if isinstance(step, asyncio.Event):
        await step.wait()
    elif isinstance(step, Hang):
        await asyncio.Event().wait()
    else:
        assert request.transport is not None
        request.transport.abort()
        await asyncio.Event().wait()  # cancelled by the lost connection


# --- canned provider answers -------------------------------------------------------


def canned(seen: Seen) -> Reply:
    path = seen.path
    if path.endswith("/models") and seen.method == "GET":
        return _json(
            {"object": "list", "data": [{"id": "gpt-fake", "object": "model", "created": 1, "owned_by": "fake"}]}
        )
    if path.endswith("/messages"):
        return _anthropic(seen.json())
    body = seen.json() if seen.body else {}
    if path.endswith("/chat/completions"):
        return _chat_stream(body) if body.get("stream") else _json(chat_completion(body))
    if path.endswith("/embeddings"):
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {"object": "embedding", "index": i, "embedding": [0.25, -0.5, float(len(str(x)))]}
            for i, x in enumerate(inputs)
        ]
        return _json(
            {"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": 3, "total_tokens": 3}}
        )
    if path.endswith("/completions"):
        return _json(
            {
                "id": "cmpl-fake",
                "object": "text_completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {"text": "echo: " + str(body.get("prompt")), "index": 0, "logprobs": None, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5},
            }
        )
    if path.endswith("/responses"):
        return _json(_response(body))
    return _json({"echo": {"method": seen.method, "path": path, "query": seen.query}})


def answer_text(body: Mapping[str, Any]) -> str:
    """What the fake model 'says': derived from the last message, so answers differ by input."""
    messages = body.get("messages") or [{"content": ""}]
    content = messages[-1].get("content")
    if isinstance(content, list):  # content parts, as Anthropic and multimodal requests send them
        content = " ".join(str(part.get("text", "")) for part in content)
    return "echo: " + str(content)


def chat_completion(body: Mapping[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": answer_text(body), "refusal": None}
    finish = "stop"
    if body.get("tools"):
        tool = body["tools"][0]["function"]["name"]
        message = {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": tool, "arguments": '{"city":"Paris"}'}}
            ],
        }
        finish = "tool_calls"
    elif (body.get("response_format") or {}).get("type") in ("json_object", "json_schema"):
        message["content"] = '{"answer": "fake"}'
    choices = [
        {"index": i, "message": message, "logprobs": None, "finish_reason": finish} for i in range(body.get("n") or 1)
    ]
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1700000000,
        "model": body.get("model"),
        "choices": choices,
        "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
        "system_fingerprint": "fp_fake",
        "x_unknown_field": {"kept": True},
    }


def chat_chunks(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000, "model": body.get("model")}
    if body.get("tools"):  # as OpenAI streams a tool call: its id and name first, the arguments in pieces
        call = chat_completion(body)["choices"][0]["message"]["tool_calls"][0]
        name = call["function"]["name"]
        opening = {"index": 0, "id": call["id"], "type": "function", "function": {"name": name, "arguments": ""}}
        deltas = [{"role": "assistant", "content": None, "tool_calls": [opening]}]
        deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": a}}]} for a in ('{"ci', 'ty":"Par', 'is"}')]
        finish = "tool_calls"
    else:
        deltas = [{"role": "assistant", "content": ""}]
        deltas += [{"content": w + " "} for w in answer_text(body).split(" ")]
        finish = "stop"
    chunks = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    if (body.get("stream_options") or {}).get("include_usage"):
        tokens = len(deltas) - 1
        usage = {"prompt_tokens": 7, "completion_tokens": tokens, "total_tokens": 7 + tokens}
        chunks.append({**base, "choices": [], "usage": usage})
    return chunks


def _chat_stream(body: Mapping[str, Any]) -> Reply:
    return Reply(content_type="text/event-stream", body=sse(*chat_chunks(body)))


def _response(body: Mapping[str, Any]) -> dict[str, Any]:
    text = "echo: " + str(body.get("input"))
    return {
        "id": "resp_fake",
        "object": "response",
        "created_at": 1700000000,
        "status": "completed",
        "model": body.get("model"),
        "instructions": body.get("instructions"),
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "output": [
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "usage": {
            "input_tokens": 4,
            "output_tokens": 2,
            "total_tokens": 6,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }


def _anthropic(body: Mapping[str, Any]) -> Reply:
    text = answer_text(body)
    usage = {"input_tokens": 9, "output_tokens": 4}
    message = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    if not body.get("stream"):
        return _json(message)
    events = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    **message,
                    "content": [],
                    "stop_reason": None,
                    "usage": {"input_tokens": 9, "output_tokens": 1},
                },
            },
        ),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        *[
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w + " "}},
            )
            for w in text.split(" ")
        ],
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 4},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    pieces = [f"event: {name}\ndata: ".encode() + orjson.dumps(data) + b"\n\n" for name, data in events]
    return Reply(content_type="text/event-stream", body=pieces)


def _json(value: Any, status: int = 200) -> Reply:
    return Reply(status=status, body=[orjson.dumps(value)], content_length=True)
