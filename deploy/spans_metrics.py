"""Arm statistics from the span store: calls, errors, schema checks, feedback, latency, cost."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from deploy.judge import ArmStats
from deploy.metrics import MetricsUnavailable
from deploy.sequential import Proportion
from flywheel.spans import SpanSource
from optimizer.records import CallRecord, FeedbackRecord, from_attributes


@dataclass
class _Tally:
    calls: int = 0
    error_free: int = 0
    checked: int = 0
    valid: int = 0
    rated: int = 0
    positive: int = 0
    latencies: list[float] = field(default_factory=list)
    cost: float = 0.0
    costed: int = 0


class SpansMetrics:
    def __init__(self, source: SpanSource) -> None:
        self._source = source

    def arm_stats(
        self, prompt: str, versions: tuple[str, ...], since_s: float, until_s: float | None = None
    ) -> Mapping[str, ArmStats]:
        since_ns = int(since_s * 1e9)
        until_ns = int(until_s * 1e9) if until_s is not None else None
        tallies: dict[str, _Tally] = defaultdict(_Tally)
        version_of: dict[str, str] = {}
        feedback: list[FeedbackRecord] = []
        for name, attributes, start_ns, end_ns in self._source.attribute_rows():
            if start_ns < since_ns or (until_ns is not None and start_ns >= until_ns):
                continue
            record = from_attributes(name, attributes, start_ns, end_ns)
            if isinstance(record, FeedbackRecord):
                feedback.append(record)
            elif isinstance(record, CallRecord) and record.prompt == prompt and record.version in versions:
                _count(tallies[record.version], record)
                version_of[record.request_id] = record.version
        for record in feedback:
            version = version_of.get(record.request_id)
            if version is not None and record.name == "user_feedback":
                tallies[version].rated += 1
                tallies[version].positive += not record.negative
        if not tallies:
            raise MetricsUnavailable(
                f"no spans of {prompt} for versions {', '.join(versions)} since the canary started"
            )
        return {version: _stats(tally) for version, tally in tallies.items()}


def _count(tally: _Tally, call: CallRecord) -> None:
    tally.calls += 1
    tally.error_free += call.error_type is None or call.error_type == "cancelled"
    if call.schema_valid is not None:
        tally.checked += 1
        tally.valid += call.schema_valid
    if call.duration_s:
        tally.latencies.append(call.duration_s)
    if call.cost_usd is not None:
        tally.cost += call.cost_usd
        tally.costed += 1


def _stats(tally: _Tally) -> ArmStats:
    rates = {"error_free": Proportion(tally.error_free, tally.calls)}
    if tally.checked:
        rates["schema_valid"] = Proportion(tally.valid, tally.checked)
    if tally.rated:
        rates["feedback_positive"] = Proportion(tally.positive, tally.rated)
    latencies = sorted(tally.latencies)
    p95 = latencies[min(len(latencies) - 1, math.ceil(0.95 * len(latencies)) - 1)] if latencies else None
    return ArmStats(rates, p95, tally.cost / tally.costed if tally.costed else None)
