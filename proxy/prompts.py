"""Which managed prompt a request gets (SPEC §4), and putting it into the request.

Selection, first match wins: header ``X-Prompt-Name``; model alias ``prompt:NAME``;
the app's system prompt identical to a registered version (zero-code adoption).
The arm comes from sticky hash bucketing of ``X-Prompt-Key`` / ``safety_identifier``
/ ``user`` / the request id. Everything here works on an immutable in-memory
:class:`PromptBook`: no file I/O on the request path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from multidict import CIMultiDictProxy

from flywheel.registry import Arm, MissingVariables, Rollout, Version, assign_arm
from proxy.errors import InvalidRequest, NotFound
from proxy.wire import Call

PROMPT_ENDPOINTS = frozenset(("chat/completions", "responses"))
_ALIAS = "prompt:"
_SYSTEM_ROLES = ("system", "developer")


class PromptNotFound(NotFound):
    code = "prompt_not_found"


@dataclass(frozen=True, slots=True)
class ActivePrompt:
    rollout: Rollout
    stable: Version
    canary: Version | None


@dataclass(frozen=True, slots=True)
class PromptBook:
    """One consistent view of the registry, indexed for per-request lookups."""

    prompts: Mapping[str, ActivePrompt] = field(default_factory=dict)
    # The literal system prompt (edges stripped: a prompt file ends with a newline, the
    # app's string usually does not) → the prompt name.
    by_system_text: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, prompts: Mapping[str, ActivePrompt], versions: Mapping[str, list[Version]]) -> PromptBook:
        index: dict[str, str] = {}
        for name in sorted(versions):  # deterministic when two prompts share a text
            for version in versions[name]:
                system = version.content.system
                if system is not None and not system.variables:
                    index.setdefault(system.text.strip(), name)
        return cls(dict(prompts), index)


@dataclass(frozen=True, slots=True)
class Applied:
    name: str
    version: Version
    arm: Arm

    def headers(self) -> dict[str, str]:
        return {"X-Prompt-Name": self.name, "X-Prompt-Version": self.version.hash, "X-Prompt-Arm": self.arm.value}


def apply_prompt(book: PromptBook, call: Call, headers: CIMultiDictProxy[str]) -> Applied | None:
    """Select, assign and inject; ``None`` leaves the request untouched (still traced)."""
    assert call.body is not None
    name = headers.get("X-Prompt-Name")
    alias = call.model is not None and call.model.startswith(_ALIAS)
    if name is None and alias:
        name = call.model[len(_ALIAS) :]  # type: ignore[index]
    if name is not None:
        active = book.prompts.get(name)
        if active is None:
            raise PromptNotFound(f"No prompt named `{name}` is registered.", param="X-Prompt-Name")
    else:
        text = _app_system_text(call)
        name = book.by_system_text.get(text.strip()) if text is not None else None
        if name is None:
            return None
        active = book.prompts[name]
    key = headers.get("X-Prompt-Key") or _str(call.body.get("safety_identifier")) or _str(call.body.get("user"))
    arm = assign_arm(active.rollout, key or call.request_id)
    version = active.canary if arm is Arm.CANARY and active.canary is not None else active.stable
    _inject(call, version, _variables(headers.get("X-Prompt-Vars")), alias)
    return Applied(name, version, arm)


def _inject(call: Call, version: Version, values: Mapping[str, str], alias: bool) -> None:
    content = version.content
    try:
        rendered = [(role, template.render(values)) for role, template in content.messages]
        system = content.template.render(values) if content.template is not None else None
    except MissingVariables as exc:
        raise InvalidRequest(
            f"Prompt `{version.name}` version {version.hash} needs variables {', '.join(exc.names)}; "
            "send them in the X-Prompt-Vars header as a JSON object.",
            param="X-Prompt-Vars",
        ) from exc
    if call.endpoint == "responses":
        _inject_responses(call, system, rendered)
    else:
        _inject_chat(call, system, rendered)
    if content.model is not None:
        call.set_field("model", content.model)
    elif alias:
        raise InvalidRequest(
            f"Prompt `{version.name}` version {version.hash} sets no model; send a real model, "
            "or select the prompt with the X-Prompt-Name header.",
            param="model",
        )
    for key, value in content.params.items():
        call.set_field(key, value)
    if content.response_schema is not None:
        _inject_schema(call, version)


def _inject_chat(call: Call, system: str | None, rendered: list[tuple[str, str]]) -> None:
    messages = call.body.get("messages") if call.body is not None else None
    if not isinstance(messages, list):
        raise InvalidRequest("`messages` must be a list.", param="messages")
    ours = [{"role": "system", "content": system}] if system is not None else []
    ours += [{"role": role, "content": text} for role, text in rendered]
    app = (
        messages[1:]
        if messages and isinstance(messages[0], dict) and messages[0].get("role") in _SYSTEM_ROLES
        else messages
    )
    if ours + app != messages:
        call.set_field("messages", ours + app)


def _inject_responses(call: Call, system: str | None, rendered: list[tuple[str, str]]) -> None:
    assert call.body is not None
    instructions = system
    extra = []
    for role, text in rendered:
        if instructions is None and role in _SYSTEM_ROLES:
            instructions = text
        else:
            extra.append({"role": role, "content": text})
    if instructions is not None and call.body.get("instructions") != instructions:
        call.set_field("instructions", instructions)
    if extra:
        given = call.body.get("input")
        app = [{"role": "user", "content": given}] if isinstance(given, str) else list(given or [])
        call.set_field("input", extra + app)


def _inject_schema(call: Call, version: Version) -> None:
    assert call.body is not None and version.content.response_schema is not None
    schema = dict(version.content.response_schema)
    if call.endpoint == "responses":
        given = call.body.get("text")
        text: dict[str, Any] = given if isinstance(given, dict) else {}
        call.set_field("text", {**text, "format": {"type": "json_schema", "name": version.name, "schema": schema}})
    else:
        call.set_field(
            "response_format", {"type": "json_schema", "json_schema": {"name": version.name, "schema": schema}}
        )


def _app_system_text(call: Call) -> str | None:
    assert call.body is not None
    if call.endpoint == "responses":
        return _str(call.body.get("instructions"))
    messages = call.body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict):
        return None
    first = messages[0]
    if first.get("role") not in _SYSTEM_ROLES:
        return None
    content = first.get("content")
    if isinstance(content, list):  # content parts: the text parts, joined
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "".join(t for t in texts if isinstance(t, str))
    return _str(content)


def _variables(header: str | None) -> Mapping[str, str]:
    if not header:
        return {}
    try:
        values = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"X-Prompt-Vars is not valid JSON: {exc}", param="X-Prompt-Vars") from exc
    if not isinstance(values, dict):
        raise InvalidRequest("X-Prompt-Vars must be a JSON object of variable names to values.", param="X-Prompt-Vars")
    return {key: value if isinstance(value, str) else orjson.dumps(value).decode() for key, value in values.items()}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
