"""``flywheel optimize NAME --spans SRC --golden FILE --task-model M --optimizer-model M …`` (SPEC §2)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson


def add_command(commands: Any) -> None:
    parser = commands.add_parser(
        "optimize", help="mine failures, generate candidates, gate them, register the winner", description=__doc__
    )
    parser.add_argument("name")
    parser.add_argument(
        "--spans", required=True, help="span source: file, directory, glob or clickhouse://host:port/db"
    )
    parser.add_argument("--golden", type=Path, required=True, help="golden set, JSONL")
    parser.add_argument("--task-model", required=True, help="model that answers (unless the version sets one)")
    parser.add_argument("--optimizer-model", required=True, help="model that writes candidates and judges")
    parser.add_argument("--api-base", help="OpenAI-compatible base URL for both models")
    parser.add_argument("--candidates", type=int, default=3, help="candidates per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-calls", type=int, default=300, help="model calls at most, all included")
    parser.add_argument("--report", type=Path, default=Path("flywheel-report"), help="report directory")
    parser.add_argument("--canary-weight", type=float, help="start a canary of the winner at this percent")
    parser.add_argument("--registry", default="./.flywheel", help="DIR or k8s://NAMESPACE/CONFIGMAP")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(run=command)


def command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    # Imported here, not at the top: `flywheel proxy` builds this parser too and should not pay for it.
    from flywheel.registry import RegistryError, open_registry
    from optimizer.clickhouse_store import ClickHouseError
    from optimizer.golden import GoldenError
    from optimizer.llm import Model
    from optimizer.optimize import OptimizeConfig, Outcome, optimize

    key = environ.get("FLYWHEEL_API_KEY") or environ.get("OPENAI_API_KEY") if args.api_base else None
    if args.canary_weight is not None and not 0 < args.canary_weight <= 100:
        print("flywheel optimize: --canary-weight must be in (0, 100]", file=sys.stderr)
        return Outcome.ERROR
    config = OptimizeConfig(
        prompt=args.name,
        spans=args.spans,
        golden=args.golden,
        task=Model(args.task_model, args.api_base, key),
        optimizer=Model(args.optimizer_model, args.api_base, key),
        candidates=args.candidates,
        rounds=args.rounds,
        max_calls=args.max_calls,
        report_dir=args.report,
        canary_weight=args.canary_weight,
    )
    try:
        registry = open_registry(args.registry, environ.get("KUBECONFIG"))
        outcome, report = asyncio.run(optimize(config, registry))
    except (RegistryError, GoldenError, ClickHouseError, OSError) as exc:
        print(f"flywheel optimize: {exc}", file=sys.stderr)
        return Outcome.ERROR
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        registered = f"; registered {report['registered']}" if report.get("registered") else ""
        print(f"{report['outcome']}{registered}; report in {args.report}/report.md")
    return int(outcome)
