"""``flywheel canary`` end to end: a canary that breaks the schema is rolled back from the
span store and from a real Prometheus, and a real Alertmanager lists the alert."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from flywheel.registry import Registry, open_registry
from flywheel.registry.version import content_from_mapping
from tests.fake_upstream import FakeUpstream
from tests.processes import debian_server, free_port, run_flywheel, serving
from tests.test_prometheus import prometheus, until_series
from tests.traffic import ask, recording


def _registry(tmp_path: Path) -> tuple[Registry, str, str]:
    registry = open_registry(tmp_path / "registry")
    good = {"type": "object", "required": ["answer"]}
    broken = {"type": "object", "required": ["score"]}  # the fake answers {"answer": …}: never valid
    stable, _ = registry.push("extract", content_from_mapping({"template": "Extract.", "response_schema": good}))
    canary, _ = registry.push("extract", content_from_mapping({"template": "Extract!", "response_schema": broken}))
    registry.set_rollout("extract", stable=stable.hash, canary=canary.hash, weight=50, reason="try the new prompt")
    return registry, stable.hash, canary.hash


async def _traffic(client: Any, count: int = 300) -> None:
    for i in range(count):
        await ask(client, "extract", f"user-{i}", f"question {i}")


@contextlib.contextmanager
def alertmanager(tmp: Path) -> Iterator[str]:
    config = tmp / "alertmanager.yml"
    config.write_text('route: {receiver: "null"}\nreceivers: [{name: "null"}]\n')
    args = [
        f"--config.file={config}",
        f"--storage.path={tmp / 'am-data'}",
        "--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    with debian_server(("prometheus-alertmanager", "alertmanager"), args) as url:
        yield url


async def _ready(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url + "/-/ready") as r:
                    if r.status == 200:
                        return
            assert time.monotonic() < deadline, f"{url} never became ready"
            await asyncio.sleep(0.1)


async def flywheel(*args: str) -> tuple[int, str, str]:
    return await run_flywheel(*args)


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[tuple[str, list[Any]]]:
    received: list[Any] = []

    async def hook(request: aiohttp.web.Request) -> aiohttp.web.Response:
        received.append(await request.json())
        return aiohttp.web.Response(text="ok")

    app = aiohttp.web.Application()
    app.router.add_post("/hook", hook)
    async with serving(app) as url:
        yield url + "/hook", received


async def test_schema_breaking_canary_is_rolled_back_from_spans_and_alerted(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    registry, stable, canary = _registry(tmp_path)
    spans = tmp_path / "spans.jsonl"
    async with recording(upstream, registry, spans) as (_, client):
        await _traffic(client)
    with alertmanager(tmp_path) as am:
        await _ready(am)
        async with webhook_receiver() as (hook, received):
            code, out, err = await flywheel(
                "canary",
                "extract",
                "--spans",
                str(spans),
                "--once",
                "--alertmanager",
                am,
                "--webhook",
                hook,
                "--registry",
                str(registry.store.root),
                "--json",  # type: ignore[attr-defined]
            )
        assert code == 0, err
        verdict = orjson.loads(out.splitlines()[-1])
        assert verdict["action"] == "rollback" and "schema_valid" in verdict["reason"]
        async with aiohttp.ClientSession() as session, session.get(am + "/api/v2/alerts") as r:
            alerts = await r.json()
    rollout = registry.rollout("extract")
    assert (rollout.stable, rollout.canary, rollout.weight) == (stable, None, 0)
    last = rollout.history[-1]
    assert last.action == "rollback" and last.actor == "flywheel-canary" and "schema_valid" in last.reason
    assert last.evidence["schema_valid"]["canary"] == 0 and last.evidence["schema_valid"]["stable"] == 1
    [alert] = [a for a in alerts if a["labels"]["alertname"] == "FlywheelCanaryRollback"]
    assert alert["labels"]["prompt"] == "extract" and alert["labels"]["version"] == canary
    assert alert["labels"]["severity"] == "critical" and "schema_valid" in alert["annotations"]["reason"]
    assert alert["labels"]["reason"] == "schema_valid"
    assert received and received[0]["prompt"] == "extract" and received[0]["text"].startswith("[flywheel critical]")


async def test_rolled_back_from_a_real_prometheus(upstream: FakeUpstream, tmp_path: Path) -> None:
    registry, stable, canary = _registry(tmp_path)
    async with recording(upstream, registry, tmp_path / "spans.jsonl") as (proxy, client):
        with prometheus(proxy.url.removeprefix("http://"), tmp_path) as prom:
            await until_series(prom, "flywheel_registry_prompts", 1)  # scraping has begun
            await _traffic(client, 20)
            # increase() cannot see a counter's first value: let both arms' series be scraped once
            await until_series(prom, 'flywheel_requests_total{prompt="extract"}', 2)
            await _traffic(client)
            await until_series(prom, f'flywheel_schema_results_total{{prompt="extract",version="{canary}"}} > 100', 1)
            await until_series(
                prom, f'increase(flywheel_requests_total{{prompt="extract",version="{canary}"}}[5m]) > 100', 1
            )
            code, out, err = await flywheel(
                "canary",
                "extract",
                "--prometheus",
                prom,
                "--once",
                "--registry",
                str(registry.store.root),  # type: ignore[attr-defined]
            )
    assert code == 0, err
    assert out.startswith("rollback:") and "schema_valid" in out
    assert registry.rollout("extract").canary is None


async def test_unreachable_prometheus_holds_and_says_why(upstream: FakeUpstream, tmp_path: Path) -> None:
    registry, _, canary = _registry(tmp_path)
    before = registry.rollout("extract")
    code, out, _ = await flywheel(
        "canary",
        "extract",
        "--prometheus",
        f"http://127.0.0.1:{free_port()}",
        "--once",
        "--registry",
        str(registry.store.root),  # type: ignore[attr-defined]
    )
    assert code == 0 and out.startswith("hold: no metrics: Prometheus at") and "could not be queried" in out
    after = registry.rollout("extract")
    assert after.canary == canary and after.weight == before.weight  # never promoted, never advanced
    assert after.history[-1].action == "hold"


async def test_corrupt_rollout_writes_nothing(tmp_path: Path) -> None:
    registry, _, _ = _registry(tmp_path)
    path: Path = registry.store.root / "extract.rollout.json"  # type: ignore[attr-defined]
    path.write_text('{"name": "extract", "stab')
    code, _, err = await flywheel(
        "canary",
        "extract",
        "--spans",
        str(tmp_path / "none.jsonl"),
        "--once",
        "--registry",
        str(registry.store.root),  # type: ignore[attr-defined]
    )
    assert code == 1 and "extract.rollout.json" in err and "Traceback" not in err
    assert path.read_text() == '{"name": "extract", "stab'


@pytest.mark.parametrize("steps", ["10,5", "abc"])
async def test_bad_steps_are_a_clear_error(tmp_path: Path, steps: str) -> None:
    code, _, err = await flywheel("canary", "x", "--spans", "s", "--steps", steps, "--registry", str(tmp_path))
    assert code == 1 and "--steps" in err


def _history(path: Path, version: str, windows: list[tuple[float, int, float]]) -> None:
    """Spans of the stable version at chosen times: (start seconds, calls, schema-valid share)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from flywheel.spans import SpansFileExporter

    if path.exists():
        path.unlink()
    provider = TracerProvider()
    exporter = SpansFileExporter(path)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("flywheel.proxy")
    n = 0
    for start, calls, valid in windows:
        for i in range(calls):
            n += 1
            at = int((start + i) * 1e9)
            attributes = {
                "gen_ai.operation.name": "chat",
                "flywheel.request_id": f"req_{n}",
                "gen_ai.prompt.name": "extract",
                "gen_ai.prompt.version": version,
                "flywheel.prompt.arm": "stable",
                "flywheel.eval.schema_valid": i < calls * valid,
            }
            tracer.start_span("chat m", start_time=at, attributes=attributes).end(end_time=at + 200_000_000)
    provider.shutdown()


