"""Canary against stable, per metric, with the evidence for the rollout history.

Rates (error-free calls, schema-valid outputs, positive feedback) are judged by the
always-valid mSPRT of :mod:`deploy.sequential`: the canary is rolled back when it is
worse with always-valid p ≤ alpha, whenever the controller looks. Latency p95 and cost
per request are judged against thresholds (canary / stable ratio), as Flagger does. No
verdict but hold until both arms have the minimum sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deploy.schedule import Action, next_weight
from deploy.sequential import Proportion, always_valid_p

RATES = ("error_free", "schema_valid", "feedback_positive")


@dataclass(frozen=True, slots=True)
class ArmStats:
    """What one arm did since the canary started."""

    rates: Mapping[str, Proportion] = field(default_factory=dict)  # keyed by RATES
    p95_latency_s: float | None = None
    cost_per_request: float | None = None

    @property
    def requests(self) -> int:
        found = self.rates.get("error_free")
        return found.trials if found else 0


@dataclass(frozen=True, slots=True)
class Thresholds:
    alpha: float = 0.02  # chance of rolling back a canary that is as good as stable
    tau: float = 0.05  # the rate difference the test is tuned to catch fastest
    min_sample: int = 100  # per arm, before any verdict
    promote_sample: int = 3000  # canary requests before promotion: enough to catch a 5-point drop
    max_latency_ratio: float = 1.5
    max_cost_ratio: float = 1.5


DEFAULTS = Thresholds()


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    weight: float  # the canary weight after this verdict
    reason: str
    evidence: Mapping[str, Any]


def compare(
    candidate: ArmStats, reference: ArmStats, limits: Thresholds = DEFAULTS
) -> tuple[list[str], dict[str, Any]]:
    """Where ``candidate`` is worse than ``reference``: reasons, and the numbers for each metric."""
    evidence: dict[str, Any] = {}
    worse = []
    for name in RATES:
        c, s = candidate.rates.get(name), reference.rates.get(name)
        if c is None or s is None or not c.trials or not s.trials:
            continue
        difference, p = always_valid_p(c, s, limits.tau)
        evidence[name] = {"canary": c.rate, "stable": s.rate, "difference": difference, "p": p}
        if difference < 0 and p <= limits.alpha:
            worse.append(f"{name} {c.rate:.1%} vs {s.rate:.1%} (always-valid p={p:.4f})")
    for name, c_value, s_value, limit in (
        ("p95_latency_s", candidate.p95_latency_s, reference.p95_latency_s, limits.max_latency_ratio),
        ("cost_per_request", candidate.cost_per_request, reference.cost_per_request, limits.max_cost_ratio),
    ):
        if c_value is not None and s_value:
            ratio = c_value / s_value
            evidence[name] = {"canary": c_value, "stable": s_value, "ratio": ratio}
            if ratio > limit:
                worse.append(f"{name} ×{ratio:.2f} (limit ×{limit})")
    return worse, evidence


def judge(
    canary: ArmStats, stable: ArmStats, weight: float, steps: Sequence[float], limits: Thresholds = DEFAULTS
) -> Verdict:
    evidence: dict[str, Any] = {
        "canary_requests": canary.requests,
        "stable_requests": stable.requests,
        "weight": weight,
    }
    if min(canary.requests, stable.requests) < limits.min_sample:
        return Verdict(Action.HOLD, weight, f"waiting for {limits.min_sample} requests per arm", evidence)
    worse, numbers = compare(canary, stable, limits)
    evidence |= numbers
    if worse:
        return Verdict(Action.ROLLBACK, 0.0, "canary worse: " + "; ".join(worse), evidence)
    following = next_weight(weight, steps)
    if following is not None:
        return Verdict(Action.ADVANCE, following, f"no metric worse; {weight:g}% → {following:g}%", evidence)
    if canary.requests < limits.promote_sample:  # stable may get no traffic at the last step
        return Verdict(Action.HOLD, weight, f"last step: waiting for {limits.promote_sample} canary requests", evidence)
    return Verdict(Action.PROMOTE, 100.0, "no metric worse through every step", evidence)
