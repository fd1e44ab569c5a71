"""Reading what came back — ids, model, finish reasons, usage, output text — from a
JSON answer or from an SSE stream as it passes, without changing a byte of it.

The one exception is the usage chunk flywheel asked for on the app's behalf
(``stream_options.include_usage``): the app did not ask for it, so it does not see it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

_MAX_TEXT = 1024 * 1024  # output kept for evaluation and content capture, per call
_RESPONSE_DONE = frozenset(("response.completed", "response.incomplete", "response.failed"))
_BOUNDARIES = (b"\n\n", b"\r\n\r\n", b"\r\r")


@dataclass(slots=True)
class ToolCall:
    """A tool call the model asked for; a stream sends its arguments in pieces."""

    id: str | None = None
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Outcome:
    """What the provider answered, gathered while the answer is relayed."""

    endpoint: str
    keep_text: bool = False
    hide_usage: bool = False  # flywheel asked for the usage chunk; the app did not
    status: int | None = None  # the upstream's HTTP status
    first_chunk_at: float | None = None  # perf_counter() when the first chunk went to the app
    error_type: str | None = None
    response_id: str | None = None
    response_model: str | None = None
    finish_reasons: dict[int, str] = field(default_factory=dict)
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_input_tokens: int | None = None  # of the input tokens, read from the provider's prompt cache
    service_tier: str | None = None
    system_fingerprint: str | None = None
    embedding_size: int | None = None  # dimensions of the (first) embedding returned
    texts: dict[int, list[str]] = field(default_factory=dict)
    tool_calls: dict[int, dict[int, ToolCall]] = field(default_factory=dict)  # by choice, then by position
    text_size: int = 0  # of texts and tool call arguments together
    completed: bool = False  # [DONE] or a terminal event seen
    delivered: bool = False  # and written to the app: its hanging up after that is no failure

    def read_body(self, raw: bytes) -> None:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if isinstance(body, dict):
            self.read_json(body)
            self.completed = True

    def read_json(self, body: dict[str, Any]) -> None:
        self._ids(body)
        self._usage(body.get("usage"))
        if self.endpoint == "responses":
            self._response(body)
            return
        if self.endpoint == "embeddings":
            data = _list(body.get("data"))
            vector = data[0].get("embedding") if data and isinstance(data[0], dict) else None
            self.embedding_size = len(vector) if isinstance(vector, list) else None  # base64: not known
            return
        for choice in _list(body.get("choices")):
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else choice.get("text")
            self._text(index, text)
            if self.keep_text and isinstance(message, dict):
                self._message_tool_calls(index, message)
            self._finish(index, choice.get("finish_reason"))

    def read_event(self, event: dict[str, Any]) -> bool:
        """Take in one stream event; True when it is a usage-only chunk."""
        if self.endpoint == "responses":
            kind = event.get("type")
            if kind == "error":  # the Responses API's in-stream error event
                self._stream_error(event)
            if kind == "response.failed" and isinstance(event.get("response"), dict):
                self._stream_error(event["response"].get("error"))
            if kind in _RESPONSE_DONE and isinstance(event.get("response"), dict):
                self._ids(event["response"])
                self._usage(event["response"].get("usage"))
                self._response(event["response"])
                self.completed = True
            elif kind == "response.created" and isinstance(event.get("response"), dict):
                self._ids(event["response"])
            return False
        if "error" in event:  # a provider error sent inside a 200 stream
            self._stream_error(event["error"])
            return False
        # The helpers are called only when there is something for them (a stream event
        # is read three to hundreds of times a call).
        if self.response_id is None or self.response_model is None:
            self._ids(event)
        choices = _list(event.get("choices"))
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            if self.keep_text:
                delta = choice.get("delta")
                self._text(index, delta.get("content") if isinstance(delta, dict) else choice.get("text"))
                if isinstance(delta, dict):
                    self._message_tool_calls(index, delta)
            if (reason := choice.get("finish_reason")) is not None:
                self._finish(index, reason)
        usage = event.get("usage")
        if usage is None:
            return False
        self._usage(usage)
        return not choices and isinstance(usage, dict)

    def _stream_error(self, error: Any) -> None:
        found = None
        if isinstance(error, dict):
            found = error.get("type") or error.get("code")
        # A short, provider-chosen word (server_error, rate_limit_exceeded), never the message.
        self.error_type = found[:64] if isinstance(found, str) and found else "stream_error"

    def output_text(self, index: int = 0) -> str:
        return "".join(self.texts.get(index, ()))

    def _ids(self, body: dict[str, Any]) -> None:
        # Empty ones are no answer: Azure OpenAI opens its streams with a chunk of prompt
        # filter results whose id and model are "" (the call's come in the next chunk).
        if self.response_id is None and isinstance(found := body.get("id"), str) and found:
            self.response_id = found
        if self.response_model is None and isinstance(found := body.get("model"), str) and found:
            self.response_model = found
        if isinstance(found := body.get("service_tier"), str):  # a stream's chunks all say it
            self.service_tier = found
        if isinstance(found := body.get("system_fingerprint"), str):
            self.system_fingerprint = found

    def _usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        inputs = usage.get("prompt_tokens", usage.get("input_tokens"))
        outputs = usage.get("completion_tokens", usage.get("output_tokens"))
        if isinstance(inputs, int):
            self.input_tokens = inputs
        if isinstance(outputs, int):
            self.output_tokens = outputs
        details = usage.get("prompt_tokens_details", usage.get("input_tokens_details"))
        if isinstance(details, dict) and isinstance(cached := details.get("cached_tokens"), int):
            self.cached_input_tokens = cached

    def _response(self, body: dict[str, Any]) -> None:
        status = body.get("status")
        details = body.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        finish = reason if isinstance(reason, str) else status
        if isinstance(finish, str):
            self.finish_reasons[0] = finish
        for position, item in enumerate(_list(body.get("output"))):
            if isinstance(item, dict) and item.get("type") == "message":
                for part in _list(item.get("content")):
                    if isinstance(part, dict) and part.get("type") == "output_text":
                        self._text(0, part.get("text"))
            elif isinstance(item, dict) and item.get("type") == "function_call" and self.keep_text:
                self._tool_call(0, position, item.get("call_id"), item.get("name"), item.get("arguments"))

    def _text(self, index: Any, text: Any) -> None:
        if self.keep_text and isinstance(text, str) and text and self.text_size < _MAX_TEXT:
            self.texts.setdefault(index if isinstance(index, int) else 0, []).append(text)
            self.text_size += len(text)

    def _message_tool_calls(self, index: Any, message: dict[str, Any]) -> None:
        """A message's (or a stream delta's) ``tool_calls``, and the older ``function_call``."""
        calls = message.get("tool_calls")
        for position, call in enumerate(calls if isinstance(calls, list) else ()):
            if isinstance(call, dict):
                function = call.get("function")
                name, arguments = (
                    (function.get("name"), function.get("arguments")) if isinstance(function, dict) else (None, None)
                )
                # A stream's pieces of one call share its "index"; a whole message lists them in order.
                self._tool_call(index, call.get("index", position), call.get("id"), name, arguments)
        function = message.get("function_call")
        if isinstance(function, dict):
            self._tool_call(index, 0, None, function.get("name"), function.get("arguments"))

    def _tool_call(self, index: Any, position: Any, call_id: Any, name: Any, arguments: Any) -> None:
        if self.text_size >= _MAX_TEXT:
            return
        calls = self.tool_calls.setdefault(index if isinstance(index, int) else 0, {})
        position = position if isinstance(position, int) else len(calls)
        call = calls.get(position)
        if call is None:
            call = calls[position] = ToolCall()
        if isinstance(call_id, str) and call_id:
            call.id = call_id
        if isinstance(name, str) and name:
            call.name = name
        if isinstance(arguments, str) and arguments:
            call.arguments.append(arguments)
            self.text_size += len(arguments)

    def _finish(self, index: Any, reason: Any) -> None:
        if isinstance(reason, str):
            self.finish_reasons[index if isinstance(index, int) else 0] = reason


def ask_for_usage(call_body: dict[str, Any] | None, endpoint: str, stream: bool) -> bool:
    """Whether to request ``stream_options.include_usage`` upstream on the app's behalf:
    for streamed chat and text completions, unless the app set it either way."""
    if not stream or call_body is None or endpoint not in ("chat/completions", "completions"):
        return False
    options = call_body.get("stream_options")
    return not (isinstance(options, dict) and "include_usage" in options)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


class EventScanner:
    """Splits SSE bytes into events as they pass, for :class:`Outcome`.

    Chunks go on to the app as they came. With ``hide_usage`` only whole events go
    on (a partial event waits for its end), minus the usage-only chunk. Only events
    that can carry what is recorded are parsed: ids from the first, then finish
    reasons, usage and terminal events — and every event when the text is kept.
    """

    def __init__(self, outcome: Outcome, hide_usage: bool = False) -> None:
        self._outcome = outcome
        self._hide_usage = hide_usage
        self._buffer = bytearray()
        # Both spellings of each marker ("a":1 and "a": 1) until the first event shows
        # which one this provider writes: searching for half of them is half the cost.
        self._markers = _MARKERS[outcome.endpoint == "responses", True]
        self._spelling_known = False

    def feed(self, chunk: bytes) -> bytes:
        if not self._buffer and chunk.endswith(b"\n\n"):
            complete = chunk  # whole events, as providers mostly send them: no copy
        else:
            self._buffer += chunk
            end = max((i + len(b) for b in _BOUNDARIES if (i := self._buffer.rfind(b)) >= 0), default=0)
            if not end:
                return b"" if self._hide_usage else chunk
            complete = bytes(self._buffer[:end])
            del self._buffer[:end]
        outcome = self._outcome
        markers = self._markers
        if outcome.keep_text or b"\r" in complete:
            dropped = self._read_all(complete, markers)
        elif outcome.response_id is not None and not _marked(complete, markers):
            return chunk if not self._hide_usage else complete  # nothing in these events to read or hide
        else:
            dropped = self._read_marked(complete, markers)
        if not self._hide_usage:
            return chunk
        if not dropped:
            return complete
        kept, at = [], 0
        for start, end in dropped:
            kept.append(complete[at:start])
            at = end
        kept.append(complete[at:])
        return b"".join(kept)

    def _read_marked(self, complete: bytes, markers: tuple[bytes, ...]) -> list[tuple[int, int]]:
        """Parse only the events that hold a marker (and, while the ids are not known,
        each event with data until they are): found with ``bytes.find`` over the whole
        read, so the events in between cost nothing. Returns where the usage-only events
        are, blank line included."""
        dropped: list[tuple[int, int]] = []
        at = 0
        while self._outcome.response_id is None and (found := complete.find(b"data:", at)) >= 0:
            start, end = _around(complete, found)
            if self._parse_in(complete, start, end):
                dropped.append((start, end))
            at = end
        markers = self._markers  # the first event may have shown the provider's spelling
        stop = len(complete)
        if complete.endswith(_DONE_EVENT) and stop - len(_DONE_EVENT) >= at:
            self._outcome.completed = True  # the usual last event, known without a search
            stop -= len(_DONE_EVENT)
            markers = markers[1:]  # [DONE] comes first
        wanted: dict[int, int] = {}  # start → end of each marked event
        for marker in markers:
            found = complete.find(marker, at, stop)
            while found >= 0:
                before = complete.rfind(b"\n\n", at, found)
                end = complete.find(b"\n\n", found) + 2
                wanted[before + 2 if before >= 0 else at] = end
                found = complete.find(marker, end, stop)
        for start in sorted(wanted) if len(wanted) > 1 else wanted:
            if self._parse_in(complete, start, wanted[start]):
                dropped.append((start, wanted[start]))
        return dropped

    def _parse_in(self, complete: bytes, start: int, end: int) -> bool:
        """:meth:`_parse` of the event at ``complete[start:end]`` (blank line included),
        without the copies when it is one ``data: {…}`` line, as chunk events are."""
        if not complete.startswith(b"data: {", start) or complete.find(b"\n", start, end - 2) >= 0:
            return self._parse(complete[start : end - 2])
        return self._take(complete[start + 6 : end - 2])

    def _read_all(self, complete: bytes, markers: tuple[bytes, ...]) -> list[tuple[int, int]]:
        """Every event parsed, in order; blank lines of any kind (``\\r\\n``, ``\\r``)."""
        parts = _SPLIT.split(complete)  # event, separator, event, separator, …, b""
        dropped, at = [], 0
        for event, separator in zip(parts[0:-1:2], parts[1::2], strict=True):
            end = at + len(event) + len(separator)
            if self._read(event, markers):
                dropped.append((at, end))
            at = end
        return dropped

    def close(self) -> bytes:
        """What is left when the stream ends (an event without its blank line)."""
        if not self._buffer:
            return b""  # the stream ended with its last blank line, as streams do
        rest = bytes(self._buffer)
        self._buffer.clear()
        if rest.strip():
            self._read(rest, self._markers)
        return rest if self._hide_usage else b""

    def _read(self, event: bytes, markers: tuple[bytes, ...]) -> bool:
        outcome = self._outcome
        if b"data:" not in event:
            return False
        if not outcome.keep_text and outcome.response_id is not None and not _marked(event, markers):
            return False
        return self._parse(event)

    def _parse(self, event: bytes) -> bool:
        """Read one event's data; True when it is a usage-only chunk (to hide)."""
        outcome = self._outcome
        if event.startswith(b"data:") and b"\n" not in event and b"\r" not in event:
            payload = event[5:].removeprefix(b" ")  # one data line: most events
        else:
            payload = b"\n".join(
                line[5:].removeprefix(b" ") for line in event.splitlines() if line.startswith(b"data:")
            )
        if payload.strip() == b"[DONE]":
            outcome.completed = True
            return False
        return self._take(payload)

    def _take(self, payload: bytes) -> bool:
        """Parse one event's JSON data and take it in; True for a usage-only chunk."""
        try:
            parsed = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return False
        if not self._spelling_known:
            self._learn_spelling(payload)
        return isinstance(parsed, dict) and self._outcome.read_event(parsed)

    def _learn_spelling(self, payload: bytes) -> None:
        if b'":' in payload:  # an event with a key shows the spelling
            self._spelling_known = True
            self._markers = _MARKERS[self._outcome.endpoint == "responses", b'": ' in payload]


