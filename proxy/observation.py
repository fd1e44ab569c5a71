"""What came back — ids, model, finish reasons, usage, output text and tool calls — read
from a JSON answer or from a stream's events (split out of the stream as it passes by
:mod:`proxy.event_scanner`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

_MAX_TEXT = 1024 * 1024  # output kept for evaluation and content capture, per call
_RESPONSE_DONE = frozenset(("response.completed", "response.incomplete", "response.failed"))


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
    cache_creation_input_tokens: int | None = None  # of the input tokens, written to it (Anthropic's)
    reasoning_output_tokens: int | None = None  # of the output tokens, spent reasoning
    service_tier: str | None = None
    system_fingerprint: str | None = None
    embedding_size: int | None = None  # dimensions of the (first) embedding returned
    texts: dict[int, list[str]] = field(default_factory=dict)
    reasoning: dict[int, list[str]] = field(default_factory=dict)  # reasoning_content (DeepSeek, vLLM…)
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
                self._reasoning(index, message)
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
                    self._message_tool_calls(index, delta, streamed=True)
                    self._reasoning(index, delta)
            if (reason := choice.get("finish_reason")) is not None:
                self._finish(index, reason)
        usage = event.get("usage")
        if usage is None:
            return False
        self._usage(usage)
        return not choices and isinstance(usage, dict)

    def stream_ended(self) -> None:
        """The provider ended its stream cleanly. Some OpenAI-compatible servers send no
        ``[DONE]``: an answer whose every choice has its finish reason is whole all the same."""
        if self.completed or not self.finish_reasons or self.endpoint == "responses":
            return
        self.completed = set(self.texts).union(self.tool_calls) <= self.finish_reasons.keys()

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
        if isinstance(details, dict):
            if isinstance(cached := details.get("cached_tokens"), int):
                self.cached_input_tokens = cached
            # litellm's OpenAI shape of Anthropic's usage: writes beside reads
            if isinstance(written := details.get("cache_creation_tokens"), int):
                self.cache_creation_input_tokens = written
        details = usage.get("completion_tokens_details", usage.get("output_tokens_details"))
        if isinstance(details, dict) and isinstance(reasoning := details.get("reasoning_tokens"), int):
            self.reasoning_output_tokens = reasoning

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

    def _reasoning(self, index: Any, message: dict[str, Any]) -> None:
        """A reasoning model's thinking, where OpenAI-compatible servers put it (vLLM and
        DeepSeek: ``reasoning_content``; OpenRouter and newer vLLM: ``reasoning``)."""
        text = message.get("reasoning_content") or message.get("reasoning")
        if isinstance(text, str) and text and self.text_size < _MAX_TEXT:
            self.reasoning.setdefault(index if isinstance(index, int) else 0, []).append(text)
            self.text_size += len(text)

    def _message_tool_calls(self, index: Any, message: dict[str, Any], streamed: bool = False) -> None:
        """A message's (or a stream delta's) ``tool_calls``, and the older ``function_call``."""
        calls = message.get("tool_calls")
        for position, call in enumerate(calls if isinstance(calls, list) else ()):
            if isinstance(call, dict):
                function = call.get("function")
                name, arguments = (
                    (function.get("name"), function.get("arguments")) if isinstance(function, dict) else (None, None)
                )
                # A stream's pieces of one call share its "index"; a whole message lists them in order.
                given = call.get("index")
                if not isinstance(given, int):
                    given = self._unindexed(index, call.get("id")) if streamed else position
                self._tool_call(index, given, call.get("id"), name, arguments)
        function = message.get("function_call")
        if isinstance(function, dict):
            self._tool_call(index, 0, None, function.get("name"), function.get("arguments"))

    def _unindexed(self, index: Any, call_id: Any) -> int:
        """Where a streamed piece without an ``index`` goes (Gemini sends none): a new id
        opens the next call, a piece without one continues the last."""
        calls = self.tool_calls.get(index if isinstance(index, int) else 0)
        if not calls:
            return 0
        last = max(calls)
        known = calls[last].id
        return last + 1 if isinstance(call_id, str) and call_id and known and known != call_id else last

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
