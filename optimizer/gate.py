"""The regression gate: replay the golden set and the mined failures against the parent
and a candidate, then decide with paired exact tests (McNemar on the discordant pairs).

A candidate passes when, at the stated confidence, it fixes the mined failures (more
fixed than broken, one-sided exact p ≤ alpha; with no replayable failures it must
improve the golden set instead) and does not regress the golden set (no more cases
broken than fixed, and the one-sided p of "worse" above alpha).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from flywheel.registry import Template, Version
from optimizer.golden import Case, Expectation, Judge
from optimizer.llm import LLM, Model, ModelError
from optimizer.mining import Failure, FailureKind
from optimizer.records import as_text

ALPHA = 0.05


@dataclass(frozen=True, slots=True)
class Outcome:
    passed: bool
    answer: str | None
    input_tokens: int = 0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: Case
    parent: Outcome
    candidate: Outcome


@dataclass(frozen=True, slots=True)
class Paired:
    """Counts over paired outcomes: fixed = parent failed, candidate passed; broken = the reverse."""

    cases: int
    parent_passed: int
    candidate_passed: int
    fixed: int
    broken: int

    @property
    def p_better(self) -> float:
        return binomial_tail(self.fixed, self.fixed + self.broken)

    @property
    def p_worse(self) -> float:
        return binomial_tail(self.broken, self.fixed + self.broken)


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    reason: str
    golden: Paired
    failures: Paired
    results: list[CaseResult] = field(default_factory=list)
    candidate_input_tokens: int = 0


def binomial_tail(k: int, n: int) -> float:
    """P(X ≥ k) for X ~ Binomial(n, 1/2): the exact one-sided McNemar p-value."""
    if n == 0:
        return 1.0
    return float(sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n)


def failure_cases(failures: Sequence[Failure], version: Version) -> list[Case]:
    """Mined failures that can be replayed (their input was captured), with what would fix them."""
    cases = []
    for failure in failures:
        messages = _openai_messages(failure.call.input_messages)
        if messages is None:
            continue
        tools = _openai_tools(failure.call.tool_definitions)
        case_id = f"failure:{failure.call.request_id}"
        cases.append(Case(case_id, tuple(messages), {}, _fixed_when(failure, version), "failure", tools))
    return cases


def _fixed_when(failure: Failure, version: Version) -> Expectation:
    feedback = [f for f in failure.feedback if f.comment or f.correction]
    if feedback:
        said = "; ".join(filter(None, (f.comment for f in feedback)))
        correct = "; ".join(filter(None, (f.correction for f in feedback)))
        rubric = f"A user rejected an earlier answer to this conversation. They said: {said or '(nothing)'}."
        if correct:
            rubric += f" The correct answer is: {correct}."
        return Expectation("judge", rubric + " Pass the answer only if it does not have that problem.")
    if FailureKind.SCHEMA_INVALID in failure.kinds and version.content.response_schema is not None:
        return Expectation("schema", dict(version.content.response_schema))
    return Expectation("ok", True)


def _openai_messages(parts_messages: tuple[Any, ...] | None) -> list[dict[str, Any]] | None:
    """The conventions' {role, parts} back into chat messages, without the system prompt under
    test; an agent's tool calls and their answers as chat tool calls and ``tool`` messages."""
    if not parts_messages:
        return None
    out: list[dict[str, Any]] = []
    for message in parts_messages:
        if not isinstance(message, dict) or message.get("role") in ("system", "developer"):
            continue
        parts = [p for p in message.get("parts", []) if isinstance(p, dict)]
        responses = [p for p in parts if p.get("type") == "tool_call_response"]
        if responses:
            out += [
                {"role": "tool", "tool_call_id": p.get("id") or "", "content": as_text(p.get("response"))}
                for p in responses
            ]
            continue
        text = "".join(p.get("content", "") for p in parts if p.get("type") == "text")
        calls = [_chat_tool_call(i, p) for i, p in enumerate(parts) if p.get("type") == "tool_call"]
        if not text and not calls:
            continue  # reasoning, images, a model's built-in tool items: nothing chat can replay
        chat: dict[str, Any] = {"role": message.get("role", "user"), "content": text or None}
        if calls:
            chat["tool_calls"] = calls
        out.append(chat)
    return out or None


def _chat_tool_call(position: int, part: dict[str, Any]) -> dict[str, Any]:
    call: dict[str, Any] = {
        "id": part.get("id") or f"call_{position}",
        "type": "function",
        "function": {"name": part.get("name", ""), "arguments": as_text(part.get("arguments"))},
    }
    if isinstance(extra := part.get("extra_content"), dict):
        call["extra_content"] = extra  # Gemini's thought signature, as the app sent it back
    return call