async def test_stable_degrading_against_its_own_baseline_alerts_and_resolves(tmp_path: Path) -> None:
    from deploy.controller import CanaryConfig, Controller
    from deploy.notifier import Fanout
    from deploy.spans_metrics import SpansMetrics
    from deploy.webhook import WebhookNotifier
    from flywheel.spans import open_span_source

    registry, stable, _ = _registry(tmp_path)
    registry.rollback("extract", reason="no canary now")
    spans = tmp_path / "spans.jsonl"
    now = time.time()
    async with webhook_receiver() as (hook, received):
        config = CanaryConfig("extract", recent_s=600, baseline_s=3000)
        controller = Controller(
            registry, SpansMetrics(open_span_source(spans)), Fanout([WebhookNotifier(hook)]), config
        )
        _history(spans, stable, [(now - 3000, 400, 0.95), (now - 500, 400, 0.80)])  # dropped after a model update
        reason = await asyncio.to_thread(controller.watch_stable, now)
        assert reason is not None and "schema_valid 80.0% vs 95.0%" in reason
        _history(spans, stable, [(now - 3000, 400, 0.95), (now - 500, 400, 0.95)])  # back to normal
        assert await asyncio.to_thread(controller.watch_stable, now) is None
    assert [(r["alert"], r["resolved"]) for r in received] == [
        ("FlywheelStableDegraded", False),
        ("FlywheelStableDegraded", True),
    ]
    assert received[0]["version"] == stable and received[0]["severity"] == "warning"


