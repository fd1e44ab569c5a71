"""Cost of telemetry: the same proxy with telemetry off and on, side by side in one run.

Off: ``OTEL_SDK_DISABLED=true`` (the SDK hands out no-op tracers), no span store, no
scrape (metrics and stream reading stay on). On: every call a GenAI span in
``--spans-file``, and ``/metrics`` scraped every second as Prometheus would. OTLP: the
same, with the spans sent over OTLP/HTTP (protobuf) instead, to nginx accepting
``/v1/traces``. Upstream: nginx from memory; load: wrk and a paced client.

    python -m bench.telemetry_bench --duration 8 --out bench/results
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.nginx_upstream import nginx_upstream
from bench.proxy_bench import bench_main, flywheel_proxy, paced, rss_mb, wrk


@contextlib.contextmanager
def scraping(url: str, interval: float = 1.0) -> Iterator[list[int]]:
    """GET /metrics every ``interval`` seconds in a thread; yields the sizes scraped."""
    sizes: list[int] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
                sizes.append(len(r.read()))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield sizes
    finally:
        stop.set()
        thread.join()


ARMS = ("off", "on", "otlp")


def run(duration: float, paced_count: int, connections: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    otlp_env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    with (
        tempfile.TemporaryDirectory() as scratch,
        nginx_upstream() as upstream,
        flywheel_proxy(upstream, ["--registry", f"{scratch}/none"], env={"OTEL_SDK_DISABLED": "true"}) as (off, _),
        flywheel_proxy(upstream, ["--registry", f"{scratch}/none", "--spans-file", f"{scratch}/spans.jsonl"]) as (
            on,
            on_process,
        ),
        flywheel_proxy(
            upstream, ["--registry", f"{scratch}/none"], env={**otlp_env, "OTEL_EXPORTER_OTLP_ENDPOINT": upstream}
        ) as (otlp, otlp_process),
        scraping(on) as scrapes,
        scraping(otlp),
    ):
        urls = {"off": off, "on": on, "otlp": otlp}
        results["latency_json"] = asyncio.run(paced({"direct": upstream, **urls}, 100, paced_count, False))
        results["latency_stream"] = asyncio.run(paced({"direct": upstream, **urls}, 100, paced_count, True))
        for stream in (False, True):
            results[f"throughput_{'stream' if stream else 'json'}"] = _throughput(urls, stream, connections, duration)
        results["scrapes"] = len(scrapes)
        results["rss_mb_on"] = rss_mb(on_process.pid)
        results["rss_mb_otlp"] = rss_mb(otlp_process.pid)
        results["spans_file_mb"] = Path(f"{scratch}/spans.jsonl").stat().st_size / 1e6
        results["otlp_dropped"] = _dropped(otlp)
    return results


def _throughput(urls: dict[str, str], stream: bool, connections: int, duration: float) -> dict[str, Any]:
    """Three wrk rounds per arm, the order rotating, so drift on a shared machine hits every arm."""
    rounds = []
    for i in range(3):
        order = ARMS[i:] + ARMS[:i]
        rounds.append({arm: wrk(urls[arm], stream, connections, duration) for arm in order})
    result: dict[str, Any] = {"rounds": rounds}
    for arm in ("on", "otlp"):
        ratios = sorted(r[arm]["requests_per_s"] / r["off"]["requests_per_s"] for r in rounds)
        median = next(r for r in rounds if r[arm]["requests_per_s"] / r["off"]["requests_per_s"] == ratios[1])
        result[arm] = {"median_round": median, "vs_off": ratios[1], "ratios": ratios}
    return result


def _dropped(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("flywheel_spans_dropped_total "):
                return float(line.split()[1])
    return 0.0


def markdown(r: dict[str, Any]) -> str:
    lj, ls = r["latency_json"], r["latency_stream"]
    rows = [
        "| measure | telemetry off | spans to file | on vs off | spans over OTLP/HTTP | on vs off | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, label in (("json", "JSON"), ("stream", "stream")):
        t = r[f"throughput_{kind}"]
        cells = []
        for arm in ("on", "otlp"):
            m = t[arm]
            ratios = ", ".join(f"{x:.2f}" for x in m["ratios"])
            cells += [f"{m['median_round'][arm]['requests_per_s']:,.0f} req/s", f"×{m['vs_off']:.2f} ({ratios})"]
        off = t["on"]["median_round"]["off"]["requests_per_s"]
        rows.append(
            f"| {label} throughput, 32 connections (median of 3 rounds) | {off:,.0f} req/s | "
            + " | ".join(cells)
            + " | ≥ ×0.75 |"
        )
    for label, lat in (("JSON latency", lj), ("stream time to first chunk", ls)):
        rows.append(
            f"| {label} p50 @ 100 req/s | {lat['off']['p50_ms']:.2f} ms | {lat['on']['p50_ms']:.2f} ms | "
            f"{lat['on']['p50_ms'] - lat['off']['p50_ms']:+.2f} ms | {lat['otlp']['p50_ms']:.2f} ms | "
            f"{lat['otlp']['p50_ms'] - lat['off']['p50_ms']:+.2f} ms | |"
        )
    rows.append(
        f"| errors (socket / non-2xx), all rounds | {_errors(r, 'off')} | {_errors(r, 'on')} | | "
        f"{_errors(r, 'otlp')} | | 0 |"
    )
    notes = (
        f"\n\nSpans to file: {r['scrapes']} scrapes of /metrics, {r['spans_file_mb']:.0f} MB of spans written, "
        f"RSS {r['rss_mb_on']:.0f} MB at the end. Spans over OTLP/HTTP (protobuf, to nginx accepting "
        f"`/v1/traces`): RSS {r['rss_mb_otlp']:.0f} MB at the end, {r['otlp_dropped']:,.0f} spans dropped.\n"
    )
    return "\n".join(rows) + notes


def _errors(r: dict[str, Any], side: str) -> str:
    runs = [run[side] for kind in ("json", "stream") for run in r[f"throughput_{kind}"]["rounds"]]
    return f"{sum(x['socket_errors'] for x in runs)} / {sum(x['non_2xx'] for x in runs)}"


if __name__ == "__main__":
    bench_main(__doc__, "telemetry", run, markdown)
