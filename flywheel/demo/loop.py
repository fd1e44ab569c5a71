"""``flywheel demo``: traces → failures → candidate → gate → canary → promote, then a
planted bad version rolled back with an alert — the real proxy, registry, optimizer and
canary controller on loopback; only the provider (and the users) are simulated.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import openai
from aiohttp import web

from deploy.controller import CanaryConfig, Controller
from deploy.judge import Thresholds
from deploy.notifier import Fanout
from deploy.schedule import Action
from deploy.spans_metrics import SpansMetrics
from deploy.webhook import WebhookNotifier
from flywheel.demo.simulation import OPTIMIZER_MODEL, TASK_MODEL, SimulatedProvider, on_loopback
from flywheel.demo.users import FIRST_PROMPT, SCHEMA, Ticket, rate, tickets, write_golden
from flywheel.registry import Registry, open_registry
from flywheel.registry.version import content_from_mapping
from flywheel.spans import open_span_source
from optimizer.llm import Model
from optimizer.optimize import OptimizeConfig, Outcome, optimize
from proxy.app import PROMPTS, TELEMETRY
from proxy.config import ProxyConfig
from proxy.content import CaptureContent
from proxy.server import RunningProxy, running
from proxy.tracing import Export
from proxy.upstreams import OpenAIUpstream, Upstreams

PROMPT = "triage"
BAD_EDIT = " Answer in one friendly sentence so customers feel heard."


@dataclass(frozen=True, slots=True)
class DemoConfig:
    workdir: Path
    upstream: str | None = None  # a real provider's base URL; None: the simulation
    model: str | None = None
    api_key: str | None = None
    scale: float = 1.0  # multiplies every call count (the test runs a shorter demo)
    concurrency: int = 16
    seed: int = 7
    # p95 latency canary/stable above which the controller rolls back. The simulation
    # answers on loopback in ~1 ms, where p95 is scheduling noise, so it is not judged there.
    latency_limit: float = 1.5

    @property
    def simulated(self) -> bool:
        return self.upstream is None

    def calls(self, count: int) -> int:
        return max(20, int(count * self.scale))


class Narrator(Protocol):
    def stage(self, title: str) -> None: ...
    def note(self, text: str) -> None: ...
    def traffic(self, label: str, total: int) -> contextlib.AbstractContextManager[Any]: ...


@dataclass
class Tally:
    calls: int = 0
    valid: int = 0
    liked: int = 0

    def add(self, valid: bool, liked: bool) -> None:
        self.calls += 1
        self.valid += valid
        self.liked += liked


@dataclass
class Point:
    """One batch of traffic: the chart's x is ``served`` (calls so far)."""

    served: int
    by_version: dict[str, Tally]


@dataclass
class Event:
    served: int
    kind: str  # registered | advance | hold | promote | rollback | planted
    version: str
    text: str


@dataclass
class DemoResult:
    workdir: Path
    simulated: bool
    points: list[Point] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    versions: list[dict[str, str]] = field(default_factory=list)
    first: str = ""  # the first stable version
    improved: str | None = None  # what the optimizer registered
    planted: str | None = None
    final_stable: str = ""
    optimizer_report: Path | None = None

    def served(self) -> int:
        return sum(t.calls for p in self.points for t in p.by_version.values())

    def quality(self, version: str, after: int = 0) -> Tally:
        total = Tally()
        for point in self.points:
            tally = point.by_version.get(version)
            if tally is not None and point.served > after:
                total.calls, total.valid, total.liked = (
                    total.calls + tally.calls,
                    total.valid + tally.valid,
                    total.liked + tally.liked,
                )
        return total