def _around(complete: bytes, at: int) -> tuple[int, int]:
    """Start and end (after its blank line) of the ``\\n\\n``-separated event holding ``at``."""
    before = complete.rfind(b"\n\n", 0, at)
    return (before + 2 if before >= 0 else 0), complete.find(b"\n\n", at) + 2


def _marked(data: bytes, markers: tuple[bytes, ...]) -> bool:
    for marker in markers:
        if marker in data:
            return True
    return False


_SPLIT = re.compile(rb"(\r\n\r\n|\n\n|\r\r)")
# What an event must contain to be worth parsing once the ids are known. Substring
# tests, not one regular expression: an alternation without a literal prefix made
# Python's re try every position (44 µs a 12-event stream against ~10 µs).
_CHUNK_MARKERS = (b"[DONE]", b'"usage":{', b'"finish_reason":"', b'"error":{')
_RESPONSE_MARKERS = (b"[DONE]", b"response.completed", b"response.incomplete", b"response.failed", b'"type":"error"')
_DONE_EVENT = b"data: [DONE]\n\n"


def _spaced(markers: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """The markers as JSON written with a space after the colon, added to the compact ones."""
    return markers + tuple(m.replace(b'":', b'": ') for m in markers if b'":' in m)


# By (Responses API?, written with spaces?); both spellings while it is not known yet.
_MARKERS = {
    (False, False): _CHUNK_MARKERS,
    (False, True): _spaced(_CHUNK_MARKERS),
    (True, False): _RESPONSE_MARKERS,
    (True, True): _spaced(_RESPONSE_MARKERS),
}
