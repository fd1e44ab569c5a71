"""``flywheel canary`` end to end: a canary that breaks the schema is rolled back from the
span store and from a real Prometheus, and a real Alertmanager lists the alert."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
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
from tests.processes import free_port
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
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    assert binary, "Debian's prometheus-alertmanager is needed (.ci/run installs it)"
    config = tmp / "alertmanager.yml"
    config.write_text('route: {receiver: "null"}\nreceivers: [{name: "null"}]\n')
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.path={tmp / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)


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
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "flywheel.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ),
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode or 0, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[tuple[str, list[Any]]]:
    received: list[Any] = []

    async def hook(request: aiohttp.web.Request) -> aiohttp.web.Response:
        received.append(await request.json())
        return aiohttp.web.Response(text="ok")

    app = aiohttp.web.Application()
    app.router.add_post("/hook", hook)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook", received
    finally:
        await runner.cleanup()


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
