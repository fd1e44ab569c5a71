"""Arm statistics from Prometheus: PromQL over the proxy's ``flywheel_*`` series."""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import orjson

from deploy.judge import ArmStats
from deploy.metrics import MetricsUnavailable
from deploy.sequential import Proportion


class PrometheusMetrics:
    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self._base = base_url.rstrip("/")
        self._timeout = timeout

    def arm_stats(
        self, prompt: str, versions: tuple[str, ...], since_s: float, until_s: float | None = None
    ) -> Mapping[str, ArmStats]:
        now = time.time()
        end = min(until_s, now) if until_s is not None else now
        offset = math.floor(now - end)
        window = f"{max(60, math.ceil(end - since_s))}s"
        # The range selector, shifted back when the window ends in the past.
        rng = f"[{window}]" + (f" offset {offset}s" if offset > 0 else "")
        match = f'prompt="{_quote(prompt)}",version=~"{"|".join(versions)}"'
        requests = self._by(f"sum by (version) (increase(flywheel_requests_total{{{match}}}{rng}))")
        if not any(requests.values()):
            raise MetricsUnavailable(f"Prometheus has no flywheel_requests_total for {prompt} in the last {window}")
        errors = self._by(f'sum by (version) (increase(flywheel_requests_total{{{match},status_class="5xx"}}{rng}))')
        valid = self._by(f'sum by (version) (increase(flywheel_schema_results_total{{{match},result="valid"}}{rng}))')
        checked = self._by(f"sum by (version) (increase(flywheel_schema_results_total{{{match}}}{rng}))")
        up = self._by(f'sum by (version) (increase(flywheel_feedback_total{{{match},kind="up"}}{rng}))')
        rated = self._by(f'sum by (version) (increase(flywheel_feedback_total{{{match},kind=~"up|down"}}{rng}))')
        p95 = self._by(
            f"histogram_quantile(0.95, sum by (version, le) (rate(flywheel_request_duration_seconds_bucket{{{match}}}{rng})))"
        )
        cost = self._by(f"sum by (version) (increase(flywheel_cost_usd_total{{{match}}}{rng}))")
        out = {}
        for version in versions:
            n = round(requests.get(version, 0))
            rates = {"error_free": Proportion(max(0, n - round(errors.get(version, 0))), n)}
            if checked.get(version):
                rates["schema_valid"] = Proportion(round(valid.get(version, 0)), round(checked[version]))
            if rated.get(version):
                rates["feedback_positive"] = Proportion(round(up.get(version, 0)), round(rated[version]))
            latency = p95.get(version)
            out[version] = ArmStats(
                rates,
                latency if latency is not None and math.isfinite(latency) else None,
                cost[version] / n if n and version in cost else None,
            )
        return out

    def _by(self, promql: str) -> dict[str, float]:
        """An instant query, as {version: value}."""
        url = f"{self._base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(url, timeout=self._timeout) as response:
                body: Any = orjson.loads(response.read())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise MetricsUnavailable(f"Prometheus at {self._base} could not be queried: {exc}") from exc
        if body.get("status") != "success":
            raise MetricsUnavailable(f"Prometheus refused the query: {body.get('error', body)}")
        values: dict[str, float] = defaultdict(float)
        for series in body["data"]["result"]:
            values[series["metric"].get("version", "")] = float(series["value"][1])
        return dict(values)


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
