"""The golden set (JSONL) and the expectations a replayed answer is held to.

One case per line::

    {"id": "refund-1", "messages": [{"role": "user", "content": "…"}], "vars": {"product": "Acme"},
     "expect": {"schema": {…}}}

``tools`` (optional) are the chat API's tool definitions, offered to the model as the app
offers them, so that a conversation with tool calls in it can be replayed.

``expect`` is one of ``{"exact": str}``, ``{"contains": str}``, ``{"regex": str}``,
``{"schema": JSON Schema}``, ``{"judge": rubric}`` (an LLM judge answers pass or fail),
or ``{"ok": true}`` (any answer without an error).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import orjson

KINDS = ("exact", "contains", "regex", "schema", "judge", "ok")

Judge = Callable[[str, list[dict[str, Any]], str], Awaitable[bool]]  # rubric, messages, answer → pass


class GoldenError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Expectation:
    kind: str
    value: Any

    async def check(self, answer: str | None, messages: list[dict[str, Any]], judge: Judge | None) -> bool:
        if answer is None:
            return False
        if self.kind == "ok":
            return True
        if self.kind == "exact":
            return answer.strip() == str(self.value).strip()
        if self.kind == "contains":
            return str(self.value).lower() in answer.lower()
        if self.kind == "regex":
            return re.search(self.value, answer) is not None
        if self.kind == "schema":
            try:
                return bool(jsonschema.validators.validator_for(self.value)(self.value).is_valid(orjson.loads(answer)))
            except orjson.JSONDecodeError:
                return False
        if judge is None:
            raise GoldenError("a judge expectation needs a judge model")
        return await judge(str(self.value), messages, answer)


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    messages: tuple[Mapping[str, Any], ...]
    vars: Mapping[str, str] = field(default_factory=dict)
    expect: Expectation = Expectation("ok", True)
    source: str = "golden"  # or "failure": a mined production failure
    tools: tuple[Mapping[str, Any], ...] = ()  # chat API tool definitions, sent as `tools`


def load_golden(path: Path) -> list[Case]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise GoldenError(f"{path}: {exc.strerror}") from exc
    cases = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            cases.append(_case(line, f"{path}:{number}"))
    if not cases:
        raise GoldenError(f"{path}: no cases")
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        raise GoldenError(f"{path}: case ids repeat")
    return cases


def _case(line: str, where: str) -> Case:
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise GoldenError(f"{where}: not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise GoldenError(f"{where}: expected a JSON object")
    messages = data.get("messages", [])
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise GoldenError(f"{where}: `messages` must be a list of {{role, content}}")
    variables = data.get("vars", {})
    if not isinstance(variables, dict):
        raise GoldenError(f"{where}: `vars` must be an object")
    expect = data.get("expect")
    if not isinstance(expect, dict) or len(expect) != 1 or next(iter(expect)) not in KINDS:
        raise GoldenError(f'{where}: `expect` must be one of {", ".join(KINDS)}, e.g. {{"contains": "refund"}}')
    tools = data.get("tools", [])
    if not isinstance(tools, list) or not all(_is_tool(t) for t in tools):
        raise GoldenError(
            f'{where}: `tools` must be a list of {{"type": "function", "function": {{"name": …, "parameters": …}}}}'
        )
    kind, value = next(iter(expect.items()))
    if kind == "regex":
        try:
            re.compile(value)
        except (re.error, TypeError) as exc:
            raise GoldenError(f"{where}: bad regex: {exc}") from exc
    if kind == "schema":
        try:
            jsonschema.validators.validator_for(value).check_schema(value)
        except jsonschema.SchemaError as exc:
            raise GoldenError(f"{where}: bad schema: {exc.message}") from exc
    return Case(
        id=str(data.get("id") or where),
        messages=tuple(messages),
        vars={k: v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in variables.items()},
        expect=Expectation(kind, value),
        tools=tuple(tools),
    )


def _is_tool(tool: Any) -> bool:
    function = tool.get("function") if isinstance(tool, dict) else None
    return isinstance(function, dict) and isinstance(function.get("name"), str) and bool(function["name"])
