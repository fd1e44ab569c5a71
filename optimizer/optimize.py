"""``flywheel optimize``: spans → failures → candidates → gate → registry (SPEC §6).

Rounds of candidates from the optimizer model, each replayed through the gate; the next
round sees how the previous one did. The best passing candidate (most fixed, then the
fewest tokens) is registered with author ``optimizer``, its parent and its lineage, and
a canary is started only when ``--canary-weight`` asks for one.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flywheel.registry import Registry, RegistryError, Template, Version
from flywheel.spans import open_span_source
from optimizer.candidates import Candidate, propose
from optimizer.clickhouse_store import ClickHouseSpanStore
from optimizer.file_store import FileSpanStore
from optimizer.gate import Gate, Verdict, failure_cases
from optimizer.golden import load_golden
from optimizer.llm import LLM, BudgetExhausted, Model
from optimizer.mining import SpanStore, mine
from optimizer.report import verdict_json, write_report


class Outcome(enum.IntEnum):
    """The exit status of ``flywheel optimize``."""

    PASSED = 0
    ERROR = 1
    NO_CANDIDATE = 3


@dataclass(frozen=True, slots=True)
class OptimizeConfig:
    prompt: str
    spans: str
    golden: Path
    task: Model
    optimizer: Model
    candidates: int = 3
    rounds: int = 2
    max_calls: int = 300
    report_dir: Path = Path("flywheel-report")
    canary_weight: float | None = None
    sample: int = 40


def open_store(spec: str) -> SpanStore:
    if spec.startswith("clickhouse://"):
        return ClickHouseSpanStore.connect(spec)
    return FileSpanStore(open_span_source(spec))


async def optimize(config: OptimizeConfig, registry: Registry) -> tuple[Outcome, dict[str, Any]]:
    parent = registry.version(config.prompt)
    if parent.content.template is None:
        raise RegistryError(f"{config.prompt}: only template prompts can be optimized so far")
    mined = mine(open_store(config.spans), config.prompt, version=parent.hash, sample_size=config.sample)
    replayable = failure_cases(mined.sample, parent)
    llm = LLM(config.max_calls)
    gate = Gate(llm, config.task, config.optimizer, parent, load_golden(config.golden) + replayable)
    report: dict[str, Any] = {
        "prompt": config.prompt,
        "parent": parent.hash,
        "mining": {
            "calls": sum(v.calls for v in mined.versions.values()),
            "failures": mined.failures,
            "groups": mined.groups,
            "replayable": len(replayable),
            "content_captured": mined.content_captured,
            "by_kind": {str(k): n for k, n in sum((v.by_kind for v in mined.versions.values()), Counter()).items()},
        },
        "candidates": [],
        "max_calls": config.max_calls,
    }
    best = await _rounds(config, llm, gate, parent, mined.sample, report)
    report |= {"calls": llm.calls, "input_tokens": llm.input_tokens, "output_tokens": llm.output_tokens}
    outcome = Outcome.NO_CANDIDATE
    if best is not None:
        candidate, verdict = best
        report["registered"] = _register(
            config, registry, parent, candidate, verdict, [f.call.request_id for f in mined.sample]
        )
        outcome = Outcome.PASSED
    report["outcome"] = "passed" if outcome is Outcome.PASSED else "no candidate passed"
    write_report(config.report_dir, report)
    return outcome, report


async def _rounds(
    config: OptimizeConfig, llm: LLM, gate: Gate, parent: Version, failures: list[Any], report: dict[str, Any]
) -> tuple[Candidate, Verdict] | None:
    assert parent.content.template is not None
    best: tuple[Candidate, Verdict] | None = None
    previous: list[str] = []
    try:
        for round_ in range(1, config.rounds + 1):
            proposals = await propose(
                llm, config.optimizer, parent.content.template.text, failures, previous, config.candidates, round_
            )
            for proposal in proposals:
                if not isinstance(proposal, Candidate):
                    report["candidates"].append({"round": round_, "status": f"rejected: {proposal.reason}"})
                    continue
                verdict = await gate.evaluate(proposal.prompt)
                report["candidates"].append(
                    {
                        "round": round_,
                        "status": "passed" if verdict.passed else "failed the gate",
                        "rationale": proposal.rationale,
                        "prompt": proposal.prompt,
                        "verdict": verdict_json(verdict),
                    }
                )
                previous.append(
                    f"- Rewrite ({'passed' if verdict.passed else 'failed'}): {verdict.reason}\n{proposal.prompt}"
                )
                if verdict.passed and (best is None or _rank(verdict) > _rank(best[1])):
                    best = (proposal, verdict)
            if best is not None:
                break
    except BudgetExhausted as exc:
        report["stopped"] = str(exc)
    return best


def _rank(verdict: Verdict) -> tuple[int, int]:
    return (verdict.failures.fixed + verdict.golden.fixed, -verdict.candidate_input_tokens)


def _register(
    config: OptimizeConfig,
    registry: Registry,
    parent: Version,
    candidate: Candidate,
    verdict: Verdict,
    failures: list[str],
) -> str:
    content = dataclasses.replace(parent.content, template=Template.parse(candidate.prompt))
    evidence = {
        "golden": {"fixed": verdict.golden.fixed, "broken": verdict.golden.broken, "p_worse": verdict.golden.p_worse},
        "failures": {
            "fixed": verdict.failures.fixed,
            "broken": verdict.failures.broken,
            "p_better": verdict.failures.p_better,
        },
    }
    lineage = {
        "failures": failures,
        "report": str(config.report_dir / "report.json"),
        "rationale": candidate.rationale,
        "gate": evidence,
    }
    version, _ = registry.push(
        config.prompt, content, author="optimizer", parent=parent.hash, lineage=lineage, actor="flywheel-optimizer"
    )
    if config.canary_weight:
        registry.set_rollout(
            config.prompt,
            stable=parent.hash,
            canary=version.hash,
            weight=config.canary_weight,
            actor="flywheel-optimizer",
            reason=verdict.reason,
            evidence=evidence,
        )
    return version.hash
