"""The proxy's Prometheus instruments, on a registry of their own (a fresh one per test).

The per-call series (requests, duration, time to first chunk, tokens, cost) are plain
numbers in :class:`CallSeries`, added to by one call per request on the event loop and
turned into metric families at scrape time by a registered collector (prometheus_client's
own extension point): its instruments take a lock and re-check their labels on every
``inc()``/``observe()``, nine times a call here. Rare events use its instruments directly.

Labels are bounded: prompt and version come from the registry, arm is stable/canary,
status class is 2xx…5xx, and model is capped at ``MAX_MODELS`` distinct values (an app
that sends arbitrary model names cannot blow up the series count). Never a request id,
user or key.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

MAX_MODELS = 200
OTHER = "other"
_CALL = ("prompt", "version", "arm", "model")
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600)
_TTFC_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)


def _le(bounds: tuple[float, ...]) -> tuple[str, ...]:
    """Bucket bounds spelled as prometheus_client spells them ("1.0", "+Inf")."""
    return tuple(floatToGoString(b) for b in (*bounds, float("inf")))  # type: ignore[no-untyped-call]


_LATENCY_LE = _le(_LATENCY_BUCKETS)
_TTFC_LE = _le(_TTFC_BUCKETS)


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._series: dict[tuple[str, str, str, str], CallSeries] = {}
        r.register(_CallCollector(self._series))
        self.schema_results = Counter(
            "flywheel_schema_results_total",
            "Outputs checked against the version's response_schema, by result (valid, invalid).",
            [*_CALL, "result"],
            registry=r,
        )
        self.feedback = Counter(
            "flywheel_feedback_total", "Feedback received, by kind (up, down, score).", [*_CALL[:3], "kind"], registry=r
        )
        self.feedback_score = Histogram(
            "flywheel_feedback_score",
            "Feedback scores 0..1 (thumbs up = 1, down = 0).",
            _CALL[:3],
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=r,
        )
        self.upstream_errors = Counter(
            "flywheel_upstream_errors_total",
            "Calls the upstream failed: an error status, unreachable, timed out or cut off.",
            ["model", "status_class"],
            registry=r,
        )
        self.spans_dropped = Counter(
            "flywheel_spans_dropped_total",
            "Spans dropped because the export queue was full or export failed.",
            registry=r,
        )
        self.in_flight = 0  # a plain int on the request path; read by the gauge at scrape time
        Gauge("flywheel_in_flight_requests", "Calls being proxied right now.", registry=r).set_function(
            lambda: self.in_flight
        )
        self.registry_reloads = Counter(
            "flywheel_registry_reloads_total",
            "Registry reloads by result (ok, or error when a file could not be read and the last good state was kept).",
            ["result"],
            registry=r,
        )
        self.registry_prompts = Gauge(
            "flywheel_registry_prompts", "Prompts the proxy currently serves from the registry.", registry=r
        )
        self.registry_errors = Gauge(
            "flywheel_registry_errors",
            "Registry files that could not be read at the last reload (their prompt keeps its last good state).",
            registry=r,
        )
        self._models: set[str] = set()

    def series(self, prompt: str, version: str, arm: str, model: str) -> CallSeries:
        """The per-call numbers for one label set (one dict lookup a call)."""
        key = (prompt, version, arm, model)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = CallSeries()
        return found

    def model_label(self, model: str | None) -> str:
        """``model`` as a label value, or ``other`` once ``MAX_MODELS`` values are in use."""
        if not model:
            return ""
        if model in self._models:
            return model
        if len(self._models) >= MAX_MODELS:
            return OTHER
        self._models.add(model)
        return model

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class CallSeries:
    """What the calls of one (prompt, version, arm, model) add up to so far."""

    __slots__ = ("created", "requests", "duration", "duration_sum", "ttfc", "ttfc_sum", "tokens", "cost")

    def __init__(self) -> None:
        self.created = time.time()
        self.requests: dict[str, int] = {}  # by status class
        self.duration = [0] * (len(_LATENCY_BUCKETS) + 1)  # per bucket, not cumulative; the last is +Inf
        self.duration_sum = 0.0
        self.ttfc = [0] * (len(_TTFC_BUCKETS) + 1)
        self.ttfc_sum = 0.0
        self.tokens = [0, 0]  # input, output
        self.cost = 0.0

    def record(
        self,
        status_class: str,
        duration: float,
        first_chunk: float | None,
        input_tokens: int | None,
        output_tokens: int | None,
        cost: float | None,
    ) -> None:
        """One finished call (event loop only, so no lock)."""
        self.requests[status_class] = self.requests.get(status_class, 0) + 1
        self.duration[bisect_left(_LATENCY_BUCKETS, duration)] += 1
        self.duration_sum += duration
        if first_chunk is not None:
            self.ttfc[bisect_left(_TTFC_BUCKETS, first_chunk)] += 1
            self.ttfc_sum += first_chunk
        if input_tokens:
            self.tokens[0] += input_tokens
        if output_tokens:
            self.tokens[1] += output_tokens
        if cost:
            self.cost += cost


class _CallCollector(Collector):
    """The per-call metric families, built from every :class:`CallSeries` at scrape time,
    in the shape prometheus_client's own Counter and Histogram expose."""

    def __init__(self, series: dict[tuple[str, str, str, str], CallSeries]) -> None:
        self._series = series

    def collect(self) -> Iterator[Metric]:
        requests, duration, ttfc, tokens, cost = families = _families()
        for labels, s in list(self._series.items()):
            for status_class, count in s.requests.items():
                requests.add_metric([*labels, status_class], count, created=s.created)
            _histogram(duration, labels, _LATENCY_LE, s.duration, s.duration_sum, s.created)
            _histogram(ttfc, labels, _TTFC_LE, s.ttfc, s.ttfc_sum, s.created)
            tokens.add_metric([*labels, "input"], s.tokens[0], created=s.created)
            tokens.add_metric([*labels, "output"], s.tokens[1], created=s.created)
            cost.add_metric(list(labels), s.cost, created=s.created)
        yield from families

    def describe(self) -> Iterator[Metric]:
        yield from _families()  # names only, so the registry can refuse clashes


