"""Cost of telemetry: the same proxy with telemetry off and on, side by side in one run.

Off: ``OTEL_SDK_DISABLED=true`` (the SDK hands out no-op tracers), no span store, no
scrape. On: every call a GenAI span in ``--spans-file`` (batch export in the SDK's
thread), streams observed for usage, and ``/metrics`` scraped every second as
Prometheus would. Upstream: nginx from memory; load: wrk and a paced client.

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


def run(duration: float, paced_count: int, connections: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory() as scratch,
        nginx_upstream() as upstream,
        flywheel_proxy(upstream, ["--registry", f"{scratch}/none"], env={"OTEL_SDK_DISABLED": "true"}) as (off, _),
        flywheel_proxy(upstream, ["--registry", f"{scratch}/none", "--spans-file", f"{scratch}/spans.jsonl"]) as (
            on,
            on_process,
        ),
        scraping(on) as scrapes,
    ):
        targets = {"direct": upstream, "off": off, "on": on}
        for stream in (False, True):
            kind = "stream" if stream else "json"
            results[f"latency_{kind}"] = asyncio.run(paced(targets, 100, paced_count, stream))
            rounds = []
            for i in range(3):  # alternating order, so drift on a shared machine hits both sides
                first, second = (off, on) if i % 2 == 0 else (on, off)
                measured = {
                    first: wrk(first, stream, connections, duration),
                    second: wrk(second, stream, connections, duration),
                }
                rounds.append({"off": measured[off], "on": measured[on]})
            ratios = sorted(r["on"]["requests_per_s"] / r["off"]["requests_per_s"] for r in rounds)
            median = sorted(rounds, key=lambda r: r["on"]["requests_per_s"] / r["off"]["requests_per_s"])[1]
            results[f"throughput_{kind}"] = {**median, "on_vs_off": ratios[1], "ratios": ratios, "rounds": rounds}
        results["scrapes"] = len(scrapes)
        results["rss_mb_on"] = rss_mb(on_process.pid)
        results["spans_file_mb"] = Path(f"{scratch}/spans.jsonl").stat().st_size / 1e6
    return results


def markdown(r: dict[str, Any]) -> str:
    lj, ls, tj, ts = r["latency_json"], r["latency_stream"], r["throughput_json"], r["throughput_stream"]
    rows = [
        "| measure | telemetry off | telemetry on | on vs off | target |",
        "|---|---|---|---|---|",
        f"| JSON throughput, 32 connections (median of 3 rounds) | {tj['off']['requests_per_s']:,.0f} req/s | {tj['on']['requests_per_s']:,.0f} req/s | ×{tj['on_vs_off']:.2f} ({', '.join(f'{x:.2f}' for x in tj['ratios'])}) | ≥ ×0.75 |",
        f"| stream throughput, 32 connections (median of 3 rounds) | {ts['off']['requests_per_s']:,.0f} req/s | {ts['on']['requests_per_s']:,.0f} req/s | ×{ts['on_vs_off']:.2f} ({', '.join(f'{x:.2f}' for x in ts['ratios'])}) | ≥ ×0.75 |",
        f"| JSON latency p50 @ 100 req/s | {lj['off']['p50_ms']:.2f} ms | {lj['on']['p50_ms']:.2f} ms | +{lj['on']['p50_ms'] - lj['off']['p50_ms']:.2f} ms | |",
        f"| stream time to first chunk p50 @ 100 req/s | {ls['off']['p50_ms']:.2f} ms | {ls['on']['p50_ms']:.2f} ms | +{ls['on']['p50_ms'] - ls['off']['p50_ms']:.2f} ms | |",
        f"| errors (socket / non-2xx), all rounds | {_errors(r, 'off')} | {_errors(r, 'on')} | | 0 |",
    ]
    notes = (
        f"\n\nTelemetry on: {r['scrapes']} scrapes of /metrics, {r['spans_file_mb']:.0f} MB of spans written, "
        f"RSS {r['rss_mb_on']:.0f} MB at the end.\n"
    )
    return "\n".join(rows) + notes


def _errors(r: dict[str, Any], side: str) -> str:
    runs = [run[side] for kind in ("json", "stream") for run in r[f"throughput_{kind}"]["rounds"]]
    return f"{sum(x['socket_errors'] for x in runs)} / {sum(x['non_2xx'] for x in runs)}"


if __name__ == "__main__":
    bench_main(__doc__, "telemetry", run, markdown)
