"""The optimizer's report: JSON for machines, Markdown for the reviewer, per-case diffs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from optimizer.gate import ALPHA, Verdict, summary


def verdict_json(verdict: Verdict) -> dict[str, Any]:
    return {
        "passed": verdict.passed,
        "reason": verdict.reason,
        "golden": summary(verdict.golden),
        "failures": summary(verdict.failures),
        "candidate_input_tokens": verdict.candidate_input_tokens,
        "cases": [
            {
                "id": r.case.id,
                "source": r.case.source,
                "expect": r.case.expect.kind,
                "parent": {"passed": r.parent.passed, "answer": r.parent.answer, "error": r.parent.error},
                "candidate": {"passed": r.candidate.passed, "answer": r.candidate.answer, "error": r.candidate.error},
            }
            for r in verdict.results
        ],
    }


def write_report(directory: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / "report.json", directory / "report.md"
    json_path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    md_path.write_text(markdown(report), encoding="utf-8")
    return json_path, md_path


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# flywheel optimize {report['prompt']}: {report['outcome']}",
        "",
        f"Parent `{report['parent']}`. Mined {report['mining']['failures']} failures in "
        f"{report['mining']['calls']} calls ({report['mining']['groups']} groups); "
        f"{report['mining']['replayable']} replayable."
        + (
            ""
            if report["mining"]["content_captured"]
            else " **Content was not captured** (run the proxy with "
            "`--capture-content redacted`): failures could not be replayed, only the golden set was used."
        ),
        f"Model calls: {report['calls']} of {report['max_calls']}, tokens in/out {report['input_tokens']}/{report['output_tokens']}. "
        f"Paired exact McNemar tests, one-sided, alpha {ALPHA}.",
        "",
    ]
    if report.get("registered"):
        lines += [f"Registered `{report['registered']}` (author optimizer, parent `{report['parent']}`).", ""]
    for number, candidate in enumerate(report["candidates"], 1):
        lines.append(f"## Candidate {number} (round {candidate['round']}): {candidate['status']}")
        if candidate.get("rationale"):
            lines.append(f"Rationale: {candidate['rationale']}")
        verdict = candidate.get("verdict")
        if verdict:
            g, f = verdict["golden"], verdict["failures"]
            lines += [
                f"{verdict['reason']}",
                "",
                "| set | cases | parent passed | candidate passed | fixed | broken | p better | p worse |",
                "|---|---|---|---|---|---|---|---|",
                f"| golden | {g['cases']} | {g['parent_passed']} | {g['candidate_passed']} | {g['fixed']} | {g['broken']} | {g['p_better']:.4f} | {g['p_worse']:.4f} |",
                f"| failures | {f['cases']} | {f['parent_passed']} | {f['candidate_passed']} | {f['fixed']} | {f['broken']} | {f['p_better']:.4f} | {f['p_worse']:.4f} |",
                "",
                "| case | parent | candidate |",
                "|---|---|---|",
            ]
            lines += [f"| {c['id']} | {_mark(c['parent'])} | {_mark(c['candidate'])} |" for c in verdict["cases"]]
        if candidate.get("prompt"):
            lines += ["", "```", candidate["prompt"], "```"]
        lines.append("")
    return "\n".join(lines)


def _mark(outcome: dict[str, Any]) -> str:
    if outcome.get("error"):
        return "error"
    return "pass" if outcome["passed"] else "fail"