def _families() -> tuple[
    CounterMetricFamily, HistogramMetricFamily, HistogramMetricFamily, CounterMetricFamily, CounterMetricFamily
]:
    return (
        CounterMetricFamily("flywheel_requests", "Proxied GenAI calls.", labels=[*_CALL, "status_class"]),
        HistogramMetricFamily(
            "flywheel_request_duration_seconds",
            "Whole call, from the app's request to the end of the answer.",
            labels=_CALL,
        ),
        HistogramMetricFamily(
            "flywheel_time_to_first_chunk_seconds",
            "Streams: from the app's request to the first chunk relayed.",
            labels=_CALL,
        ),
        CounterMetricFamily("flywheel_tokens", "Tokens by type (input, output).", labels=[*_CALL, "type"]),
        CounterMetricFamily("flywheel_cost_usd", "Cost in USD from litellm's price table.", labels=_CALL),
    )


def _histogram(
    family: HistogramMetricFamily,
    labels: tuple[str, ...],
    bounds: tuple[str, ...],
    counts: list[int],
    total: float,
    created: float,
) -> None:
    """One child's samples as prometheus_client's Histogram writes them: cumulative
    ``le`` buckets, ``_count``, ``_sum``, ``_created``."""
    buckets, running = [], 0
    for bound, count in zip(bounds, counts, strict=True):
        running += count
        buckets.append((bound, float(running)))
    family.add_metric(list(labels), buckets, total)
    family.samples.append(Sample(family.name + "_created", dict(zip(_CALL, labels, strict=True)), created))
