"""The proxy's Prometheus instruments, on a registry of their own (a fresh one per test).

Labels are bounded: prompt and version come from the registry, arm is stable/canary,
status class is 2xx…5xx, and model is capped at ``MAX_MODELS`` distinct values (an app
that sends arbitrary model names cannot blow up the series count). Never a request id,
user or key.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

MAX_MODELS = 200
OTHER = "other"
_CALL = ("prompt", "version", "arm", "model")
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600)
_TTFC_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("flywheel_requests_total", "Proxied GenAI calls.", [*_CALL, "status_class"], registry=r)
        self.duration = Histogram(
            "flywheel_request_duration_seconds",
            "Whole call, from the app's request to the end of the answer.",
            _CALL,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_chunk = Histogram(
            "flywheel_time_to_first_chunk_seconds",
            "Streams: from the app's request to the first chunk relayed.",
            _CALL,
            buckets=_TTFC_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("flywheel_tokens_total", "Tokens by type (input, output).", [*_CALL, "type"], registry=r)
        self.cost = Counter("flywheel_cost_usd_total", "Cost in USD from litellm's price table.", _CALL, registry=r)
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
        self._series: dict[tuple[str, str, str, str], CallSeries] = {}

    def series(self, prompt: str, version: str, arm: str, model: str) -> CallSeries:
        """The per-call instruments for one label set, bound once (``labels()`` per call
        is a lock and a dict build each; this is one dict lookup)."""
        key = (prompt, version, arm, model)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = CallSeries(self, key)
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
    """The children of the per-call metrics for one (prompt, version, arm, model)."""

    def __init__(self, metrics: ProxyMetrics, labels: tuple[str, str, str, str]) -> None:
        self._metrics = metrics
        self._labels = labels
        self._requests: dict[str, Any] = {}
        self.duration = metrics.duration.labels(*labels)
        self.time_to_first_chunk = metrics.time_to_first_chunk.labels(*labels)
        self.input_tokens = metrics.tokens.labels(*labels, "input")
        self.output_tokens = metrics.tokens.labels(*labels, "output")
        self.cost = metrics.cost.labels(*labels)

    def requests(self, status_class: str) -> Any:
        child = self._requests.get(status_class)
        if child is None:
            child = self._requests[status_class] = self._metrics.requests.labels(*self._labels, status_class)
        return child
