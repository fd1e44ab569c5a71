"""Message content on spans (``--capture-content``), in the GenAI conventions' shape.

Off by default. ``full`` records content as sent, except credentials; ``redacted``
also masks emails and card numbers (:mod:`proxy.masking`). In every mode credentials —
keys by their look, the request's own credential and the sidecar's configured keys —
are masked wherever they appear: credentials never reach a span.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from proxy.masking import MASK, mask_credentials, redact

if TYPE_CHECKING:
    from proxy.observation import Outcome


class CaptureContent(enum.StrEnum):
    NONE = "none"
    REDACTED = "redacted"
    FULL = "full"


MAX_CAPTURED = 1024 * 1024  # characters of content per attribute, as the output keeps at most
TRUNCATED = "[truncated]"
_MASK_PAST_CUT = 8192  # longer than any key, token or JWT masked whole
_WORD = 256  # characters of a role, type, name or id
_PART = 32  # room a part takes beside its text (its JSON), so that many small parts run out too


@dataclass(slots=True)
class _Writing:
    """One attribute being written: whose credential to mask, and the room left in it."""

    credential: str | None
    room: int = MAX_CAPTURED


class ContentRecorder:
    """Turns request and answer content into span attribute values for one mode."""

    def __init__(self, mode: CaptureContent, secrets: Iterable[str] = ()) -> None:
        self.mode = mode
        self._secrets = tuple(s for s in secrets if len(s) >= 8)

    @property
    def enabled(self) -> bool:
        return self.mode is not CaptureContent.NONE

    def clean(self, text: str, credential: str | None = None) -> str:
        text = self._mask_secrets(text, credential)
        return redact(text) if self.mode is CaptureContent.REDACTED else mask_credentials(text)

    def clean_comment(self, text: str, credential: str | None = None) -> str:
        """Feedback comments are recorded in every mode, redacted unless content is ``full``."""
        text = self._mask_secrets(text, credential)
        return mask_credentials(text) if self.mode is CaptureContent.FULL else redact(text)

    def _mask_secrets(self, text: str, credential: str | None) -> str:
        for secret in (*self._secrets, *((credential,) if credential and len(credential) >= 8 else ())):
            text = text.replace(secret, MASK)
        return text

    def _text(self, text: str, w: _Writing) -> str:
        """``text`` masked, within what is left of the attribute's room: a text that does
        not fit is cut, and texts after it are only the mark."""
        if len(text) + _PART < w.room:
            w.room -= len(text) + _PART
            return self.clean(text, w.credential)
        cut, w.room = w.room, 0
        return self._cut(text, cut, w.credential)

    def _cut(self, text: str, at: int, credential: str | None) -> str:
        """The first ``at`` characters of ``text``, masked a little past the cut first (no
        key across it is left half-seen), and the mark."""
        if at == 0:
            return TRUNCATED
        return self.clean(text[: at + _MASK_PAST_CUT], credential)[:at] + TRUNCATED

    def input_messages(self, endpoint: str, body: dict[str, Any], credential: str | None) -> tuple[str, str | None]:
        """(``gen_ai.input.messages``, ``gen_ai.system_instructions`` or None) as JSON strings."""
        w = _Writing(credential)
        system: list[dict[str, Any]] = []
        messages: list[dict[str, Any]] = []
        if endpoint == "responses":
            if isinstance(body.get("instructions"), str):
                system.append(_text_part(self._text(body["instructions"], w)))
            given = body.get("input")
            items = [{"role": "user", "content": given}] if isinstance(given, str) else given or []
        elif endpoint == "completions":
            items = [{"role": "user", "content": body.get("prompt")}]
        elif endpoint == "embeddings":
            items = [{"role": "user", "content": body.get("input")}]
        else:
            items = body.get("messages") or []
        for item in items if isinstance(items, list) else []:
            if w.room == 0:
                break  # the last message's text ends with the mark
            if isinstance(item, dict):
                messages.append(self._message(item, w))
        instructions = orjson.dumps(system).decode() if system else None
        return orjson.dumps(messages).decode(), instructions

    def tool_definitions(self, body: dict[str, Any], credential: str | None) -> str | None:
        """``gen_ai.tool.definitions`` as a JSON string, None when the call offers no tools.

        Chat nests a function under ``function``, the Responses API does not, and chat's older
        ``functions`` has no wrapper; all become the conventions' flat ``{type, name,
        description, parameters}``. Built-in tools (``{"type": "web_search"}``) are named by
        their type. Everything is masked like content: descriptions are the app's text.
        """
        given = body.get("tools")
        tools = list(given) if isinstance(given, list) else []
        legacy = body.get("functions")
        if isinstance(legacy, list):
            tools += [{"type": "function", "function": f} for f in legacy if isinstance(f, dict)]
        w = _Writing(credential)
        definitions = [self._tool_definition(tool, w) for tool in tools if isinstance(tool, dict)]
        return orjson.dumps(definitions).decode() if definitions else None

    def _tool_definition(self, tool: dict[str, Any], w: _Writing) -> dict[str, Any]:
        kind = self._word(tool.get("type", "function"), w)
        nested = tool.get("function")
        spec = nested if isinstance(nested, dict) else tool
        name = spec.get("name")
        definition: dict[str, Any] = {
            "type": kind,
            "name": self._word(name, w) if isinstance(name, str) else kind,
        }
        if isinstance(spec.get("description"), str):
            definition["description"] = self._text(spec["description"], w)
        if spec.get("parameters") is not None:
            definition["parameters"] = self._json_or_text(spec["parameters"], w)
        return definition

    def output_messages(self, outcome: Outcome, credential: str | None) -> str:
        """``gen_ai.output.messages``: per choice its reasoning, text and tool calls."""
        texts, reasoning, tool_calls, finish_reasons = (
            outcome.texts,
            outcome.reasoning,
            outcome.tool_calls,
            outcome.finish_reasons,
        )
        w = _Writing(credential)
        out = []
        for index in sorted(set(texts) | set(reasoning) | set(tool_calls) | set(finish_reasons)):
            parts = []
            if index in reasoning:
                parts.append({"type": "reasoning", "content": self._text("".join(reasoning[index]), w)})
            if index in texts:
                parts.append(_text_part(self._text("".join(texts[index]), w)))
            for _, call in sorted(tool_calls.get(index, {}).items()):
                parts.append(self._tool_call(call.id, call.name, "".join(call.arguments), w))
            out.append({"role": "assistant", "parts": parts, "finish_reason": finish_reasons.get(index, "")})
        return orjson.dumps(out).decode()

    def _message(self, item: dict[str, Any], w: _Writing) -> dict[str, Any]:
        """One chat message or Responses API input item as ``{role, parts}``."""
        kind = item.get("type")
        if kind == "function_call":  # Responses API items: the model's call, and the app's answer
            call = self._tool_call(item.get("call_id"), item.get("name"), item.get("arguments"), w)
            return {"role": "assistant", "parts": [call]}
        if kind == "function_call_output":
            return {"role": "tool", "parts": [self._tool_response(item.get("call_id"), item.get("output"), w)]}
        if kind == "reasoning":  # a reasoning model's earlier thinking: its summary (never the encrypted blob)
            summary = [p.get("text") for p in _list(item.get("summary")) if isinstance(p, dict)]
            text = "".join(t for t in summary if isinstance(t, str))
            return {"role": "assistant", "parts": [{"type": "reasoning", "content": self._text(text, w)}]}
        if isinstance(kind, str) and kind != "message" and "role" not in item:
            # The model's other items (web_search_call, computer_call…) and references: the kind only
            return {"role": "assistant", "parts": [{"type": self._word(kind, w)}]}
        role = self._word(item.get("role", "user"), w)
        if role in ("tool", "function"):
            return {
                "role": role,
                "parts": [self._tool_response(item.get("tool_call_id"), item.get("content"), w)],
            }
        parts = self._parts(item.get("content"), w)
        calls = item.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                part = self._tool_call(call.get("id"), function.get("name"), function.get("arguments"), w)
                if isinstance(extra := call.get("extra_content"), dict):
                    # Gemini's OpenAI-compatible API: the call's thought signature, which Gemini 3
                    # refuses a replayed tool turn without (the gate sends it back)
                    part["extra_content"] = self._json_or_text(extra, w)
                parts.append(part)
        function = item.get("function_call")
        if isinstance(function, dict):
            parts.append(self._tool_call(None, function.get("name"), function.get("arguments"), w))
        return {"role": role, "parts": parts}

    def _parts(self, content: Any, w: _Writing) -> list[dict[str, Any]]:
        if isinstance(content, str):
            return [_text_part(self._text(content, w))]
        parts = []
        for part in content if isinstance(content, list) else []:
            if w.room == 0:
                break
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(_text_part(self._text(part["text"], w)))
            elif isinstance(part, dict):
                parts.append({"type": self._word(part.get("type", "unknown"), w)})  # images, audio: the kind only
            elif isinstance(part, str | int):
                parts.append(_text_part(self._text(str(part), w)))
        return parts

    def _tool_call(self, call_id: Any, name: Any, arguments: Any, w: _Writing) -> dict[str, Any]:
        """The conventions' ``tool_call`` part; arguments as the JSON they are, when they are."""
        return {
            "type": "tool_call",
            "id": self._word(call_id, w) if isinstance(call_id, str) else None,
            "name": self._word(name, w) if isinstance(name, str) else "",
            "arguments": self._json_or_text(arguments, w),
        }

    def _tool_response(self, call_id: Any, response: Any, w: _Writing) -> dict[str, Any]:
        if isinstance(response, list):  # content parts: their text
            response = "".join(str(p.get("text", "")) for p in response if isinstance(p, dict))
        return {
            "type": "tool_call_response",
            "id": self._word(call_id, w) if isinstance(call_id, str) else None,
            "response": self._json_or_text(response, w),
        }

    def _word(self, value: Any, w: _Writing) -> str:
        """A role, a part's type, a tool's or a call's name or id: the app's to choose, so
        masked like content, but short and outside the content's room (so that the
        messages keep their shape when the content is cut)."""
        text = value if isinstance(value, str) else str(value)
        return self.clean(text, w.credential) if len(text) <= _WORD else self._cut(text, _WORD, w.credential)

    def _json_or_text(self, value: Any, w: _Writing) -> Any:
        """Masked as text first, so nothing escapes the masks; then parsed back when it is
        still JSON (a mask inside a string keeps it so)."""
        if value is None:
            return None
        text = self._text(value if isinstance(value, str) else orjson.dumps(value).decode(), w)
        if not text.startswith(("{", "[")):
            return text
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return text


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "content": text}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
