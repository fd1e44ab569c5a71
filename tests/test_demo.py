"""``flywheel demo``: a shortened run closes the loop; Ctrl-C stops everything cleanly."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from pathlib import Path

import pytest

from flywheel.demo.loop import Demo, DemoConfig
from flywheel.demo.narration import PlainNarrator
from flywheel.demo.report import write_chart, write_markdown
from flywheel.demo.simulation import TASK_MODEL, SimulatedProvider
from flywheel.registry import open_registry
from tests.processes import run_flywheel


async def test_shortened_demo_closes_the_loop(tmp_path: Path) -> None:
    out = io.StringIO()
    result = await Demo(DemoConfig(tmp_path, scale=0.4), PlainNarrator(simulated=True, out=out)).run()

    # The optimizer created a version, the canary promoted it, quality went up.
    assert result.improved is not None and result.final_stable == result.improved
    registry = open_registry(tmp_path / "registry")
    improved = registry.version("triage", result.improved)
    assert improved.author == "optimizer" and improved.parent == result.first
    before, after = result.quality(result.first), result.quality(result.improved)
    assert before.calls >= 100 and after.calls >= 100
    assert after.valid / after.calls > before.valid / before.calls + 0.2
    assert after.liked / after.calls > before.liked / before.calls + 0.2
    kinds = [e.kind for e in result.events]
    assert kinds.index("registered") < kinds.index("promote") < kinds.index("planted") < kinds.index("rollback")

    # The planted bad version was rolled back, with an alert delivered.
    assert result.planted is not None and registry.rollout("triage").canary is None
    assert [a["alert"] for a in result.alerts] == ["FlywheelCanaryRollback"]
    assert result.alerts[0]["version"] == result.planted and "schema_valid" in result.alerts[0]["reason"]
    history = registry.rollout("triage").history
    assert history[-1].action == "rollback" and history[-1].actor == "flywheel-canary"

    # Every output says it was a simulation.
    narration = out.getvalue()
    assert all(line.startswith("[simulation]") for line in narration.splitlines() if line.strip())
    chart = write_chart(result, tmp_path / "quality.png")
    assert chart is not None and chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = write_markdown(result, tmp_path / "demo-report.md", chart).read_text()
    assert "SIMULATION" in report and "rollback" in report and "quality.png" in report


async def test_upstream_and_model_point_the_loop_at_another_provider(tmp_path: Path) -> None:
    """``--upstream URL --model M``: proxy, optimizer and gate all use that provider
    (here the simulation, run as if it were a real one elsewhere)."""
    async with SimulatedProvider().running() as provider:
        config = DemoConfig(
            tmp_path,
            upstream=provider.url,
            model=TASK_MODEL,
            api_key="sk-provider",
            scale=0.3,
            latency_limit=float("inf"),  # loopback latency is noise (a CI run rolled back on it)
        )
        out = io.StringIO()
        result = await Demo(config, PlainNarrator(simulated=False, out=out)).run()
    assert not result.simulated and "[simulation]" not in out.getvalue()
    assert f"real provider at {provider.url}" in out.getvalue()
    assert provider.calls >= result.served()  # every task call and the optimizer's went there
    assert result.final_stable == result.improved, [(e.kind, e.text) for e in result.events]


async def test_demo_command_refuses_half_a_real_provider() -> None:
    code, _, err = await run_flywheel("demo", "--upstream", "http://127.0.0.1:9/v1")
    assert code == 2 and "--model" in err


async def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "flywheel.cli",
        "demo",
        "--plain",
        "--out",
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None and process.stderr is not None
    while b"calls from users" not in (line := await asyncio.wait_for(process.stdout.readline(), 60)):
        assert line, "the demo ended before its traffic started"
    process.send_signal(signal.SIGINT)
    code = await asyncio.wait_for(process.wait(), 15)
    err = (await process.stderr.read()).decode()
    assert code == 130, err
    assert "interrupted; everything is stopped" in err and "Traceback" not in err


@pytest.fixture(autouse=True)
def _no_network_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
