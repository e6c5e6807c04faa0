"""The pre-registered "Which strategy should I use?" rule, per regime-map cell.

Per cell: the strategy with the highest mean AUBC is the cell's best; the recommendation is the
cheapest strategy (mean ``select_seconds`` per round in that cell; ties: margin, random, badge,
then the others) whose paired AUBC difference to the best has a 95% interval that includes
zero (the best itself qualifies). Cells where a kernel-based strategy beats margin with the
interval above zero are marked.

Usage: python docs/results/regime-map/recommend.py CELL_RUNS_DIR [...]   (each a folder of run
folders, e.g. docs/results/regime-map/q100/runs)
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from entk_al.report.plot import load_runs, paired_rows

KERNEL = ("lookahead", "ntk_variance", "ntk_bald", "ntk_margin", "ntk_zmargin", "ntk_entropy", "ntk_epig",
          "max_herding", "uncertainty_herding")
TIE_ORDER = ("margin", "random", "badge")


def select_seconds(cell: Path) -> dict[str, float]:
    per: dict[str, list[float]] = {}
    for rounds in cell.glob("*/rounds.jsonl"):
        strategy = json.loads((rounds.parent / "config.json").read_text())["strategy"]
        for line in rounds.read_text().splitlines():
            sec = json.loads(line).get("select_seconds")
            if sec is not None:
                per.setdefault(strategy, []).append(sec)
    return {s: statistics.mean(v) for s, v in per.items()}


def main() -> None:
    print("| cell | best (mean AUBC %) | recommended (select s/round) | kernel strategy above margin |")
    print("|---|---|---|---|")
    for arg in sys.argv[1:]:
        cell = Path(arg)
        runs, _ = load_runs(cell)
        means = {}
        for r in runs:
            means.setdefault(r.strategy, []).append(r.aubc)
        mean = {s: 100 * statistics.mean(v) for s, v in means.items()}
        best = max(mean, key=mean.get)
        ties = {best} | {row["strategy"] for row in paired_rows(runs, [best])
                         if row["ci95_low"] <= 0 <= row["ci95_high"]}
        cost = select_seconds(cell)
        rank = {s: (round(cost.get(s, float("inf")), 2), TIE_ORDER.index(s) if s in TIE_ORDER else len(TIE_ORDER))
                for s in ties}
        pick = min(ties, key=rank.get)
        above = [row["strategy"] for row in paired_rows(runs, ["margin"])
                 if row["strategy"] in KERNEL and row["ci95_low"] > 0]
        name = cell.parent.name if cell.name == "runs" else cell.name
        print(f"| {name} | {best} ({mean[best]:.2f}) | {pick} ({cost.get(pick, float('nan')):.2f}) | "
              f"{', '.join(above) or 'none'} |")


if __name__ == "__main__":
    main()
