"""Failure mining over a large span store: time and peak RSS for N spans from files.

Writes N spans (default 1,000,000) in the proxy's OTLP-JSON lines format, 512 to a
line as the batch exporter writes them — GenAI call spans of two prompt versions with
content captured, ~5 % schema failures, ~1 % upstream errors, plus feedback spans —
then runs ``mine()`` over the files in a fresh process and reports seconds and peak RSS.

    python -m bench.mining_bench --spans 1000000 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

BATCH = 512


def _kv(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, list):
        return {"key": key, "value": {"arrayValue": {"values": [{"stringValue": v} for v in value]}}}
    return {"key": key, "value": {"stringValue": value}}


def _span(i: int, rng: random.Random) -> dict[str, Any]:
    request_id = f"req_{i:024x}"
    if i % 20 == 19:  # feedback on the call just before
        attributes = {
            "gen_ai.evaluation.name": "user_feedback",
            "gen_ai.evaluation.score.value": 0.0 if rng.random() < 0.5 else 1.0,
            "flywheel.request_id": f"req_{i - 1:024x}",
            "gen_ai.evaluation.explanation": rng.choice(["wrong total", "too long", "great", "missed the date"]),
        }
        name = "gen_ai.evaluation.result"
    else:
        version = "aaaaaaaaaaaa" if i % 2 else "bbbbbbbbbbbb"
        attributes = {
            "gen_ai.operation.name": "chat",
            "flywheel.request_id": request_id,
            "gen_ai.request.stream": False,
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
            "gen_ai.response.id": f"chatcmpl-{i}",
            "gen_ai.response.finish_reasons": ["stop"],
            "gen_ai.usage.input_tokens": 120,
            "gen_ai.usage.output_tokens": 40,
            "gen_ai.prompt.name": "extract",
            "gen_ai.prompt.version": version,
            "flywheel.prompt.arm": "canary" if i % 2 else "stable",
            "flywheel.eval.schema_valid": rng.random() > 0.05,
            "gen_ai.input.messages": orjson.dumps(
                [{"role": "user", "parts": [{"type": "text", "content": f"Invoice {i}: total {i % 997} EUR"}]}]
            ).decode(),
            "gen_ai.output.messages": orjson.dumps(
                [{"role": "assistant", "parts": [{"type": "text", "content": '{"total": 1}'}], "finish_reason": "stop"}]
            ).decode(),
            "http.response.status_code": 200,
        }
        if rng.random() < 0.01:
            attributes["error.type"] = "500"
        name = "chat gpt-4o-mini"
    start = 1_700_000_000_000_000_000 + i * 1_000_000
    return {
        "traceId": f"{i:032x}",
        "spanId": f"{i:016x}",
        "flags": 256,
        "name": name,
        "kind": 3,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(start + 900_000_000),
        "attributes": [_kv(k, v) for k, v in attributes.items()],
        "status": {},
    }


def write_spans(path: Path, count: int) -> None:
    rng = random.Random(7)
    resource_ = {"attributes": [_kv("service.name", "flywheel-proxy")]}
    with open(path, "wb") as out:
        for first in range(0, count, BATCH):
            spans = [_span(i, rng) for i in range(first, min(count, first + BATCH))]
            line = {
                "resourceSpans": [
                    {"resource": resource_, "scopeSpans": [{"scope": {"name": "flywheel.proxy"}, "spans": spans}]}
                ]
            }
            out.write(orjson.dumps(line) + b"\n")


def measure(path: Path) -> dict[str, Any]:
    """Run in a fresh process, so peak RSS is mining's own."""
    from flywheel.spans import open_span_source
    from optimizer.file_store import FileSpanStore
    from optimizer.mining import mine

    start = time.perf_counter()
    mined = mine(FileSpanStore(open_span_source(path)), "extract")
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "failures": mined.failures,
        "calls": sum(v.calls for v in mined.versions.values()),
        "groups": mined.groups,
        "sample": len(mined.sample),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "spans.jsonl"
        write_spans(path, args.spans)
        size_mb = path.stat().st_size / 1e6
        run = subprocess.run(
            [sys.executable, "-m", "bench.mining_bench", "--measure", str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
    result = {"spans": args.spans, "file_mb": size_mb, **json.loads(run.stdout)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mining.json").write_text(json.dumps(result, indent=2) + "\n")
    table = (
        "| spans | file | mining time | peak RSS | calls | failures | groups | target |\n|---|---|---|---|---|---|---|---|\n"
        f"| {result['spans']:,} | {size_mb:,.0f} MB | {result['seconds']:.1f} s | {result['peak_rss_mb']:.0f} MB | "
        f"{result['calls']:,} | {result['failures']:,} | {result['groups']} | ≤ 60 s, ≤ 500 MB |\n"
    )
    (args.out / "mining.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
