"""``flywheel optimize`` end to end: production traffic through a real proxy, feedback,
spans on disk, then the optimizer job (a real process) against simulated models."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from flywheel.registry import Registry, open_registry
from flywheel.registry.version import content_from_mapping
from tests.fake_upstream import FakeUpstream
from tests.processes import run_flywheel
from tests.traffic import ask, give_feedback, recording

PARENT = "You read invoices and answer questions about them."
SCHEMA = {"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}


def simulated(regressing: bool = False) -> Any:
    """Task model, optimizer model and judge, told apart by their system prompts."""

    def model(body: Mapping[str, Any]) -> str:
        system = str(body["messages"][0].get("content", ""))
        if system.startswith("You improve system prompts"):
            user = body["messages"][1]["content"]
            parent = user.split("# Current prompt\n", 1)[1].split("\n", 1)[0]
            extra = " Reply with BROKEN totals." if regressing else " Always answer in JSON with a numeric total."
            return orjson.dumps({"rationale": "users need JSON", "prompt": parent + extra}).decode()
        if system.startswith("You grade answers"):
            answer = body["messages"][1]["content"].rsplit("Answer to grade: ", 1)[1]
            try:
                ok = isinstance(orjson.loads(answer), dict)
            except orjson.JSONDecodeError:
                ok = False
            return orjson.dumps({"pass": ok, "reason": "JSON" if ok else "not JSON"}).decode()
        total = 0 if "BROKEN" in system else 42
        return orjson.dumps({"total": total}).decode() if "JSON" in system else f"The total is {total} EUR."

    return model


async def production(upstream: FakeUpstream, registry: Registry, spans: Path) -> list[str]:
    """Twelve calls through the proxy (content captured), thumbs down on three."""
    async with recording(upstream, registry, spans) as (proxy, client):
        ids = [
            (await ask(client, "invoice", f"customer-{i}", f"What is the total of invoice {i}?", "task-model"))[0]
            for i in range(12)
        ]
        await give_feedback(
            proxy, [{"request_id": i, "thumbs": "down", "comment": "I need this as JSON for our ERP"} for i in ids[:3]]
        )
    return ids


def golden(path: Path) -> Path:
    lines = [
        {
            "id": f"total-{i}",
            "messages": [{"role": "user", "content": f"Total of invoice {i}?"}],
            "expect": {"contains": "42"},
        }
        for i in range(6)
    ]
    lines.append({"id": "json", "messages": [{"role": "user", "content": "Total?"}], "expect": {"schema": SCHEMA}})
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")
    return path


async def flywheel(*args: str) -> tuple[int, str, str]:
    return await run_flywheel(*args, env={"OPENAI_API_KEY": "sk-optimizer-test"})


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    registry = open_registry(tmp_path / "registry")
    registry.push("invoice", content_from_mapping({"template": PARENT, "response_schema": SCHEMA}))
    return registry


def _optimize_args(upstream: FakeUpstream, tmp_path: Path, registry: Registry) -> list[str]:
    return [
        "optimize",
        "invoice",
        "--spans",
        str(tmp_path / "spans.jsonl"),
        "--golden",
        str(golden(tmp_path / "golden.jsonl")),
        "--task-model",
        "task-model",
        "--optimizer-model",
        "optimizer-model",
        "--api-base",
        upstream.url + "/v1",
        "--candidates",
        "2",
        "--rounds",
        "2",
        "--max-calls",
        "200",
        "--report",
        str(tmp_path / "report"),
        "--registry",
        str(registry.store.root),  # type: ignore[attr-defined]
    ]


async def test_optimize_finds_gates_and_registers_a_better_prompt(
    upstream: FakeUpstream, registry: Registry, tmp_path: Path
) -> None:
    upstream.model = simulated()
    parent = registry.rollout("invoice").stable
    ids = await production(upstream, registry, tmp_path / "spans.jsonl")
    code, out, err = await flywheel(*_optimize_args(upstream, tmp_path, registry), "--canary-weight", "10")
    assert code == 0, err
    report = orjson.loads((tmp_path / "report" / "report.json").read_bytes())
    assert report["outcome"] == "passed" and report["mining"]["failures"] == 12  # all schema-invalid
    assert report["mining"]["by_kind"] == {"schema_invalid": 12, "negative_feedback": 3}
    winner = next(c for c in report["candidates"] if c["status"] == "passed")
    failures, gold = winner["verdict"]["failures"], winner["verdict"]["golden"]
    assert failures["fixed"] == failures["cases"] == 12 and failures["p_better"] < 0.001
    assert gold["broken"] == 0 and gold["fixed"] == 1 and gold["candidate_passed"] == 7
    assert "p better" in (tmp_path / "report" / "report.md").read_text()
    new = registry.version("invoice", report["registered"])
    assert new.author == "optimizer" and new.parent == parent and new.content.response_schema == SCHEMA
    assert set(new.lineage["failures"]) == set(ids) and new.lineage["gate"]["failures"]["fixed"] == 12
    rollout = registry.rollout("invoice")
    assert (rollout.stable, rollout.canary, rollout.weight) == (parent, new.hash, 10)
    assert rollout.history[-1].actor == "flywheel-optimizer" and report["calls"] <= 200


async def test_every_candidate_regresses_so_nothing_is_registered(
    upstream: FakeUpstream, registry: Registry, tmp_path: Path
) -> None:
    upstream.model = simulated(regressing=True)
    before = registry.rollout("invoice")
    await production(upstream, registry, tmp_path / "spans.jsonl")
    code, out, err = await flywheel(*_optimize_args(upstream, tmp_path, registry), "--canary-weight", "10")
    assert code == 3, (out, err)
    assert "no candidate passed" in out
    report = orjson.loads((tmp_path / "report" / "report.json").read_bytes())
    assert len(report["candidates"]) == 4 and all(
        "regresses the golden set" in c["verdict"]["reason"] for c in report["candidates"]
    )
    assert len(registry.versions("invoice")) == 1 and registry.rollout("invoice") == before


async def test_bad_golden_file_is_a_clear_error(upstream: FakeUpstream, registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "spans.jsonl").write_text("")
    args = _optimize_args(upstream, tmp_path, registry)
    (tmp_path / "golden.jsonl").write_text('{"id": "x", "expect": {"looks_good": true}}\n')
    args[args.index("--golden") + 1] = str(tmp_path / "bad.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"id": "x", "expect": {"looks_good": true}}\n')
    code, _, err = await flywheel(*args)
    assert code == 1 and "bad.jsonl:1: `expect` must be one of" in err and "Traceback" not in err
