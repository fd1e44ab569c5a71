"""``flywheel canary NAME (--prometheus URL | --spans SRC) [--steps 5,10,25,50,100]
[--once | --watch --interval SECONDS] [--alertmanager URL] [--webhook URL]`` (SPEC §2)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

import orjson

log = logging.getLogger("flywheel.canary")


def add_command(commands: Any) -> None:
    parser = commands.add_parser(
        "canary", help="step a canary: advance, hold, promote or roll back", description=__doc__
    )
    parser.add_argument("name")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prometheus", help="Prometheus base URL scraping the proxies")
    source.add_argument("--spans", help="span source: file, directory or glob")
    parser.add_argument("--steps", default="5,10,25,50,100", help="canary weights, percent")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="one step, then exit (a CronJob)")
    mode.add_argument("--watch", action="store_true", help="step every --interval seconds (a Deployment)")
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument("--alertmanager", help="Alertmanager base URL (API v2)")
    parser.add_argument("--webhook", help="JSON webhook URL (Slack-compatible)")
    parser.add_argument("--metrics-port", type=int, help="with --watch: serve flywheel_canary_decisions_total here")
    parser.add_argument("--alpha", type=float, default=0.02, help="rollback when worse with always-valid p ≤ this")
    parser.add_argument("--min-sample", type=int, default=100, help="requests per arm before any verdict")
    parser.add_argument("--promote-sample", type=int, default=3000, help="canary requests before promotion")
    parser.add_argument("--max-latency-ratio", type=float, default=1.5, help="canary p95 / stable p95 limit")
    parser.add_argument("--max-cost-ratio", type=float, default=1.5, help="canary / stable cost per request limit")
    parser.add_argument("--recent-window", type=float, default=3600.0, help="seconds of stable traffic checked …")
    parser.add_argument("--baseline-window", type=float, default=86400.0, help="… against this many seconds before")
    parser.add_argument("--registry", default="./.flywheel", help="DIR or k8s://NAMESPACE/CONFIGMAP")
    parser.add_argument("--json", action="store_true", help="print each verdict as JSON")
    parser.set_defaults(run=command)


def command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    # Imported here, not at the top: `flywheel proxy` builds this parser too and should not pay for it.
    from prometheus_client import start_http_server

    from deploy.alertmanager import AlertmanagerNotifier
    from deploy.controller import CanaryConfig, Controller, Decisions
    from deploy.judge import Thresholds
    from deploy.metrics import MetricsSource
    from deploy.notifier import Fanout, Notifier
    from deploy.prometheus_metrics import PrometheusMetrics
    from deploy.schedule import parse_steps
    from deploy.spans_metrics import SpansMetrics
    from deploy.webhook import WebhookNotifier
    from flywheel.registry import RegistryError, open_registry
    from flywheel.spans import open_span_source

    try:
        steps = parse_steps(args.steps)
        registry = open_registry(args.registry, environ.get("KUBECONFIG"))
    except (ValueError, RegistryError) as exc:
        print(f"flywheel canary: {exc}", file=sys.stderr)
        return 1
    metrics: MetricsSource = (
        PrometheusMetrics(args.prometheus) if args.prometheus else SpansMetrics(open_span_source(args.spans))
    )
    notifiers: list[Notifier] = []
    if args.alertmanager:
        notifiers.append(AlertmanagerNotifier(args.alertmanager))
    if args.webhook:
        notifiers.append(WebhookNotifier(args.webhook))
    decisions = Decisions()
    if args.watch and args.metrics_port:
        start_http_server(args.metrics_port, registry=decisions.registry)
    limits = Thresholds(
        alpha=args.alpha,
        min_sample=args.min_sample,
        promote_sample=args.promote_sample,
        max_latency_ratio=args.max_latency_ratio,
        max_cost_ratio=args.max_cost_ratio,
    )
    config = CanaryConfig(args.name, steps, limits, recent_s=args.recent_window, baseline_s=args.baseline_window)
    controller = Controller(registry, metrics, Fanout(notifiers), config, decisions)
    while True:
        try:
            verdict = controller.step()
        except RegistryError as exc:  # e.g. a corrupt rollout: nothing was written
            print(f"flywheel canary: {exc}", file=sys.stderr)
            if not args.watch:
                return 1
        else:
            line: Any = {"action": verdict.action.value, "weight": verdict.weight, "reason": verdict.reason}
            print(orjson.dumps(line).decode() if args.json else f"{verdict.action.value}: {verdict.reason}", flush=True)
            degraded = controller.watch_stable()
            if degraded:
                print(orjson.dumps({"stable": degraded}).decode() if args.json else degraded, flush=True)
        if not args.watch:
            return 0
        time.sleep(args.interval)
