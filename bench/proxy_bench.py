"""Proxy overhead: direct-to-upstream vs through ``flywheel proxy``, side by side in one run.

The upstream is Debian's nginx answering canned JSON/SSE from memory; load comes
from wrk (throughput at 32 connections) and from a paced aiohttp client (latency at
100 req/s, direct and proxied requests interleaved tick by tick so both see the
same machine). Writes JSON and Markdown figures to ``--out``.

    python -m bench.proxy_bench --duration 10 --out bench/results
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from bench.nginx_upstream import free_port, nginx_upstream, wait_listening

CHAT = "/v1/chat/completions"
BODY = b'{"model":"gpt-bench","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say something about foxes."}]}'
STREAM_BODY = BODY[:-1] + b',"stream":true}'
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench-not-a-key"}


@contextlib.contextmanager
def flywheel_proxy(
    upstream: str, extra: Sequence[str] = (), env: dict[str, str] | None = None, module: str = "flywheel.cli"
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        module,
        "--log-level",
        "WARNING",
        "proxy",
        "--port",
        str(port),
        "--upstream",
        upstream + "/v1",
        *extra,
    ]
    process = subprocess.Popen(command, env={**os.environ, **(env or {})})
    try:
        wait_listening(port)  # the proxy listens only once it is ready
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.terminate()
        process.wait(30)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- paced latency -----------------------------------------------------------------


async def _one(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> tuple[float, float]:
    """(time to first body bytes, total) in ms."""
    start = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as response:
        first = await response.content.readany()
        ttfc = time.perf_counter() - start
        assert response.status == 200 and first
        await response.read()
    return ttfc * 1000, (time.perf_counter() - start) * 1000


async def paced(targets: dict[str, str], rate: float, count: int, stream: bool) -> dict[str, Any]:
    """Interleave requests to every target at ``rate`` rounds per second (order rotates)."""
    body = STREAM_BODY if stream else BODY
    headers = {**HEADERS, **({"X-Bench-Stream": "1"} if stream else {})}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
    order = list(targets.items())
    connector = aiohttp.TCPConnector(limit=len(targets))
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(20):  # warm up connections and code paths
            for _, base in order:
                await _one(session, base + CHAT, body, headers)
        interval = 1 / rate
        next_tick = time.perf_counter()
        for i in range(count):
            for name, base in order[i % len(order) :] + order[: i % len(order)]:
                samples[name].append(await _one(session, base + CHAT, body, headers))
            next_tick += interval
            await asyncio.sleep(max(0.0, next_tick - time.perf_counter()))
    index = 0 if stream else 1  # time to first chunk for streams, whole answer otherwise
    result: dict[str, Any] = {}
    for name, values in samples.items():
        series = sorted(v[index] for v in values)
        result[name] = {"p50_ms": _pct(series, 50), "p99_ms": _pct(series, 99), "mean_ms": statistics.fmean(series)}
    for name in targets:
        if name != "direct":
            result[name]["added_p50_ms"] = result[name]["p50_ms"] - result["direct"]["p50_ms"]
            result[name]["added_p99_ms"] = result[name]["p99_ms"] - result["direct"]["p99_ms"]
    if "proxy" in result:
        result["added_p50_ms"] = result["proxy"]["added_p50_ms"]
        result["added_p99_ms"] = result["proxy"]["added_p99_ms"]
    result["rate_per_s"] = rate
    result["requests_each"] = count
    return result


def _pct(series: list[float], pct: float) -> float:
    return series[min(len(series) - 1, int(len(series) * pct / 100))]


# --- throughput with wrk -----------------------------------------------------------


def wrk(url: str, stream: bool, connections: int, duration: float, paced: bool = False) -> dict[str, Any]:
    """Load ``url`` for ``duration``; a paced stream comes an event a read (nginx_upstream)."""
    body = (STREAM_BODY if stream else BODY).decode()
    extra = f'wrk.headers["X-Bench-Stream"] = "{"paced" if paced else "1"}"\n' if stream else ""
    script = (
        f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        'wrk.headers["Authorization"] = "Bearer sk-bench-not-a-key"\n' + extra
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(script)
        lua.flush()
        output = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "-s", lua.name, url + CHAT],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return _parse_wrk(output)


def _parse_wrk(output: str) -> dict[str, Any]:
    def ms(text: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    latency = {f"p{p}_ms": ms(v) for p, v in re.findall(r"^\s+(50|90|99)%\s+(\S+)", output, re.M)}
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
        "requests": requests,
        "socket_errors": errors,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        **latency,
    }


# --- the run ------------------------------------------------------------------------


def managed_registry(root: Path) -> Path:
    """A registry where the bench request's system prompt is a managed prompt with a 50 %
    canary that sets params: every request is matched, assigned, injected, re-serialized."""
    from flywheel.registry import open_registry
    from flywheel.registry.version import content_from_mapping

    registry = open_registry(root)
    stable, _ = registry.push("terse", content_from_mapping({"template": "You are terse."}))
    canary, _ = registry.push("terse", content_from_mapping({"template": "Be terse.", "params": {"temperature": 0}}))
    registry.set_rollout("terse", stable=stable.hash, canary=canary.hash, weight=50)
    return root


def run(duration: float, paced_count: int, connections: int) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": {"cores": _cores(), "python": sys.version.split()[0]}}
    with (
        tempfile.TemporaryDirectory() as scratch,
        nginx_upstream() as upstream,
        flywheel_proxy(upstream, ["--registry", str(Path(scratch) / "none")]) as (proxied, process),
        flywheel_proxy(upstream, ["--registry", str(managed_registry(Path(scratch) / "reg"))]) as (managed, _),
    ):
        results["rss_mb_start"] = rss_mb(process.pid)
        targets = {"direct": upstream, "proxy": proxied, "managed": managed}
        for stream in (False, True):
            kind = "stream" if stream else "json"
            results[f"latency_{kind}"] = asyncio.run(paced(targets, 100, paced_count, stream))
            direct = wrk(upstream, stream, connections, duration)
            through = wrk(proxied, stream, connections, duration)
            results[f"throughput_{kind}"] = {
                "direct": direct,
                "proxy": through,
                "proxy_vs_direct": through["requests_per_s"] / direct["requests_per_s"],
            }
            if not stream:
                with_prompt = wrk(managed, stream, connections, duration)
                results[f"throughput_{kind}"]["managed"] = with_prompt
                results[f"throughput_{kind}"]["managed_vs_proxy"] = (
                    with_prompt["requests_per_s"] / through["requests_per_s"]
                )
        proxied_total = (
            paced_count + 20 + sum(results[f"throughput_{k}"]["proxy"]["requests"] for k in ("json", "stream"))
        )
        results["rss_mb_after"] = rss_mb(process.pid)
        results["requests_through_proxy"] = proxied_total
    return results


def _cores() -> int:
    return os.cpu_count() or 0


def markdown(r: dict[str, Any]) -> str:
    lj, ls = r["latency_json"], r["latency_stream"]
    tj, ts = r["throughput_json"], r["throughput_stream"]
    rows = [
        "| measure | direct (nginx) | through flywheel | added / ratio | target |",
        "|---|---|---|---|---|",
        f"| JSON latency p50 @ 100 req/s | {lj['direct']['p50_ms']:.2f} ms | {lj['proxy']['p50_ms']:.2f} ms | +{lj['added_p50_ms']:.2f} ms | ≤ +1 ms |",
        f"| JSON latency p99 @ 100 req/s | {lj['direct']['p99_ms']:.2f} ms | {lj['proxy']['p99_ms']:.2f} ms | +{lj['added_p99_ms']:.2f} ms | |",
        f"| stream time to first chunk p50 @ 100 req/s | {ls['direct']['p50_ms']:.2f} ms | {ls['proxy']['p50_ms']:.2f} ms | +{ls['added_p50_ms']:.2f} ms | ≤ +1 ms |",
        f"| stream time to first chunk p99 @ 100 req/s | {ls['direct']['p99_ms']:.2f} ms | {ls['proxy']['p99_ms']:.2f} ms | +{ls['added_p99_ms']:.2f} ms | |",
        f"| JSON latency p50 with a managed prompt (50 % canary, injected) | | {lj['managed']['p50_ms']:.2f} ms | +{lj['managed']['added_p50_ms']:.2f} ms | |",
        f"| stream TTFC p50 with a managed prompt | | {ls['managed']['p50_ms']:.2f} ms | +{ls['managed']['added_p50_ms']:.2f} ms | |",
        f"| JSON throughput, 32 connections | {tj['direct']['requests_per_s']:,.0f} req/s | {tj['proxy']['requests_per_s']:,.0f} req/s | ×{tj['proxy_vs_direct']:.2f} | ≥ 1,500 req/s |",
        f"| JSON throughput with a managed prompt | | {tj['managed']['requests_per_s']:,.0f} req/s | ×{tj['managed_vs_proxy']:.2f} of plain proxy | |",
        f"| JSON p99 under that load | {tj['direct'].get('p99_ms', 0):.2f} ms | {tj['proxy'].get('p99_ms', 0):.2f} ms | | |",
        f"| stream throughput, 32 connections | {ts['direct']['requests_per_s']:,.0f} req/s | {ts['proxy']['requests_per_s']:,.0f} req/s | ×{ts['proxy_vs_direct']:.2f} | |",
        f"| proxy RSS after {r['requests_through_proxy']:,} requests | | {r['rss_mb_after']:.0f} MB (start {r['rss_mb_start']:.0f} MB) | | ≤ 120 MB |",
        f"| errors (socket / non-2xx) through the proxy | | {tj['proxy']['socket_errors'] + ts['proxy']['socket_errors']} / {tj['proxy']['non_2xx'] + ts['proxy']['non_2xx']} | | 0 |",
    ]
    return (
        "\n".join(rows)
        + f"\n\n{r['machine']['cores']} cores, Python {r['machine']['python']}, nginx + wrk + proxy on one machine.\n"
    )


Run = Callable[[float, int, int], dict[str, Any]]


def bench_main(doc: str | None, name: str, run_bench: Run, render: Callable[[dict[str, Any]], str]) -> None:
    """The command line both benchmarks share: run, write ``NAME.json`` and ``NAME.md``, print."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--paced", type=int, default=1000, help="paced request rounds per latency run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    write_results(args.out, name, run_bench(args.duration, args.paced, args.connections), render)


def write_results(out: Path, name: str, results: dict[str, Any], render: Callable[[dict[str, Any]], str]) -> None:
    """``NAME.json`` and ``NAME.md`` in ``out``; the table is printed too."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    table = render(results)
    (out / f"{name}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    bench_main(__doc__, "proxy", run, markdown)
