"""Candidate prompts from the optimizer model: a reflective rewrite of the parent.

The meta-prompt shows the parent prompt, the mined failures with the users' feedback
and corrections, and — from the second round on — how the previous candidates did on
the gate, and asks for JSON ``{"rationale", "prompt"}`` (GEPA/ProTeGi-style: failures and
feedback text in, a targeted rewrite out). A candidate that drops or adds a
``{{variable}}`` of the parent is rejected: the app sends the parent's variables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from flywheel.registry import Template
from optimizer.llm import LLM, Model, ModelError
from optimizer.mining import Failure
from optimizer.records import as_text

SYSTEM = (
    "You improve system prompts for an LLM feature in production. You get the current prompt, "
    "examples where it failed with what users said, and sometimes how earlier rewrites fared. "
    "Write one improved system prompt that fixes these failures without breaking what works. "
    "Keep every {{variable}} placeholder exactly as it is and add none. "
    'Answer with JSON only: {"rationale": "<what you changed and why>", "prompt": "<the new system prompt>"}.'
)


@dataclass(frozen=True, slots=True)
class Candidate:
    prompt: str
    rationale: str
    round: int


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str
    round: int


def meta_prompt(parent: str, failures: list[Failure], previous: list[str]) -> list[dict[str, Any]]:
    lines = ["# Current prompt", parent, "", "# Failures"]
    for number, failure in enumerate(failures, 1):
        lines.append(f"## Failure {number}: {', '.join(sorted(failure.kinds))}")
        if failure.call.input_messages:
            lines.append("Input: " + _brief(_message_text(failure.call.input_messages)))
        answer = failure.call.output_text or _message_text(failure.call.output_messages or ())
        if answer:
            lines.append("Answer: " + _brief(answer))
        for feedback in failure.feedback:
            if feedback.comment:
                lines.append("User said: " + _brief(feedback.comment))
            if feedback.correction:
                lines.append("Correct answer: " + _brief(feedback.correction))
    if previous:
        lines += ["", "# Earlier rewrites and how they did on the test set", *previous]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


async def propose(
    llm: LLM, model: Model, parent: str, failures: list[Failure], previous: list[str], count: int, round_: int
) -> list[Candidate | Rejected]:
    """``count`` candidates (or why each was rejected)."""
    messages = meta_prompt(parent, failures, previous)
    params = {"temperature": 1.0, "response_format": {"type": "json_object"}}
    out: list[Candidate | Rejected] = []
    for _ in range(count):
        try:
            answer = await llm.complete(model, messages, params)
        except ModelError as exc:
            out.append(Rejected(f"optimizer model failed: {exc}", round_))
            continue
        out.append(parse_candidate(answer.text, parent, round_))
    return out


def parse_candidate(text: str, parent: str, round_: int) -> Candidate | Rejected:
    try:
        data = orjson.loads(_strip_fence(text))
    except orjson.JSONDecodeError:
        return Rejected("the answer was not JSON", round_)
    if not isinstance(data, dict) or not isinstance(data.get("prompt"), str) or not data["prompt"].strip():
        return Rejected('the answer had no "prompt" string', round_)
    prompt = data["prompt"].strip()
    wanted, got = Template.parse(parent).variables, Template.parse(prompt).variables
    if wanted != got:
        missing, extra = sorted(wanted - got), sorted(got - wanted)
        return Rejected(f"variables changed (missing {missing}, added {extra})", round_)
    if prompt == parent.strip():
        return Rejected("the same prompt as the parent", round_)
    return Candidate(prompt, str(data.get("rationale", "")), round_)


def _strip_fence(text: str) -> str:
    text = text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    return text


def _message_text(messages: tuple[Any, ...]) -> str:
    texts = []
    for message in messages:
        for part in message.get("parts", []) if isinstance(message, dict) else []:
            text = _part_text(part) if isinstance(part, dict) else None
            if text is not None:
                texts.append(f"[{message.get('role')}] {text}")
    return " ".join(texts)


def _part_text(part: dict[str, Any]) -> str | None:
    """Text as it is; an agent's tool calls and the tools' answers as one line each, so
    that the optimizer model sees what the agent did."""
    kind = part.get("type")
    if kind == "tool_call":
        return f"calls {part.get('name')}({as_text(part.get('arguments'))})"
    if kind == "tool_call_response":
        return f"tool answered {as_text(part.get('response'))}"
    if kind == "reasoning":
        return f"thought {part.get('content')}"
    content = part.get("content")
    return content if isinstance(content, str) else None


def _brief(text: str, limit: int = 600) -> str:
    return text if len(text) <= limit else text[:limit] + " …"
