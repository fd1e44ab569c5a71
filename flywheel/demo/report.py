"""What the demo leaves behind: the summary table, a PNG chart of quality by version over
time, and a Markdown report — each labelled a simulation when it was one."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from flywheel.demo.loop import DemoResult, Tally
from flywheel.demo.narration import BANNER_SIMULATED


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f} %" if whole else "—"


def summary_rows(result: DemoResult) -> list[tuple[str, str, str]]:
    """(measure, before, after): the first prompt's calls against the final stable version's."""
    before = result.quality(result.first)
    after = result.quality(result.final_stable) if result.final_stable != result.first else Tally()
    decisions = Counter(e.kind for e in result.events if e.kind in ("advance", "hold", "promote", "rollback"))
    authors = Counter(v["author"] for v in result.versions)
    return [
        ("schema-valid answers", _pct(before.valid, before.calls), _pct(after.valid, after.calls)),
        ("users' thumbs up", _pct(before.liked, before.calls), _pct(after.liked, after.calls)),
        ("calls measured", f"{before.calls:,}", f"{after.calls:,}"),
        ("stable version", result.first[:12], result.final_stable[:12]),
        ("versions created", "", ", ".join(f"{n} by {a}" for a, n in sorted(authors.items()))),
        ("canary decisions", "", ", ".join(f"{n} {k}" for k, n in sorted(decisions.items()))),
        ("alerts", "", "; ".join(str(a.get("text")) for a in result.alerts) or "none"),
    ]


def print_summary(result: DemoResult, rich: bool) -> None:
    rows = summary_rows(result)
    title = "flywheel demo" + (" — SIMULATED provider and users" if result.simulated else "")
    if rich:
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            rich = False
        else:
            table = Table(title=title)
            for column in ("", "before (first prompt)", "after (final stable)"):
                table.add_column(column)
            for row in rows:
                table.add_row(*row)
            Console().print(table)
            return
    print(f"\n{title}")
    for measure, before, after in rows:
        print(f"  {measure:<22} {before:>24}  →  {after}")


def write_chart(result: DemoResult, path: Path) -> Path | None:
    """Schema-valid rate per version per batch; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axes = plt.subplots(figsize=(9, 4.5), dpi=110)
    versions = list(dict.fromkeys(v for p in result.points for v in p.by_version))
    for version in versions:
        xs = [p.served for p in result.points if version in p.by_version and p.by_version[version].calls >= 5]
        ys = [
            100 * p.by_version[version].valid / p.by_version[version].calls
            for p in result.points
            if version in p.by_version and p.by_version[version].calls >= 5
        ]
        axes.plot(xs, ys, marker="o", label=_label(result, version))
    for event in result.events:
        if event.kind in ("registered", "promote", "rollback", "planted"):
            axes.axvline(event.served, color="grey", linestyle=":", linewidth=1)
            height = 20 if event.kind == "planted" else 2  # planted comes right after a promotion
            axes.annotate(event.kind, (event.served, height), rotation=90, fontsize=8, color="grey")
    axes.set_xlabel("calls served")
    axes.set_ylabel("schema-valid answers (%)")
    axes.set_ylim(0, 105)
    title = "Quality by prompt version"
    axes.set_title(title + (" — SIMULATED provider" if result.simulated else ""))
    axes.legend(loc="center right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def _label(result: DemoResult, version: str) -> str:
    role = {result.first: "first", result.improved: "optimizer", result.planted: "planted bad"}.get(version, "")
    return f"{version[:12]} ({role})" if role else version[:12]


def write_markdown(result: DemoResult, path: Path, chart: Path | None) -> Path:
    lines = ["# flywheel demo", ""]
    if result.simulated:
        lines += [f"> **{BANNER_SIMULATED}**", ""]
    lines += ["| | before (first prompt) | after (final stable) |", "|---|---|---|"]
    lines += [f"| {m} | {b} | {a} |" for m, b, a in summary_rows(result)]
    lines += ["", "## What happened", ""]
    lines += [f"- after {e.served:,} calls: **{e.kind}** `{e.version[:12]}` — {e.text}" for e in result.events]
    if chart is not None:
        lines += ["", f"![quality by version]({chart.name})"]
    lines += ["", "## Files", ""]
    lines += [
        f"- registry: `{result.workdir / 'registry'}`",
        f"- spans (OTLP-JSON lines): `{result.workdir / 'spans.jsonl'}`",
        f"- optimizer report: `{result.optimizer_report}`",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path
