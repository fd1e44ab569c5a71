"""What the optimizer reads from a span: a proxied call or a piece of feedback.

Both span sources (the OTLP-JSON files and ClickHouse ``otel_traces``) are turned
into these two records, so mining never depends on where the spans came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

FEEDBACK_SPAN = "gen_ai.evaluation.result"
_TRUE = (True, "true", "True", "1", 1)


@dataclass(frozen=True, slots=True)
class CallRecord:
    request_id: str
    prompt: str
    version: str
    arm: str
    model: str
    error_type: str | None
    schema_valid: bool | None
    input_json: str | None  # gen_ai.input.messages as recorded; None: content was not captured
    output_json: str | None
    time_ns: int = 0
    duration_s: float = 0.0
    cost_usd: float | None = None
    tools_json: str | None = None  # gen_ai.tool.definitions: the tools the call offered

    # Parsed on demand: mining reads a million calls and looks at the content of a few.
    @property
    def input_messages(self) -> tuple[Any, ...] | None:
        return _messages(self.input_json)

    @property
    def tool_definitions(self) -> tuple[Any, ...]:
        return _messages(self.tools_json) or ()

    @property
    def output_messages(self) -> tuple[Any, ...] | None:
        return _messages(self.output_json)

    @property
    def output_text(self) -> str | None:
        return _output_text(self.output_json)


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    """A ``gen_ai.evaluation.result``: the user's feedback, or another evaluator's verdict."""

    request_id: str
    name: str  # "user_feedback", or the evaluator's name
    score: float
    label: str | None
    comment: str | None
    correction: str | None

    @property
    def negative(self) -> bool:
        return self.label == "down" or self.score < 0.5


def from_attributes(
    name: str, attributes: Mapping[str, Any], time_ns: int = 0, end_ns: int = 0
) -> CallRecord | FeedbackRecord | None:
    """The record a span stands for; None for spans the optimizer has no use for.

    Attribute values may be typed (OTLP) or strings (ClickHouse stores every value as one).
    """
    request_id = attributes.get("flywheel.request_id")
    if not isinstance(request_id, str) or not request_id:
        return None
    if name == FEEDBACK_SPAN:
        return FeedbackRecord(
            request_id=request_id,
            name=str(attributes.get("gen_ai.evaluation.name") or "user_feedback"),
            score=float(attributes.get("gen_ai.evaluation.score.value", 0.0)),
            label=_text(attributes.get("gen_ai.evaluation.score.label")),
            comment=_text(attributes.get("gen_ai.evaluation.explanation")),
            correction=_text(attributes.get("flywheel.feedback.correction")),
        )
    prompt = _text(attributes.get("gen_ai.prompt.name"))
    if prompt is None or "gen_ai.operation.name" not in attributes:
        return None
    valid = attributes.get("flywheel.eval.schema_valid")
    return CallRecord(
        request_id=request_id,
        prompt=prompt,
        version=str(attributes.get("gen_ai.prompt.version", "")),
        arm=str(attributes.get("flywheel.prompt.arm", "")),
        model=str(attributes.get("gen_ai.response.model") or attributes.get("gen_ai.request.model") or ""),
        error_type=_text(attributes.get("error.type")),
        schema_valid=None if valid is None or valid == "" else valid in _TRUE,
        input_json=_text(attributes.get("gen_ai.input.messages")),
        output_json=_text(attributes.get("gen_ai.output.messages")),
        time_ns=time_ns,
        duration_s=max(0, end_ns - time_ns) / 1e9 if end_ns else 0.0,
        cost_usd=float(attributes["flywheel.cost.usd"])
        if attributes.get("flywheel.cost.usd") not in (None, "")
        else None,
        tools_json=_text(attributes.get("gen_ai.tool.definitions")),
    )


def as_text(value: Any) -> str:
    """Tool arguments and answers were recorded as the JSON they were; chat takes strings."""
    if value is None:
        return ""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _messages(value: Any) -> tuple[Any, ...] | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return tuple(parsed) if isinstance(parsed, list) else None


def _output_text(value: Any) -> str | None:
    messages = _messages(value)
    if not messages:
        return None
    parts = messages[0].get("parts", []) if isinstance(messages[0], dict) else []
    return "".join(p.get("content", "") for p in parts if isinstance(p, dict) and p.get("type") == "text")
