"""Markdown tables from ``entk-al approx`` outputs (used for docs/results/pntk-approx/README.md).

Usage: python scripts/summarize_approx.py DIR [DIR ...]   (each DIR holds an approx.json)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from entk_al.report.approx import GIB, fit_slope, largest_n


def cp(n: int) -> str:
    return "init" if n == 0 else str(n)


def summarize(folder: Path) -> str:
    r = json.loads((folder / "approx.json").read_text())
    s = r["settings"]
    out = [f"### {folder.name}: {s['model']} on {s['dataset']}",
           f"N = {s['n_points']} test points × {s['subsets']} disjoint subsets (± = half the spread between "
           f"them); regression: {s['kr_labels']} labels, {s['eval_size']} test points, ridge_rel {s['ridge_rel']}.",
           "",
           "| width | trained on | net acc % | pNTK err | first-logit err | trace err | random-logit err | "
           "off-diag share | λmax Δrel | cond Δrel | KR acc eNTK / pNTK % | KR agree % | lin. agree % |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["records"]:
        kr, lin = x["kernel_regression"], x["linearized"]

        def e(k, x=x):
            return f"{x['distance'][k]:.3f} ± {x['distance_spread'][k] / 2:.3f}"

        out.append(f"| {x['width']} | {cp(x['checkpoint'])} | {100 * x['network_accuracy']:.1f} | "
                   f"{e('error_pntk')} | {e('error_first_logit')} | {e('error_trace')} | "
                   f"{e('error_random_logit')} | {e('offdiag_share')} | "
                   f"{x['spectrum']['lambda_max_rel_diff']:+.2f} | {x['spectrum']['cond_rel_diff']:+.2f} | "
                   f"{100 * kr['accuracy_entk']:.1f} / {100 * kr['accuracy_pntk']:.1f} | {100 * kr['agreement']:.1f} | "
                   f"{100 * lin['agreement']:.1f} |")
    fits = r["fits"]
    out += ["", "Fitted slope of log error vs log width: " + "; ".join(
        f"{cp(int(c))}: pNTK {f['error_pntk']['slope']:.2f}, off-diag {f['offdiag_share']['slope']:.2f}"
        for c, f in fits.items())]
    init = [x for x in r["records"] if x["checkpoint"] == 0]
    if len(init) >= 4:  # local slope of the widest half: is the rate approaching the theorem's -1/2?
        wide = init[len(init) // 2:]
        tail = {k: fit_slope([x["width"] for x in wide], [x["distance"][k] for x in wide])["slope"]
                for k in ("error_pntk", "offdiag_share")}
        out.append(f"Slope at init over widths {wide[0]['width']}–{wide[-1]['width']}: "
                   f"pNTK {tail['error_pntk']:.2f}, off-diag {tail['offdiag_share']:.2f}.")
    lin_rows = [x for x in r["records"] if "rel_error_entk_vs_real" in x["linearized"]]
    if lin_rows:
        out += ["", f"Linearized at init vs the network trained on the {s['kr_labels']} labels (test split):", "",
                "| width | rel. error eNTK-lin | rel. error pNTK-lin | rel. error f_init | "
                "argmax agree eNTK / pNTK % | net acc % |", "|---|---|---|---|---|---|"]
        for x in lin_rows:
            li = x["linearized"]
            out.append(f"| {x['width']} | {li['rel_error_entk_vs_real']:.3f} | {li['rel_error_pntk_vs_real']:.3f} | "
                       f"{li['rel_error_init_vs_real']:.3f} | {100 * li['agreement_entk_vs_real']:.1f} / "
                       f"{100 * li['agreement_pntk_vs_real']:.1f} | {100 * li['real_accuracy']:.1f} |")
    out += ["", "| width | N | pNTK s | eNTK s | eNTK/pNTK time | pNTK peak MiB | eNTK peak MiB | "
                f"largest N pNTK / eNTK in {s['memory_budget_gib']:g} GiB |", "|---|---|---|---|---|---|---|---|"]
    for c in r["cost"]:
        # recomputed from the raw peaks with the current formula (files from before it had peak/N²)
        last = c["sizes"][-1]
        big = {k: largest_n([x["n"] for x in c["sizes"]], [x[f"{k}_peak_bytes"] for x in c["sizes"]],
                            s["memory_budget_gib"] * GIB, last[f"{k}_kernel_bytes"] // last["n"] ** 2)
               for k in ("pntk", "entk")}
        for row in c["sizes"]:
            pk = lambda b: "–" if b is None else f"{b / 2**20:.1f}"  # noqa: E731
            out.append(f"| {c['width']} | {row['n']} | {row['pntk_seconds']:.3f} | {row['entk_seconds']:.3f} | "
                       f"{row['entk_seconds'] / max(row['pntk_seconds'], 1e-9):.1f}× | {pk(row['pntk_peak_bytes'])} | "
                       f"{pk(row['entk_peak_bytes'])} | {big['pntk']} / {big['entk']} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print("\n".join(summarize(Path(d)) for d in sys.argv[1:]))