def _openai_tools(definitions: tuple[Any, ...]) -> tuple[dict[str, Any], ...]:
    """The conventions' flat tool definitions back into the chat API's; built-in tools (the
    Responses API's web search and the like) have no chat form and are left out."""
    tools = []
    for definition in definitions:
        if not isinstance(definition, dict) or definition.get("type") != "function" or not definition.get("name"):
            continue
        function = {k: definition[k] for k in ("name", "description", "parameters") if k in definition}
        tools.append({"type": "function", "function": function})
    return tuple(tools)


class Gate:
    def __init__(self, llm: LLM, task: Model, judge: Model, parent: Version, cases: list[Case]) -> None:
        self._llm = llm
        self._task = task
        self._judge_model = judge
        self._parent = parent
        self._cases = cases
        self._parent_outcomes: list[Outcome] | None = None

    async def judge(self, rubric: str, messages: list[dict[str, Any]], answer: str) -> bool:
        prompt = [
            {
                "role": "system",
                "content": 'You grade answers. Reply with JSON only: {"pass": true|false, "reason": "…"}.',
            },
            {
                "role": "user",
                "content": f"Rubric: {rubric}\n\nConversation: {orjson.dumps(messages).decode()}\n\nAnswer to grade: {answer}",
            },
        ]
        result = await self._llm.complete(
            self._judge_model, prompt, {"temperature": 0, "response_format": {"type": "json_object"}}
        )
        try:
            return bool(orjson.loads(result.text).get("pass"))
        except (orjson.JSONDecodeError, AttributeError):
            return False

    async def evaluate(self, candidate_prompt: str) -> Verdict:
        if self._parent_outcomes is None:
            assert self._parent.content.template is not None
            self._parent_outcomes = await self._run(self._parent.content.template.text)
        candidate = await self._run(candidate_prompt)
        results = [CaseResult(c, p, k) for c, p, k in zip(self._cases, self._parent_outcomes, candidate, strict=True)]
        golden = _paired([r for r in results if r.case.source == "golden"])
        failures = _paired([r for r in results if r.case.source == "failure"])
        passed, reason = _decide(golden, failures)
        tokens = sum(o.input_tokens for o in candidate)
        return Verdict(passed, reason, golden, failures, results, tokens)

    async def _run(self, system_prompt: str) -> list[Outcome]:
        judge: Judge = self.judge
        return list(await asyncio.gather(*(self._one(system_prompt, case, judge) for case in self._cases)))

    async def _one(self, system_prompt: str, case: Case, judge: Judge) -> Outcome:
        content = self._parent.content
        messages = [{"role": "system", "content": Template.parse(system_prompt).render(case.vars)}]
        messages += [dict(m) for m in case.messages if m.get("role") not in ("system", "developer")]
        params: dict[str, Any] = dict(content.params)
        if case.tools:
            params["tools"] = [dict(t) for t in case.tools]
        if content.response_schema is not None:
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": self._parent.name, "schema": dict(content.response_schema)},
            }
        model = Model(content.model, self._task.api_base, self._task.api_key) if content.model else self._task
        try:
            answer = await self._llm.complete(model, messages, params)
        except ModelError as exc:
            return Outcome(False, None, 0, str(exc))
        passed = await case.expect.check(answer.text, messages, judge)
        return Outcome(passed, answer.text, answer.input_tokens)


def _paired(results: Sequence[CaseResult]) -> Paired:
    return Paired(
        cases=len(results),
        parent_passed=sum(r.parent.passed for r in results),
        candidate_passed=sum(r.candidate.passed for r in results),
        fixed=sum(r.candidate.passed and not r.parent.passed for r in results),
        broken=sum(r.parent.passed and not r.candidate.passed for r in results),
    )


def _decide(golden: Paired, failures: Paired) -> tuple[bool, str]:
    if golden.broken > golden.fixed or golden.p_worse <= ALPHA:
        return (
            False,
            f"regresses the golden set: {golden.broken} broken, {golden.fixed} fixed (p_worse={golden.p_worse:.3f})",
        )
    target, what = (failures, "mined failures") if failures.cases else (golden, "golden set (no replayable failures)")
    if target.fixed <= target.broken or target.p_better > ALPHA:
        return (
            False,
            f"does not fix the {what} at {1 - ALPHA:.0%} confidence: {target.fixed} fixed, {target.broken} broken (p={target.p_better:.3f})",
        )
    return (
        True,
        f"fixes {target.fixed} of the {what} (p={target.p_better:.3f}); golden set: {golden.fixed} fixed, "
        f"{golden.broken} broken (p_worse={golden.p_worse:.3f})",
    )


def summary(paired: Paired) -> Mapping[str, Any]:
    return {
        "cases": paired.cases,
        "parent_passed": paired.parent_passed,
        "candidate_passed": paired.candidate_passed,
        "fixed": paired.fixed,
        "broken": paired.broken,
        "p_better": paired.p_better,
        "p_worse": paired.p_worse,
    }
