"""A sequential test that stays valid however often the controller looks: the mixture
SPRT (mSPRT) of Johari, Pekelis and Walsh, "Always valid inference" (2017), on the
difference between canary and stable.

With the observed difference ``d`` whose variance is ``v``, and a normal mixing
distribution N(0, tau²) over the true difference, the likelihood ratio against "no
difference" is ``sqrt(v / (v + tau²)) · exp(d² tau² / (2 v (v + tau²)))``. Its inverse is
an always-valid p-value: the chance that it ever crosses ``1/alpha`` when the arms are
equal is at most ``alpha``, at any number of looks. ``tau`` is the size of difference the
test is tuned to notice fastest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Proportion:
    """Successes out of trials in one arm (schema-valid outputs, error-free calls, thumbs up…)."""

    successes: int
    trials: int

    @property
    def rate(self) -> float:
        return self.successes / self.trials if self.trials else 0.0


def msprt_likelihood_ratio(difference: float, variance: float, tau: float) -> float:
    if variance <= 0:
        return math.inf if difference != 0 else 1.0
    t2 = tau * tau
    exponent = difference * difference * t2 / (2 * variance * (variance + t2))
    return math.sqrt(variance / (variance + t2)) * math.exp(min(exponent, 700.0))


def always_valid_p(canary: Proportion, stable: Proportion, tau: float = 0.05) -> tuple[float, float]:
    """(canary rate − stable rate, always-valid p-value that they differ)."""
    if canary.trials == 0 or stable.trials == 0:
        return 0.0, 1.0
    # Rates pulled a little toward one half so that 0 % and 100 % still have a variance.
    pc = (canary.successes + 0.5) / (canary.trials + 1)
    ps = (stable.successes + 0.5) / (stable.trials + 1)
    variance = pc * (1 - pc) / canary.trials + ps * (1 - ps) / stable.trials
    difference = canary.rate - stable.rate
    return difference, min(1.0, 1.0 / msprt_likelihood_ratio(difference, variance, tau))


def always_valid_p_means(
    canary_mean: float,
    canary_var: float,
    canary_n: int,
    stable_mean: float,
    stable_var: float,
    stable_n: int,
    tau: float,
) -> tuple[float, float]:
    """The same for means (latency, cost per request, feedback score)."""
    if canary_n < 2 or stable_n < 2:
        return 0.0, 1.0
    variance = canary_var / canary_n + stable_var / stable_n
    difference = canary_mean - stable_mean
    return difference, min(1.0, 1.0 / msprt_likelihood_ratio(difference, variance, tau))
