"""One step of the canary controller: measure, judge, move the rollout, tell people.

The registry is the router: a step writes the rollout with compare-and-swap on its
revision, so two controllers never both take the same step — the slower one finds the
revision moved and holds. Every decision goes into the rollout history with the numbers
that made it; a hold is written only when its reason changes, so a controller that
watches every minute does not flood the history.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from deploy.judge import DEFAULTS, ArmStats, Thresholds, Verdict, compare, judge
from deploy.metrics import MetricsSource, MetricsUnavailable
from deploy.notifier import Alert, Fanout
from deploy.schedule import DEFAULT_STEPS, Action
from flywheel.registry import Registry, Rollout, RolloutConflict

log = logging.getLogger("flywheel.canary")
ACTOR = "flywheel-canary"


@dataclass(frozen=True, slots=True)
class CanaryConfig:
    prompt: str
    steps: tuple[float, ...] = DEFAULT_STEPS
    limits: Thresholds = DEFAULTS
    recent_s: float = 3600.0  # the stable version's last hour …
    baseline_s: float = 86400.0  # … against the day before it


class Decisions:
    """``flywheel_canary_decisions_total{prompt, action}``: one count per decision."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.total = Counter(
            "flywheel_canary_decisions_total",
            "Canary controller decisions.",
            ["prompt", "action"],
            registry=self.registry,
        )


class Controller:
    def __init__(
        self,
        registry: Registry,
        metrics: MetricsSource,
        notify: Fanout,
        config: CanaryConfig,
        decisions: Decisions | None = None,
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self._notify = notify
        self._config = config
        self.decisions = decisions or Decisions()
        self._degraded: bool | None = None  # the stable version's state at the last look (None: unknown)

    def step(self) -> Verdict:
        name = self._config.prompt
        rollout = self._registry.rollout(name)  # a corrupt state raises here: nothing is written
        if rollout.canary is None:
            return Verdict(Action.HOLD, 0.0, "no canary running", {})
        verdict = self._judge(rollout)
        try:
            self._apply(rollout, verdict)
        except RolloutConflict as exc:
            verdict = Verdict(Action.HOLD, rollout.weight, f"the rollout moved meanwhile ({exc}); not stepping", {})
        self.decisions.total.labels(name, verdict.action.value).inc()
        log.info("%s: %s — %s", name, verdict.action.value, verdict.reason)
        return verdict

    def watch_stable(self, now: float | None = None) -> str | None:
        """Compare the stable version's recent window with its own baseline before it (a
        provider's model update degrades a prompt with no canary in sight). Alerts when it
        turns degraded and resolves the alert when it recovers; returns the reason, if any."""
        config, now = self._config, time.time() if now is None else now
        stable = self._registry.rollout(config.prompt).stable
        split = now - config.recent_s
        try:
            recent = self._metrics.arm_stats(config.prompt, (stable,), split).get(stable)
            baseline = self._metrics.arm_stats(config.prompt, (stable,), split - config.baseline_s, split).get(stable)
        except MetricsUnavailable as exc:
            log.info("%s: stable not checked: %s", config.prompt, exc)
            return None
        if recent is None or baseline is None or min(recent.requests, baseline.requests) < config.limits.min_sample:
            return None
        worse, _ = compare(recent, baseline, config.limits)
        reason = "stable worse than its own baseline: " + "; ".join(worse) if worse else None
        if worse and self._degraded is not True:
            self._alert(Alert("FlywheelStableDegraded", config.prompt, stable, reason or "", "warning"))
        elif not worse and self._degraded:
            self._alert(Alert("FlywheelStableDegraded", config.prompt, stable, "recovered", "warning", resolved=True))
        self._degraded = bool(worse)
        self.decisions.total.labels(config.prompt, "stable_degraded" if worse else "stable_healthy").inc()
        return reason

    def _judge(self, rollout: Rollout) -> Verdict:
        assert rollout.canary is not None
        try:
            stats = self._metrics.arm_stats(rollout.name, (rollout.stable, rollout.canary), canary_started(rollout))
        except MetricsUnavailable as exc:
            return Verdict(Action.HOLD, rollout.weight, f"no metrics: {exc}", {})
        empty = ArmStats()
        return judge(
            stats.get(rollout.canary, empty),
            stats.get(rollout.stable, empty),
            rollout.weight,
            self._config.steps,
            self._config.limits,
        )

    def _apply(self, rollout: Rollout, verdict: Verdict) -> None:
        assert rollout.canary is not None
        evidence: dict[str, Any] = dict(verdict.evidence)
        common: dict[str, Any] = {"actor": ACTOR, "reason": verdict.reason, "expect_revision": rollout.revision}
        if verdict.action is Action.ROLLBACK:
            self._registry.rollback(rollout.name, evidence=evidence, **common)
            self._alert(Alert("FlywheelCanaryRollback", rollout.name, rollout.canary, verdict.reason, "critical"))
        elif verdict.action is Action.PROMOTE:
            self._registry.promote(rollout.name, evidence=evidence, **common)
        elif verdict.action is Action.ADVANCE or verdict.reason != rollout.history[-1].reason:
            self._registry.set_rollout(
                rollout.name,
                stable=rollout.stable,
                canary=rollout.canary,
                weight=verdict.weight,
                action=verdict.action.value,
                evidence=evidence,
                **common,
            )

    def _alert(self, alert: Alert) -> None:
        for failure in self._notify.send(alert):
            log.error("alert %s for %s not delivered: %s", alert.name, alert.prompt, failure)


def canary_started(rollout: Rollout) -> float:
    """Unix seconds when the current canary started (its first history entry in a row)."""
    from datetime import datetime

    start = rollout.history[-1].at
    for change in reversed(rollout.history):
        if change.canary != rollout.canary:
            break
        start = change.at
    return datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp()
