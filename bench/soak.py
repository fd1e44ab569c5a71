"""Soak: the proxy as a real process under steady mixed load for minutes, watched for drift.

Load: a paced client at ``--rate`` calls per second over ``--concurrency`` connections,
half JSON and half streamed chat calls through a managed prompt (50 % canary), a
thumbs up or down on every fifth call through ``POST /v1/feedback``, and ``/metrics``
scraped every 5 s as Prometheus would. Upstream: Debian's nginx from memory. Spans go
to ``--spans-file`` with rotation at 50 MB, so rotation happens during the run.

Recorded every 10 s: proxy RSS, calls, failures, dropped spans. Warm-up is the first
3 minutes: by then the table that links feedback to recent calls (``--remember-calls``,
20,000 calls) is full, and RSS should stay flat after it. At the end the proxy is
stopped (SIGTERM, drain) and every span file is read back with the optimizer's reader:
each call and each feedback must have its span.

    python -m bench.soak --minutes 10 --rate 150 --out bench/results
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.nginx_upstream import nginx_upstream
from bench.proxy_bench import (
    BODY,
    CHAT,
    HEADERS,
    STREAM_BODY,
    flywheel_proxy,
    managed_registry,
    rss_mb,
    write_results,
)
from flywheel.spans.source import open_span_source

WARM_UP_S = 180.0  # fills the 20,000-call feedback table (--remember-calls) at 150 calls/s
_DROPPED = re.compile(rb"^flywheel_spans_dropped_total(?:\{[^}]*\})? ([0-9.e+]+)$", re.M)


@dataclass
class Tally:
    calls: int = 0
    streams: int = 0
    feedback: int = 0
    failures: list[str] = field(default_factory=list)
    scrapes: int = 0
    dropped_spans: float = 0.0


async def _call(session: aiohttp.ClientSession, url: str, stream: bool, tally: Tally, rng: random.Random) -> None:
    headers = {**HEADERS, **({"X-Bench-Stream": "1"} if stream else {}), "X-Prompt-Key": f"user-{rng.random()}"}
    try:
        async with session.post(url + CHAT, data=STREAM_BODY if stream else BODY, headers=headers) as r:
            body = await r.read()
            if r.status != 200 or (stream and not body.endswith(b"data: [DONE]\n\n")):
                tally.failures.append(f"{r.status} stream={stream}")
                return
            request_id = r.headers["X-Request-Id"]
        tally.calls += 1
        tally.streams += stream
        if rng.random() < 0.2:
            feedback = {"request_id": request_id, "thumbs": rng.choice(["up", "down"])}
            async with session.post(url + "/v1/feedback", json=feedback) as r:
                await r.read()
                if r.status != 202 and r.status != 200:
                    tally.failures.append(f"feedback {r.status}")
                    return
            tally.feedback += 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally.failures.append(type(exc).__name__)


async def _scrape(session: aiohttp.ClientSession, url: str, tally: Tally) -> None:
    async with session.get(url + "/metrics") as r:
        text = await r.read()
    tally.scrapes += 1
    tally.dropped_spans = sum(float(v) for v in _DROPPED.findall(text))


async def load(url: str, pid: int, seconds: float, rate: float, concurrency: int) -> dict[str, Any]:
    tally, rng = Tally(), random.Random(7)
    samples: list[dict[str, float]] = []
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout) as session:
        pending: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        next_call = next_sample = next_scrape = start
        sent = 0
        while (now := time.perf_counter()) - start < seconds:
            if now >= next_scrape:
                pending.add(asyncio.create_task(_scrape(session, url, tally)))
                next_scrape += 5
            if now >= next_sample:
                samples.append(_sample(now - start, pid, tally))
                next_sample += 10
            while next_call <= now and len(pending) < concurrency * 4:
                pending.add(asyncio.create_task(_call(session, url, sent % 2 == 1, tally, rng)))
                sent += 1
                next_call += 1 / rate
            wait_for = max(0.0, min(next_call, next_sample, next_scrape) - time.perf_counter())
            if not pending:
                await asyncio.sleep(wait_for)
                continue
            done, pending = await asyncio.wait(pending, timeout=wait_for, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        if pending:
            await asyncio.wait(pending)
        await _scrape(session, url, tally)
        samples.append(_sample(time.perf_counter() - start, pid, tally))
    return {"sent": sent, "tally": tally, "samples": samples}


def _sample(at: float, pid: int, tally: Tally) -> dict[str, float]:
    return {
        "t_s": round(at, 1),
        "rss_mb": round(rss_mb(pid), 1),
        "calls": tally.calls,
        "failures": len(tally.failures),
        "dropped_spans": tally.dropped_spans,
    }


def count_spans(spans_file: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in open_span_source(spans_file).spans():
        kind = "feedback" if record.name.startswith("gen_ai.evaluation") or "feedback" in record.name else "call"
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def run(minutes: float, rate: float, concurrency: int, warm_up: float = WARM_UP_S) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch, nginx_upstream() as upstream:
        spans_file = Path(scratch) / "spans.jsonl"
        registry = managed_registry(Path(scratch) / "registry")
        flags = ["--registry", str(registry), "--spans-file", str(spans_file), "--spans-file-max-mb", "50"]
        with flywheel_proxy(upstream, flags) as (url, process):
            measured = asyncio.run(load(url, process.pid, minutes * 60, rate, concurrency))
        spans = count_spans(spans_file)
        rotated = len(list(Path(scratch).glob("spans.jsonl*")))
    tally: Tally = measured["tally"]
    samples = measured["samples"]
    after_warm_up = [s for s in samples if s["t_s"] >= warm_up] or samples[-1:]
    reference = after_warm_up[0]["rss_mb"]
    rss = [s["rss_mb"] for s in after_warm_up]
    return {
        "minutes": minutes,
        "rate_per_s": rate,
        "concurrency": concurrency,
        "sent": measured["sent"],
        "calls_ok": tally.calls,
        "streams_ok": tally.streams,
        "feedback_ok": tally.feedback,
        "failures": len(tally.failures),
        "failure_kinds": sorted(set(tally.failures))[:10],
        "scrapes": tally.scrapes,
        "dropped_spans": tally.dropped_spans,
        "spans_read_back": spans,
        "spans_lost": (tally.calls + tally.feedback) - sum(spans.values()),
        "span_files": rotated,
        "rss_mb_after_warm_up": reference,
        "rss_mb_end": rss[-1],
        "rss_drift_pct": round(100 * (max(rss, key=lambda v: abs(v - reference)) - reference) / reference, 1),
        "samples": samples,
        "machine": {"python": sys.version.split()[0]},
    }


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"Soak: {r['minutes']:g} min at {r['rate_per_s']:g} calls/s (half streamed, managed prompt, "
        f"feedback on 1 in 5), /metrics every 5 s.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| calls completed (streams) | {r['calls_ok']:,} ({r['streams_ok']:,}) |",
        f"| feedback accepted | {r['feedback_ok']:,} |",
        f"| failed requests | {r['failures']} |",
        f"| dropped spans (flywheel_spans_dropped_total) | {r['dropped_spans']:g} |",
        f"| spans read back / lost | {sum(r['spans_read_back'].values()):,} / {r['spans_lost']} |",
        f"| span files (rotation at 50 MB) | {r['span_files']} |",
        f"| RSS after warm-up → end | {r['rss_mb_after_warm_up']:.1f} MB → {r['rss_mb_end']:.1f} MB |",
        f"| largest RSS drift after warm-up | {r['rss_drift_pct']:+.1f} % |",
        "",
        "| t (s) | RSS (MB) | calls | failures | dropped spans |",
        "|---:|---:|---:|---:|---:|",
    ]
    step = max(1, len(r["samples"]) // 12)
    for s in r["samples"][::step] + ([r["samples"][-1]] if (len(r["samples"]) - 1) % step else []):
        lines.append(
            f"| {s['t_s']:.0f} | {s['rss_mb']:.1f} | {s['calls']:,} | {s['failures']} | {s['dropped_spans']:g} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=150, help="calls per second")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    write_results(args.out, "soak", run(args.minutes, args.rate, args.concurrency), markdown)


if __name__ == "__main__":
    main()
