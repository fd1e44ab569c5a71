"""Simulated canaries with known truth, to measure the judge: how often an equal canary
is rolled back, and how many requests it takes to catch a worse one.

Each interval ``traffic`` requests arrive and the canary gets its weight's share; a
request's output is schema-valid with the arm's true rate. The controller judges the
counts since the canary started after every interval, as ``flywheel canary --watch``
does, and follows its verdict.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from deploy.judge import DEFAULTS, ArmStats, Thresholds, judge
from deploy.schedule import DEFAULT_STEPS, Action
from deploy.sequential import Proportion


@dataclass(frozen=True, slots=True)
class Run:
    action: Action  # PROMOTE, ROLLBACK, or HOLD when it ran out of intervals
    canary_requests: int
    stable_requests: int
    intervals: int


def simulate(
    canary_rate: float,
    stable_rate: float,
    rng: random.Random,
    traffic: int = 400,
    max_intervals: int = 200,
    limits: Thresholds = DEFAULTS,
) -> Run:
    weight = DEFAULT_STEPS[0]
    counts = {"canary": [0, 0], "stable": [0, 0]}  # [valid, trials]
    for interval in range(1, max_intervals + 1):
        to_canary = sum(rng.random() * 100 < weight for _ in range(traffic))
        for arm, n, rate in (("canary", to_canary, canary_rate), ("stable", traffic - to_canary, stable_rate)):
            counts[arm][0] += sum(rng.random() < rate for _ in range(n))
            counts[arm][1] += n
        stats = {
            arm: ArmStats(rates={"error_free": Proportion(t, t), "schema_valid": Proportion(v, t)})
            for arm, (v, t) in counts.items()
        }
        verdict = judge(stats["canary"], stats["stable"], weight, DEFAULT_STEPS, limits)
        if verdict.action in (Action.PROMOTE, Action.ROLLBACK):
            return Run(verdict.action, counts["canary"][1], counts["stable"][1], interval)
        weight = verdict.weight
    return Run(Action.HOLD, counts["canary"][1], counts["stable"][1], max_intervals)
