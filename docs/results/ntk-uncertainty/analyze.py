"""The pre-registered analysis of issue 18's study (PREREGISTRATION.md), from `entk-al plot`'s
paired.csv files: the confirmatory test, the 42 intervals with Holm-adjusted Wilcoxon p per
(protocol, reference) family of the seven new strategies, and the best new strategy by the
pre-registered rule.

Usage: python docs/results/ntk-uncertainty/analyze.py MLP_PAIRED_CSV [CNN_PAIRED_CSV]
(paired.csv written by ``entk-al plot GRID --reference margin --reference random
--reference lookahead``). Prints Markdown tables.
"""

from __future__ import annotations

import csv
import sys

NEW = ["ntk_variance", "ntk_bald", "ntk_margin", "ntk_zmargin", "ntk_entropy", "ntk_epig",
       "max_herding", "uncertainty_herding"]
REFERENCES = ["margin", "random", "lookahead"]
#: paired.csv holds AUBC differences as fractions of 1; the pre-registration speaks in points.
POINTS = 100.0


def pts(row: dict, key: str) -> float:
    return POINTS * float(row[key])


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def read(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def table(rows: list[dict], protocol: str) -> dict:
    out = {}
    print(f"\n### {protocol}\n")
    print("| strategy | reference | seeds | mean AUBC diff (points) | 95% CI | Wilcoxon p | Holm p | W/T/L |")
    print("|---|---|---|---|---|---|---|---|")
    for ref in REFERENCES:
        fam = [r for r in rows if r["reference"] == ref and r["strategy"] in NEW]
        if not fam:
            continue
        adj = holm([float(r["wilcoxon_p"]) for r in fam])
        for r, p in zip(fam, adj):
            out[(r["strategy"], ref)] = r
            print(f"| {r['strategy']} | {ref} | {r['n_seeds']} | {pts(r, 'mean_diff'):+.2f} | "
                  f"[{pts(r, 'ci95_low'):+.2f}, {pts(r, 'ci95_high'):+.2f}] | {float(r['wilcoxon_p']):.3f} | "
                  f"{p:.3f} | {r['wins']}/{r['ties']}/{r['losses']} |")
    others = [r for r in rows if r["strategy"] not in NEW and r["reference"] in REFERENCES]
    if others:
        print("\nReferences against each other:\n")
        for r in others:
            print(f"- {r['strategy']} − {r['reference']}: {pts(r, 'mean_diff'):+.2f} "
                  f"[{pts(r, 'ci95_low'):+.2f}, {pts(r, 'ci95_high'):+.2f}], {r['n_seeds']} seeds, "
                  f"W/T/L {r['wins']}/{r['ties']}/{r['losses']}")
    return out


def main() -> None:
    mlp = table(read(sys.argv[1]), "MLP")
    cnn = table(read(sys.argv[2]), "CNN") if len(sys.argv) > 2 else {}
    vs_margin = sorted(((pts(r, "mean_diff"), s) for (s, ref), r in mlp.items() if ref == "margin"), reverse=True)
    if vs_margin:
        best, second = vs_margin[0], vs_margin[1] if len(vs_margin) > 1 else None
        rule = "highest mean paired AUBC difference against margin on the MLP"
        if second is not None and best[0] - second[0] < 0.05:
            tied = [s for d, s in vs_margin if best[0] - d < 0.05]
            on_cnn = sorted(((pts(cnn[(s, "margin")], "mean_diff"), s) for s in tied if (s, "margin") in cnn),
                            reverse=True)
            if on_cnn:
                best = (best[0], on_cnn[0][1])
                rule += f"; tie within 0.05 among {tied}, broken on the CNN"
        print(f"\nBest new strategy ({rule}): **{best[1]}** "
              f"(MLP vs margin: {', '.join(f'{s} {d:+.3f}' for d, s in vs_margin)})")
    if ("ntk_zmargin", "margin") in cnn:
        r = cnn[("ntk_zmargin", "margin")]
        confirmed = float(r["ci95_low"]) > 0
        print(f"\nConfirmatory test ntk_zmargin − margin on the CNN ({r['n_seeds']} seeds): "
              f"{pts(r, 'mean_diff'):+.2f} [{pts(r, 'ci95_low'):+.2f}, {pts(r, 'ci95_high'):+.2f}]: "
              f"{'confirmed' if confirmed else 'not confirmed'}")


if __name__ == "__main__":
    main()
