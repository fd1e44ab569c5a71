"""The proxy's Prometheus instruments, on a registry of their own (a fresh one per test)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.registry_reloads = Counter(
            "flywheel_registry_reloads_total",
            "Registry reloads by result (ok, or error when a file could not be read and the last good state was kept).",
            ["result"],
            registry=self.registry,
        )
        self.registry_prompts = Gauge(
            "flywheel_registry_prompts", "Prompts the proxy currently serves from the registry.", registry=self.registry
        )
        self.registry_errors = Gauge(
            "flywheel_registry_errors",
            "Registry files that could not be read at the last reload (their prompt keeps its last good state).",
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
