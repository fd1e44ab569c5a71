"""Prompt files and immutable versions, identified by the hash of their canonical JSON."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import orjson

from flywheel.registry.errors import CorruptRegistry, InvalidPrompt
from flywheel.registry.template import Template

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
HASH_LENGTH = 12
AUTHORS = ("human", "optimizer")
_ROLES = ("system", "developer", "user", "assistant")
_FIELDS = ("template", "messages", "model", "params", "response_schema", "notes")
# What a version may not override: the request's own structure.
_RESERVED_PARAMS = frozenset(("messages", "input", "instructions", "model", "stream", "prompt"))


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise InvalidPrompt(f"invalid prompt name {name!r}: use letters, digits, '-' and '_' (at most 100)")
    return name


@dataclass(frozen=True, slots=True)
class PromptContent:
    """What a prompt file says; the unit that is hashed, tested and served."""

    template: Template | None = None
    messages: tuple[tuple[str, Template], ...] = ()  # (role, content) pairs
    model: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    response_schema: Mapping[str, Any] | None = None
    notes: str | None = None

    @property
    def variables(self) -> frozenset[str]:
        found = set(self.template.variables) if self.template else set()
        for _, content in self.messages:
            found |= content.variables
        return frozenset(found)

    @property
    def system(self) -> Template | None:
        """The system prompt: the template, or the first system/developer message."""
        if self.template is not None:
            return self.template
        for role, content in self.messages:
            if role in ("system", "developer"):
                return content
        return None

    def canonical(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.template is not None:
            out["template"] = self.template.text
        if self.messages:
            out["messages"] = [{"role": role, "content": content.text} for role, content in self.messages]
        if self.model is not None:
            out["model"] = self.model
        if self.params:
            out["params"] = dict(self.params)
        if self.response_schema is not None:
            out["response_schema"] = dict(self.response_schema)
        if self.notes is not None:
            out["notes"] = self.notes
        return out


def content_hash(content: PromptContent) -> str:
    canonical = orjson.dumps(content.canonical(), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:HASH_LENGTH]


def parse_prompt_file(path: Path) -> PromptContent:
    """TOML or JSON with the fields of SPEC §3, or any other file as a plain template."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidPrompt(f"{path}: cannot read: {exc}") from exc
    try:
        if path.suffix == ".toml":
            return content_from_mapping(tomllib.loads(text), str(path))
        if path.suffix == ".json":
            data = json.loads(text)
            if not isinstance(data, dict):
                raise InvalidPrompt(f"{path}: expected a JSON object")
            return content_from_mapping(data, str(path))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise InvalidPrompt(f"{path}: {exc}") from exc
    if not text.strip():
        raise InvalidPrompt(f"{path}: the template is empty")
    return PromptContent(template=Template.parse(text))


def content_from_mapping(data: Mapping[str, Any], where: str = "prompt") -> PromptContent:
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise InvalidPrompt(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(_FIELDS)}")
    template, messages = data.get("template"), data.get("messages")
    if (template is None) == (messages is None):
        raise InvalidPrompt(f"{where}: give exactly one of `template` or `messages`")
    if template is not None and (not isinstance(template, str) or not template.strip()):
        raise InvalidPrompt(f"{where}: `template` must be a non-empty string")
    return PromptContent(
        template=Template.parse(template) if template is not None else None,
        messages=_messages(messages, where) if messages is not None else (),
        model=_optional(data, "model", str, where),
        params=_params(data.get("params"), where),
        response_schema=_schema(data.get("response_schema"), where),
        notes=_optional(data, "notes", str, where),
    )


def _messages(value: Any, where: str) -> tuple[tuple[str, Template], ...]:
    if not isinstance(value, list) or not value:
        raise InvalidPrompt(f"{where}: `messages` must be a non-empty list")
    out = []
    for i, message in enumerate(value):
        if (
            not isinstance(message, dict)
            or message.get("role") not in _ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise InvalidPrompt(f"{where}: messages[{i}] needs a role ({'/'.join(_ROLES)}) and string content")
        out.append((message["role"], Template.parse(message["content"])))
    return tuple(out)


def _optional(data: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = data.get(key)
    if value is not None and not isinstance(value, kind):
        raise InvalidPrompt(f"{where}: `{key}` must be a {kind.__name__}")
    return value


def _params(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidPrompt(f"{where}: `params` must be a table/object (temperature, max_tokens, …)")
    reserved = sorted(_RESERVED_PARAMS & set(value))
    if reserved:
        raise InvalidPrompt(f"{where}: `params` may not set {', '.join(reserved)}")
    return dict(value)


def _schema(value: Any, where: str) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidPrompt(f"{where}: `response_schema` must be a JSON Schema object")
    try:
        jsonschema.validators.validator_for(value).check_schema(value)
    except jsonschema.SchemaError as exc:
        raise InvalidPrompt(f"{where}: `response_schema` is not a valid JSON Schema: {exc.message}") from exc
    return dict(value)


@dataclass(frozen=True, slots=True)
class Version:
    """One immutable prompt version as stored: content plus provenance."""

    name: str
    hash: str
    content: PromptContent
    parent: str | None
    author: str
    created: str  # RFC 3339, UTC
    lineage: Mapping[str, Any] = field(default_factory=dict)  # failures and report that produced it

    def to_json(self) -> bytes:
        record = {
            "name": self.name,
            "hash": self.hash,
            "content": self.content.canonical(),
            "parent": self.parent,
            "author": self.author,
            "created": self.created,
            "lineage": dict(self.lineage),
        }
        return orjson.dumps(record, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Version:
        try:
            record = orjson.loads(data)
            content = content_from_mapping(record["content"], where)
            version = cls(
                name=check_name(record["name"]),
                hash=record["hash"],
                content=content,
                parent=record.get("parent"),
                author=record.get("author", "human"),
                created=record.get("created", ""),
                lineage=record.get("lineage") or {},
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, InvalidPrompt) as exc:
            raise CorruptRegistry(f"{where}: {exc}") from exc
        if content_hash(content) != version.hash:
            raise CorruptRegistry(f"{where}: content does not match its hash {version.hash}")
        return version
