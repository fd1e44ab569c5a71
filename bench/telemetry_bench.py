"""Cost of telemetry: the same proxy with telemetry off and on, side by side in one run.

No telemetry: ``bench.no_telemetry`` (no span, no metrics, answers not read). Spans off:
``OTEL_SDK_DISABLED=true`` (the SDK hands out no-op tracers), no span store, no scrape
(metrics and stream reading stay on). On: every call a GenAI span in
``--spans-file``, and ``/metrics`` scraped every second as Prometheus would. OTLP: the
same, with the spans sent over OTLP/HTTP (protobuf) instead, to nginx accepting
``/v1/traces``; gRPC: over OTLP/gRPC, to a gRPC server in this process that accepts and
discards. Upstream: nginx from memory; load: wrk and a paced client. Streams are measured
twice: in one read (nginx writes the whole canned stream at once: the worst case for
telemetry, whose reading is per event while the relay's cost is per read) and paced (an
event a write, 2 ms apart, as providers send tokens: 12 reads a call).

    python -m bench.telemetry_bench --duration 8 --out bench/results
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import statistics
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from bench.nginx_upstream import CAN_PACE, ECHO_MODULE, nginx_upstream
from bench.proxy_bench import bench_main, cpu_seconds, flywheel_proxy, paced, rss_mb, wrk


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


@contextlib.contextmanager
def grpc_collector() -> Iterator[str]:
    """An OTLP/gRPC TraceService on a free loopback port that answers every export with
    an empty (serialized) ExportTraceServiceResponse; yields its endpoint."""
    accept: Any = grpc.unary_unary_rpc_method_handler(lambda request, context: b"")  # bytes in, bytes out
    service = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService", {"Export": accept}
    )
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(2), handlers=[service])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop(None)


ARMS = ("none", "off", "on", "otlp", "grpc")
NAMES = {
    "none": "no telemetry",
    "off": "spans off",
    "on": "spans to file",
    "otlp": "spans over OTLP/HTTP",
    "grpc": "spans over OTLP/gRPC",
}
EXPORTING = ("on", "otlp", "grpc")
COMPARED = (*((arm, "off") for arm in EXPORTING), *((arm, "none") for arm in EXPORTING), ("off", "none"))


def run(duration: float, paced_count: int, connections: int) -> dict[str, Any]:
    if not CAN_PACE:
        raise SystemExit(f"paced streams need nginx's echo module ({ECHO_MODULE}): apt-get install nginx-light")
    results: dict[str, Any] = {}
    otlp_env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_ENDPOINT": ""}
    with tempfile.TemporaryDirectory() as scratch, nginx_upstream() as upstream, grpc_collector() as collector:
        otlp_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = upstream
        grpc_env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": collector}
        registry = ["--registry", f"{scratch}/none"]
        with (
            flywheel_proxy(upstream, registry, module="bench.no_telemetry") as (none, none_process),
            flywheel_proxy(upstream, registry, env={"OTEL_SDK_DISABLED": "true"}) as (off, off_process),
            flywheel_proxy(upstream, [*registry, "--spans-file", f"{scratch}/spans.jsonl"]) as (on, on_process),
            flywheel_proxy(upstream, registry, env=otlp_env) as (otlp, otlp_process),
            flywheel_proxy(upstream, registry, env=grpc_env) as (grpc_url, grpc_process),
            scraping(on) as scrapes,
            scraping(otlp),
            scraping(grpc_url),
        ):
            urls = {"none": none, "off": off, "on": on, "otlp": otlp, "grpc": grpc_url}
            processes = (none_process, off_process, on_process, otlp_process, grpc_process)
            pids = {arm: process.pid for arm, process in zip(ARMS, processes, strict=True)}
            results["latency_json"] = asyncio.run(paced({"direct": upstream, **urls}, 100, paced_count, False))
            results["latency_stream"] = asyncio.run(paced({"direct": upstream, **urls}, 100, paced_count, True))
            for kind, stream, pace, load in (
                ("json", False, False, connections),
                ("stream", True, False, connections),
                # 23 ms a call: four times the connections keep each proxy saturated
                ("paced", True, True, 4 * connections),
            ):
                results[f"throughput_{kind}"] = _throughput(urls, pids, stream, load, duration, pace)
                results[f"together_{kind}"] = _together(urls, pids, stream, load // 2, duration / 2, pace)
            results["scrapes"] = len(scrapes)
            results["rss_mb_on"] = rss_mb(on_process.pid)
            results["rss_mb_otlp"] = rss_mb(otlp_process.pid)
            results["rss_mb_grpc"] = rss_mb(grpc_process.pid)
            results["spans_file_mb"] = Path(f"{scratch}/spans.jsonl").stat().st_size / 1e6
            results["otlp_dropped"] = _dropped(otlp)
            results["grpc_dropped"] = _dropped(grpc_url)
    return results


def _throughput(
    urls: dict[str, str], pids: dict[str, int], stream: bool, connections: int, duration: float, pace: bool
) -> dict[str, Any]:
    """One wrk round per arm and per place in the order (five), the order rotating, so drift
    on a shared machine hits every arm alike; with the proxy's CPU time per request."""
    rounds = []
    for i in range(len(ARMS)):
        measured = {}
        for arm in ARMS[i:] + ARMS[:i]:
            before = cpu_seconds(pids[arm])
            result = wrk(urls[arm], stream, connections, duration, pace)
            requests = result["requests_per_s"] * duration
            measured[arm] = {**result, "cpu_us_per_request": (cpu_seconds(pids[arm]) - before) / requests * 1e6}
        rounds.append(measured)
    medians = {arm: statistics.median(r[arm]["requests_per_s"] for r in rounds) for arm in ARMS}
    cpu = {arm: statistics.median(r[arm]["cpu_us_per_request"] for r in rounds) for arm in ARMS}
    ratios = {
        f"{arm}_vs_{base}": sorted(r[arm]["requests_per_s"] / r[base]["requests_per_s"] for r in rounds)
        for arm, base in COMPARED
    }
    cpu_ratios = {
        f"{arm}_vs_{base}": sorted(r[base]["cpu_us_per_request"] / r[arm]["cpu_us_per_request"] for r in rounds)
        for arm, base in COMPARED
    }
    return {
        "connections": connections,
        "rounds": rounds,
        "median_requests_per_s": medians,
        "median_cpu_us_per_request": cpu,
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
    }


