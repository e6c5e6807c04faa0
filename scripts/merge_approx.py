"""Merge ``entk-al approx`` results of the same settings run for different widths into one
approx.json (every width is measured independently from the same seeds, so the merge equals
one run over all widths), then redraw the figures.

Usage: python scripts/merge_approx.py OUT_DIR IN_DIR [IN_DIR ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from entk_al.fileio import write_json
from entk_al.report.approx import STANDINS, fit_slope
from entk_al.report.approx_report import write_figures

IGNORED = {"widths", "threads"}


def merge(out: Path, inputs: list[Path]) -> dict:
    runs = [json.loads((d / "approx.json").read_text()) for d in inputs]
    base = {k: v for k, v in runs[0]["settings"].items() if k not in IGNORED}
    for d, r in zip(inputs, runs):
        other = {k: v for k, v in r["settings"].items() if k not in IGNORED}
        if other != base:
            raise SystemExit(f"{d}: settings differ: {sorted(k for k in base if base[k] != other.get(k))}")
    records = sorted((x for r in runs for x in r["records"]), key=lambda x: (x["width"], x["checkpoint"]))
    costs = sorted((c for r in runs for c in r["cost"]), key=lambda c: c["width"])
    fits = {}
    for n in base["checkpoints"]:
        rows = [x for x in records if x["checkpoint"] == n]
        fits[str(n)] = {k: fit_slope([x["width"] for x in rows], [x["distance"][k] for x in rows])
                        for k in [f"error_{s}" for s in STANDINS] + ["offdiag_share"]}
    result = {"settings": {**runs[0]["settings"], "widths": [c["width"] for c in costs],
                           "merged_from": [str(d) for d in inputs]},
              "records": records, "cost": costs, "fits": fits,
              "finished": all(r.get("finished", True) for r in runs)}
    write_json(out / "approx.json", result)
    write_figures(result, out, f"{base['model']} on {base['dataset']}")
    return result


if __name__ == "__main__":
    merge(Path(sys.argv[1]), [Path(a) for a in sys.argv[2:]])