class Demo:
    def __init__(self, config: DemoConfig, narrator: Narrator) -> None:
        self.config = config
        self.say = narrator
        self.result = DemoResult(config.workdir, config.simulated)
        self.registry: Registry = open_registry(config.workdir / "registry")
        self.spans = config.workdir / "spans.jsonl"
        self._tickets = tickets(config.seed)

    async def run(self) -> DemoResult:
        async with self._world() as (proxy, provider_url, inbox):
            await self._baseline(proxy)
            await self._optimize(proxy, provider_url)
            await self._canary(proxy, inbox, "canary of the optimizer's version")
            await self._plant_bad_version(proxy)
            await self._canary(proxy, inbox, "canary of the planted bad version")
        self.result.final_stable = self.registry.rollout(PROMPT).stable
        self.result.versions = [
            {"hash": v.hash, "author": v.author, "parent": v.parent or ""} for v in self.registry.versions(PROMPT)
        ]
        return self.result

    @contextlib.asynccontextmanager
    async def _world(self) -> AsyncIterator[tuple[RunningProxy, str, list[dict[str, Any]]]]:
        config = self.config
        self.say.stage("Starting: provider, proxy, alert inbox")
        async with contextlib.AsyncExitStack() as stack:
            if config.simulated:
                provider = await stack.enter_async_context(SimulatedProvider().running())
                base_url = provider.url
                self.say.note(f"SIMULATED provider at {base_url} (not a language model; it follows rules it knows)")
            else:
                assert config.upstream is not None
                base_url = config.upstream.rstrip("/")
                self.say.note(f"real provider at {base_url}, model {config.model}")
            inbox: list[dict[str, Any]] = []
            inbox_url = await stack.enter_async_context(_alert_inbox(inbox))
            self._inbox_url = inbox_url
            first, _ = self.registry.push(
                PROMPT, content_from_mapping({"template": FIRST_PROMPT, "response_schema": SCHEMA})
            )
            self.result.first = first.hash
            proxy_config = ProxyConfig(
                upstreams=Upstreams(default=OpenAIUpstream(base_url, config.api_key)),
                registry=self.registry,
                reload_interval=0.5,
                port=0,
                drain_timeout=2,
                capture_content=CaptureContent.REDACTED,  # the optimizer reads what users saw
                export=Export(spans_file=self.spans),
            )
            proxy = await stack.enter_async_context(running(proxy_config))
            self.say.note(f"proxy at {proxy.url} · registry {self.registry_root} · spans {self.spans}")
            yield proxy, base_url, inbox

    @property
    def registry_root(self) -> Path:
        return self.config.workdir / "registry"

    async def _baseline(self, proxy: RunningProxy) -> None:
        self.say.stage(f"1. Production traffic on the first prompt ({self.result.first[:12]})")
        for _ in range(4):  # in batches, so the chart shows the first prompt's level over time
            await self._traffic(proxy, self.config.calls(100), "users")

    async def _optimize(self, proxy: RunningProxy, provider_url: str) -> None:
        self.say.stage("2. Optimizer: mine failures from the spans, propose, gate on the golden set")
        await _flush(proxy)
        model = self.config.model or TASK_MODEL
        key = self.config.api_key or "sk-simulation"
        report_dir = self.config.workdir / "optimizer-report"
        outcome, report = await optimize(
            OptimizeConfig(
                prompt=PROMPT,
                spans=str(self.spans),
                golden=write_golden(self.config.workdir / "golden.jsonl"),
                task=Model(model, provider_url, key),
                optimizer=Model(self.config.model or OPTIMIZER_MODEL, provider_url, key),
                candidates=2,
                rounds=1,
                max_calls=400,  # 2 candidates × (24 golden + 40 replayed failures) + the parent's answers
                report_dir=report_dir,
                canary_weight=10,
            ),
            self.registry,
        )
        self.result.optimizer_report = report_dir / "report.md"
        mining = report["mining"]
        self.say.note(
            f"mined {mining['failures']} failures in {mining['calls']} calls "
            f"({', '.join(f'{k} {n}' for k, n in mining['by_kind'].items())}); {report['calls']} model calls"
        )
        if outcome is not Outcome.PASSED:
            raise DemoFailed(f"no candidate passed the gate; report in {report_dir}")
        self.result.improved = report["registered"]
        winner = next(c for c in report["candidates"] if c["status"] == "passed")
        self.say.note(f"registered {report['registered'][:12]}: {winner.get('rationale', '')}")
        self._event("registered", report["registered"], "optimizer's version enters a 10 % canary")
        await proxy.app[PROMPTS].refresh()

    async def _plant_bad_version(self, proxy: RunningProxy) -> None:
        self.say.stage("4. A human edit that breaks the JSON: planted as a 25 % canary")
        stable = self.registry.version(PROMPT)
        assert stable.content.template is not None
        bad, _ = self.registry.push(
            PROMPT,
            content_from_mapping({"template": stable.content.template.text + BAD_EDIT, "response_schema": SCHEMA}),
        )
        self.registry.set_rollout(
            PROMPT, stable=stable.hash, canary=bad.hash, weight=25, actor="flywheel-demo", reason="planted bad version"
        )
        self.result.planted = bad.hash
        self.say.note(f"pushed {bad.hash[:12]} = the stable prompt +{BAD_EDIT!r}; canary at 25 %")
        self._event("planted", bad.hash, "planted bad version at 25 %")
        await proxy.app[PROMPTS].refresh()

    async def _canary(self, proxy: RunningProxy, inbox: list[dict[str, Any]], title: str) -> None:
        self.say.stage(f"{3 if 'optimizer' in title else 5}. Canary controller: {title}")
        latency_limit = float("inf") if self.config.simulated else self.config.latency_limit
        limits = Thresholds(
            min_sample=max(50, self.config.calls(80)),
            promote_sample=self.config.calls(500),
            max_latency_ratio=latency_limit,
        )
        controller = Controller(
            self.registry,
            SpansMetrics(open_span_source(self.spans)),
            Fanout([WebhookNotifier(self._inbox_url)]),
            CanaryConfig(PROMPT, steps=(10.0, 25.0, 50.0, 100.0), limits=limits),
        )
        for _ in range(40):
            canary = self.registry.rollout(PROMPT).canary
            if canary is None:
                return
            await self._traffic(proxy, self.config.calls(200), f"users ({title})")
            await _flush(proxy)
            verdict = await asyncio.to_thread(controller.step)  # blocking I/O: spans file, registry, webhook
            self._event(verdict.action.value, canary, verdict.reason)
            self.say.note(f"controller: {verdict.action.value} → {verdict.weight:g} % — {verdict.reason}")
            if verdict.action is Action.ROLLBACK:
                self.result.alerts = list(inbox)
                for alert in inbox:
                    self.say.note(f"ALERT received: {alert.get('text')}")
            await proxy.app[PROMPTS].refresh()
        raise DemoFailed("the canary did not finish in 40 steps")

    async def _traffic(self, proxy: RunningProxy, count: int, label: str) -> None:
        by_version: dict[str, Tally] = defaultdict(Tally)
        semaphore = asyncio.Semaphore(self.config.concurrency)
        model = self.config.model or TASK_MODEL
        async with (
            openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-demo-app", max_retries=0) as client,
            aiohttp.ClientSession() as session,
        ):

            async def one(ticket: Ticket) -> None:
                async with semaphore:
                    raw = await client.chat.completions.with_raw_response.create(
                        model=model,
                        messages=[{"role": "user", "content": ticket.text}],
                        extra_headers={"X-Prompt-Name": PROMPT, "X-Prompt-Key": ticket.user},
                    )
                    answer = raw.parse().choices[0].message.content
                    rating = rate(ticket, answer)
                    by_version[raw.headers["X-Prompt-Version"]].add(rating.schema_valid, rating.thumbs == "up")
                    feedback = {"request_id": raw.headers["X-Request-Id"], "thumbs": rating.thumbs}
                    if rating.comment:
                        feedback["comment"] = rating.comment
                    async with session.post(proxy.url + "/v1/feedback", json=feedback) as response:
                        response.raise_for_status()
                    progress.advance()

            with self.say.traffic(label, count) as progress:
                await asyncio.gather(*(one(next(self._tickets)) for _ in range(count)))
        self.result.points.append(Point(self.result.served() + count, dict(by_version)))

    def _event(self, kind: str, version: str, text: str) -> None:
        self.result.events.append(Event(self.result.served(), kind, version, text))


class DemoFailed(RuntimeError):
    """The loop did not close (reported, exit 1)."""


async def _flush(proxy: RunningProxy) -> None:
    """Spans are exported in batches off the request path; the next stage reads them now."""
    await asyncio.to_thread(proxy.app[TELEMETRY].provider.force_flush)


@contextlib.asynccontextmanager
async def _alert_inbox(received: list[dict[str, Any]]) -> AsyncIterator[str]:
    """A webhook receiver on loopback standing in for Slack: the controller's alerts land here."""

    async def receive(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/alerts", receive)
    async with on_loopback(app) as base_url:
        yield base_url + "/alerts"