async def test_two_controllers_never_take_the_same_step(upstream: FakeUpstream, tmp_path: Path) -> None:
    from deploy.controller import CanaryConfig, Controller
    from deploy.notifier import Fanout
    from deploy.schedule import Action
    from deploy.spans_metrics import SpansMetrics
    from flywheel.registry.version import content_from_mapping as content
    from flywheel.spans import open_span_source

    registry = open_registry(tmp_path / "registry")
    stable, _ = registry.push("extract", content({"template": "A."}))
    canary, _ = registry.push("extract", content({"template": "B."}))
    registry.set_rollout("extract", stable=stable.hash, canary=canary.hash, weight=50)
    spans = tmp_path / "spans.jsonl"
    async with recording(upstream, registry, spans) as (_, client):
        await _traffic(client, 400)  # equal arms: the verdict is "advance"
    source = SpansMetrics(open_span_source(spans))
    config = CanaryConfig("extract", steps=(10, 50, 75, 100))
    other = Controller(registry, source, Fanout([]), config)

    class OtherStepsMeanwhile:
        def arm_stats(self, *args: Any) -> Any:
            other.step()  # the second controller moves while the first is measuring
            return source.arm_stats(*args)

    first = Controller(registry, OtherStepsMeanwhile(), Fanout([]), config)
    verdict = first.step()
    assert verdict.action is Action.HOLD and "moved meanwhile" in verdict.reason
    rollout = registry.rollout("extract")
    assert rollout.weight == 75 and [c.action for c in rollout.history].count("advance") == 1  # one step, not two


async def test_no_spans_yet_holds_and_never_promotes(tmp_path: Path) -> None:
    registry, _, canary = _registry(tmp_path)
    (tmp_path / "empty.jsonl").write_text("")
    code, out, _ = await flywheel(
        "canary",
        "extract",
        "--spans",
        str(tmp_path / "empty.jsonl"),
        "--once",
        "--steps",
        "50",
        "--registry",
        str(registry.store.root),  # type: ignore[attr-defined]
    )
    assert code == 0 and out.startswith("hold: no metrics: no spans of extract")
    assert registry.rollout("extract").canary == canary
