"""Failure mining (SPEC §6): where does a prompt version fail, and on what?

A call fails when the user's feedback is negative or carries a correction, its output
broke the version's ``response_schema``, the upstream errored, or another evaluator
scored it low. Feedback is joined to its call by request id. Counts cover every span;
the sample handed to the optimizer model is bounded and spread over groups of similar
failures, so one loud failure does not crowd out the rest.
"""

from __future__ import annotations

import enum
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from optimizer.records import CallRecord, FeedbackRecord


class FailureKind(enum.StrEnum):
    NEGATIVE_FEEDBACK = "negative_feedback"
    CORRECTION = "correction"
    SCHEMA_INVALID = "schema_invalid"
    UPSTREAM_ERROR = "upstream_error"
    EVALUATOR_FAILURE = "evaluator_failure"


class SpanStore(Protocol):
    """What mining asks of a span source; files answer by streaming, ClickHouse by SQL."""

    def call_counts(self, prompt: str) -> Mapping[str, int]:
        """Calls per version of ``prompt``."""
        ...

    def failing_calls(self, prompt: str) -> Iterable[CallRecord]:
        """Calls of ``prompt`` that failed on their own: upstream error or invalid schema."""
        ...

    def adverse_feedback(self) -> Iterable[FeedbackRecord]:
        """Feedback and evaluations that mark a call as failed (low score or a correction)."""
        ...

    def calls(self, request_ids: set[str]) -> Iterable[CallRecord]:
        """The calls with these request ids."""
        ...


@dataclass(frozen=True, slots=True)
class Failure:
    call: CallRecord
    kinds: frozenset[FailureKind]
    feedback: tuple[FeedbackRecord, ...] = ()

    @property
    def signature(self) -> str:
        """What groups similar failures: the kinds, the error, and the gist of what went wrong."""
        gist = " ".join(f.comment or f.correction or "" for f in self.feedback) or self.call.output_text or ""
        words = re.findall(r"[a-z]+", gist.lower())[:6]
        return "|".join((*sorted(self.kinds), self.call.error_type or "", " ".join(words)))


@dataclass
class VersionFailures:
    calls: int = 0
    failed: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)

    @property
    def failure_rate(self) -> float:
        return self.failed / self.calls if self.calls else 0.0


@dataclass
class Mined:
    prompt: str
    versions: dict[str, VersionFailures]
    sample: list[Failure]
    groups: int
    content_captured: bool  # False: the proxy ran without --capture-content; no inputs to replay

    @property
    def failures(self) -> int:
        return sum(v.failed for v in self.versions.values())


def mine(store: SpanStore, prompt: str, version: str | None = None, sample_size: int = 40) -> Mined:
    versions = {v: VersionFailures(calls=n) for v, n in store.call_counts(prompt).items()}
    failing: dict[str, CallRecord] = {c.request_id: c for c in store.failing_calls(prompt)}
    feedback: dict[str, list[FeedbackRecord]] = defaultdict(list)
    for record in store.adverse_feedback():
        feedback[record.request_id].append(record)
    missing = set(feedback) - set(failing)
    for call in store.calls(missing) if missing else ():
        if call.prompt == prompt:
            failing[call.request_id] = call
    failures = []
    for request_id, call in failing.items():
        if version is not None and call.version != version:
            continue
        kinds = _kinds(call, feedback.get(request_id, ()))
        if kinds:
            failures.append(Failure(call, kinds, tuple(feedback.get(request_id, ()))))
    for failure in failures:
        stats = versions.setdefault(failure.call.version, VersionFailures())
        stats.failed += 1
        stats.by_kind.update(failure.kinds)
    failures.sort(key=lambda f: (f.call.time_ns, f.call.request_id))
    sample, groups = _diverse_sample(failures, sample_size)
    captured = any(f.call.input_json is not None for f in failures)
    return Mined(prompt, versions, sample, groups, captured)


def _kinds(call: CallRecord, feedback: Iterable[FeedbackRecord]) -> frozenset[FailureKind]:
    kinds = set()
    if call.error_type is not None and call.error_type != "cancelled":
        kinds.add(FailureKind.UPSTREAM_ERROR)
    if call.schema_valid is False:
        kinds.add(FailureKind.SCHEMA_INVALID)
    for record in feedback:
        if record.name != "user_feedback":
            kinds.add(FailureKind.EVALUATOR_FAILURE)
            continue
        if record.negative:
            kinds.add(FailureKind.NEGATIVE_FEEDBACK)
        if record.correction:
            kinds.add(FailureKind.CORRECTION)
    return frozenset(kinds)


def _diverse_sample(failures: list[Failure], size: int) -> tuple[list[Failure], int]:
    """Round-robin over groups of similar failures, biggest groups first."""
    groups: dict[str, list[Failure]] = defaultdict(list)
    for failure in failures:
        groups[failure.signature].append(failure)
    ordered = sorted(groups.values(), key=lambda g: (-len(g), g[0].call.time_ns))
    sample: list[Failure] = []
    depth = 0
    while len(sample) < size and any(depth < len(g) for g in ordered):
        sample += [g[depth] for g in ordered if depth < len(g)][: size - len(sample)]
        depth += 1
    return sample, len(groups)
