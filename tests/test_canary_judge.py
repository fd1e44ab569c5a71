"""The canary judge against simulated truth (200 runs per case), and its pure parts."""

from __future__ import annotations

import random
import statistics

import pytest

from deploy.judge import ArmStats, judge
from deploy.schedule import Action, next_weight, parse_steps
from deploy.sequential import Proportion, always_valid_p
from deploy.simulate import simulate

RUNS = 200


def _runs(canary: float, stable: float, seed: int) -> list:
    rng = random.Random(seed)
    return [simulate(canary, stable, rng) for _ in range(RUNS)]


def test_equal_canary_is_promoted_and_rarely_rolled_back() -> None:
    runs = _runs(0.90, 0.90, seed=1)
    false_rollbacks = sum(r.action is Action.ROLLBACK for r in runs) / RUNS
    assert false_rollbacks <= 0.02
    assert all(r.action is Action.PROMOTE for r in runs if r.action is not Action.ROLLBACK)


def test_canary_five_points_worse_is_rolled_back_quickly() -> None:
    runs = _runs(0.85, 0.90, seed=2)
    assert all(r.action is Action.ROLLBACK for r in runs)
    needed = sorted(r.canary_requests for r in runs)
    assert statistics.median(needed) <= 1000 and needed[int(0.9 * RUNS)] <= 2000


def test_canary_five_points_better_is_promoted() -> None:
    runs = _runs(0.95, 0.90, seed=3)
    assert all(r.action is Action.PROMOTE for r in runs)


def test_next_weight_and_steps() -> None:
    steps = parse_steps("5,10,25,50,100")
    assert [next_weight(w, steps) for w in (0, 5, 7, 50, 100)] == [5, 10, 10, 100, None]
    for bad in ("10,5", "0,10", "5,abc", "5,5,10", "50,150"):
        with pytest.raises(ValueError):
            parse_steps(bad)


def test_no_verdict_before_the_minimum_sample() -> None:
    few = ArmStats(rates={"error_free": Proportion(50, 50), "schema_valid": Proportion(0, 50)})
    many = ArmStats(rates={"error_free": Proportion(5000, 5000), "schema_valid": Proportion(5000, 5000)})
    verdict = judge(few, many, 5, (5, 10, 100))
    assert verdict.action is Action.HOLD and verdict.weight == 5 and "waiting" in verdict.reason


def test_rollback_evidence_names_the_metric() -> None:
    canary = ArmStats(rates={"error_free": Proportion(400, 400), "schema_valid": Proportion(300, 400)})
    stable = ArmStats(rates={"error_free": Proportion(4000, 4000), "schema_valid": Proportion(3600, 4000)})
    verdict = judge(canary, stable, 10, (5, 10, 100))
    assert verdict.action is Action.ROLLBACK and verdict.weight == 0 and "schema_valid 75.0% vs 90.0%" in verdict.reason
    assert verdict.evidence["schema_valid"]["p"] <= 0.02


def test_always_valid_p_is_one_without_data() -> None:
    assert always_valid_p(Proportion(0, 0), Proportion(10, 10)) == (0.0, 1.0)
