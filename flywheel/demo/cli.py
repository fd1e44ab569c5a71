"""``flywheel demo``: the whole loop on one machine, offline (SPEC §2)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def add_command(commands: Any) -> None:
    parser = commands.add_parser(
        "demo", help="the self-improving loop end to end on loopback, against a simulated provider"
    )
    parser.add_argument("--upstream", help="run against a real OpenAI-compatible provider instead (base URL)")
    parser.add_argument("--model", help="the model to use with --upstream (task and optimizer)")
    parser.add_argument(
        "--out", type=Path, help="where to keep the registry, spans and reports (default: a new temp dir)"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every call count (0.3 for a quick look)")
    parser.add_argument("--plain", action="store_true", help="plain lines instead of the live display")
    parser.set_defaults(run=command)


def command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    # Imported here: the other commands build this parser and should not pay for the demo.
    from flywheel.demo.loop import Demo, DemoConfig, DemoFailed
    from flywheel.demo.narration import narrator
    from flywheel.demo.report import print_summary, write_chart, write_markdown

    if (args.upstream is None) != (args.model is None):
        print("flywheel demo: --upstream and --model go together", file=sys.stderr)
        return 2
    if not 0 < args.scale <= 10:
        print("flywheel demo: --scale must be in (0, 10]", file=sys.stderr)
        return 2
    # The demo narrates; library request logs (httpx, litellm, the proxy's own) would drown it.
    if args.log_level == "INFO":
        logging.getLogger().setLevel(logging.WARNING)
    workdir = args.out or Path(tempfile.mkdtemp(prefix="flywheel-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    key = environ.get("FLYWHEEL_API_KEY") or environ.get("OPENAI_API_KEY") if args.upstream else None
    config = DemoConfig(workdir, args.upstream, args.model, key, args.scale)
    say = narrator(config.simulated, args.plain)
    try:
        result = asyncio.run(Demo(config, say).run())
    except KeyboardInterrupt:
        print(f"\nflywheel demo: interrupted; everything is stopped. Files so far: {workdir}", file=sys.stderr)
        return 130
    except DemoFailed as exc:
        print(f"flywheel demo: the loop did not close: {exc}. Files: {workdir}", file=sys.stderr)
        return 1
    chart = write_chart(result, workdir / "quality.png")
    report = write_markdown(result, workdir / "demo-report.md", chart)
    print_summary(result, rich=not args.plain and sys.stdout.isatty())
    print(f"\nreport: {report}")
    print(f"chart:  {chart}" if chart else "chart:  not drawn (pip install 'flywheel[demo]' for matplotlib)")
    print(f"registry: {workdir / 'registry'}   spans: {workdir / 'spans.jsonl'}   optimizer: {result.optimizer_report}")
    return 0