def _together(
    urls: dict[str, str],
    pids: dict[str, int],
    stream: bool,
    connections: int,
    duration: float,
    pace: bool,
    rounds: int = 5,
) -> dict[str, Any]:
    """Every arm under its own wrk at the same time, so all see the same moment of a host
    whose speed drifts: the CPU time a request per arm, and the ratios of COMPARED."""
    measured = []
    with concurrent.futures.ThreadPoolExecutor(len(ARMS)) as pool:
        for _ in range(rounds):
            before = {arm: cpu_seconds(pids[arm]) for arm in ARMS}
            runs = {arm: pool.submit(wrk, urls[arm], stream, connections, duration, pace) for arm in ARMS}
            done = {arm: run.result() for arm, run in runs.items()}
            measured.append({arm: (cpu_seconds(pids[arm]) - before[arm]) / done[arm]["requests"] * 1e6 for arm in ARMS})
    return {
        "connections": connections,
        "duration_s": duration,
        "cpu_us_per_request": measured,
        "cpu_ratios": {f"{arm}_vs_{base}": sorted(m[base] / m[arm] for m in measured) for arm, base in COMPARED},
    }


def _dropped(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("flywheel_spans_dropped_total "):
                return float(line.split()[1])
    return 0.0


KINDS = {"json": "JSON", "stream": "stream", "paced": "paced stream"}


def markdown(r: dict[str, Any]) -> str:
    runs = {kind: r[f"throughput_{kind}"] for kind in KINDS}
    rows = [
        f"| median of {len(ARMS)} rounds | " + " | ".join(NAMES[a] for a in ARMS) + " |",
        "|---|" + "---|" * len(ARMS),
    ]
    for kind, t in runs.items():
        line = " | ".join(f"{t['median_requests_per_s'][a]:,.0f} req/s" for a in ARMS)
        rows.append(f"| {KINDS[kind]} throughput, {t['connections']} connections | {line} |")
    for label, lat in (
        ("JSON latency p50 @ 100 req/s", r["latency_json"]),
        ("stream first chunk p50", r["latency_stream"]),
    ):
        rows.append(f"| {label} | " + " | ".join(f"{lat[a]['p50_ms']:.2f} ms" for a in ARMS) + " |")
    for kind, t in runs.items():
        line = " | ".join(f"{t['median_cpu_us_per_request'][a]:.0f} µs" for a in ARMS)
        rows.append(f"| {KINDS[kind]}: proxy CPU per request | {line} |")
    rows.append("| errors (socket / non-2xx), all rounds | " + " | ".join(_errors(r, a) for a in ARMS) + " |")
    measures = [
        (f"{KINDS[kind]} {how}", kind, how) for how in ("throughput", "by CPU", "by CPU, all at once") for kind in KINDS
    ]
    rows += [
        "",
        f"| median (the {len(ARMS)} rounds) | " + " | ".join(label for label, _, _ in measures) + " | target |",
        "|---|" + "---|" * (len(measures) + 1),
    ]
    for arm, base in COMPARED:
        cells = []
        for _, kind, how in measures:
            source = r[f"together_{kind}"] if how.endswith("all at once") else runs[kind]
            key = "ratios" if how == "throughput" else "cpu_ratios"
            cells.append(_median_of(source[key][f"{arm}_vs_{base}"]))
        target = "≥ ×0.75" if arm in EXPORTING else ""
        rows.append(f"| {NAMES[arm]} vs {NAMES[base]} | " + " | ".join(cells) + f" | {target} |")
    together = r["together_json"]
    notes = (
        "\n\nBy CPU: the base's CPU time per request over the arm's (each proxy is saturated in its rounds, "
        "so it tracks the throughput ratio: the spread is the VM's speed moving, not scheduling). "
        "All at once: the five proxies loaded together, each by its own wrk "
        f"(half the connections, {together['duration_s']:g} s, "
        f"{len(together['cpu_us_per_request'])} rounds), the same moment's speed for all. "
        "Stream: nginx writes the canned 12-event stream at once, so the proxy reads it in one go. "
        "Paced stream: the same events written one at a time 2 ms apart (nginx's echo module), "
        "so the proxy reads and relays each on its own, as from a provider sending tokens. "
        f"No telemetry: `bench.no_telemetry` (no span, metrics or reading of answers; not a user mode). "
        f"Spans off: `OTEL_SDK_DISABLED=true` (metrics and reading of answers stay on). "
        f"Spans to file: {r['scrapes']} scrapes of /metrics, {r['spans_file_mb']:.0f} MB in the spans file at the end "
        "(it rotates at 100 MB), "
        f"RSS {r['rss_mb_on']:.0f} MB at the end. Spans over OTLP/HTTP (protobuf, to nginx accepting "
        f"`/v1/traces`): RSS {r['rss_mb_otlp']:.0f} MB at the end, {r['otlp_dropped']:,.0f} spans dropped. "
        f"Spans over OTLP/gRPC (to a gRPC server in the bench's process that accepts and discards): "
        f"RSS {r['rss_mb_grpc']:.0f} MB at the end, {r['grpc_dropped']:,.0f} spans dropped.\n"
    )
    return "\n".join(rows) + notes


def _median_of(values: list[float]) -> str:
    return f"×{statistics.median(values):.2f} ({', '.join(f'{v:.2f}' for v in values)})"


def _errors(r: dict[str, Any], side: str) -> str:
    runs = [run[side] for kind in KINDS for run in r[f"throughput_{kind}"]["rounds"]]
    return f"{sum(x['socket_errors'] for x in runs)} / {sum(x['non_2xx'] for x in runs)}"


if __name__ == "__main__":
    bench_main(__doc__, "telemetry", run, markdown)
