"""The canary judge against simulated truth: 200 runs per case (see deploy/simulate.py).

python -m bench.canary_sim --runs 200 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

from deploy.schedule import Action
from deploy.simulate import simulate

CASES = {"canary 5 points worse": (0.85, 0.90), "canary equal": (0.90, 0.90), "canary 5 points better": (0.95, 0.90)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    rows = [
        "| case (schema-valid rate canary vs stable) | rolled back | promoted | canary requests at rollback: median / p90 | intervals (median) |",
        "|---|---|---|---|---|",
    ]
    results = {}
    for name, (canary, stable) in CASES.items():
        rng = random.Random(args.seed)
        runs = [simulate(canary, stable, rng) for _ in range(args.runs)]
        rolled = sorted(r.canary_requests for r in runs if r.action is Action.ROLLBACK)
        promoted = sum(r.action is Action.PROMOTE for r in runs)
        at = f"{statistics.median(rolled):,.0f} / {rolled[int(0.9 * len(rolled))]:,}" if rolled else "—"
        results[name] = {
            "rolled_back": len(rolled),
            "promoted": promoted,
            "runs": args.runs,
            "canary_requests_at_rollback": rolled,
        }
        rows.append(
            f"| {name} ({canary:.0%} vs {stable:.0%}) | {len(rolled) / args.runs:.1%} | {promoted / args.runs:.1%} | {at} | "
            f"{statistics.median(r.intervals for r in runs):.0f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "canary.json").write_text(json.dumps(results) + "\n")
    table = "\n".join(rows) + "\n"
    (args.out / "canary.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
