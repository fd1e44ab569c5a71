"""Where the controller's numbers come from: one small interface, one source per file
(``prometheus_metrics`` over the proxy's ``flywheel_*`` series, ``spans_metrics`` over
the span store)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from deploy.judge import ArmStats


class MetricsUnavailable(RuntimeError):
    """The source could not answer (unreachable, empty, malformed): the controller holds."""


class MetricsSource(Protocol):
    def arm_stats(
        self, prompt: str, versions: tuple[str, ...], since_s: float, until_s: float | None = None
    ) -> Mapping[str, ArmStats]:
        """What each version did from ``since_s`` to ``until_s`` (Unix seconds; None: now), by version hash."""
        ...
