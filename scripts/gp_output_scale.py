"""Diagnostic: how should the GP's output scale σ² be set when the network interpolates its labels?

Not a test. Runs a protocol's rounds (``--protocol``, seeds ``--seeds``) with a probe strategy
that queries at random and, every round, builds the GP posterior on the round's candidates
(:func:`entk_al.lookahead.gp.fit_gp`), fits σ² by every rule of :data:`entk_al.lookahead.gp.SCALE_METHODS`, and
compares each with the σ² the candidates' *true* labels call for (the probe reads them from
the dataset; a real strategy never can):

    σ²_heldout = mean_j ‖y_j − base_j‖² / (O (M_jj + λ))

the maximum-likelihood scale of the Gaussian predictive N(base_j, σ²(M_jj + λ) I) on the
candidates, which are unlabeled, hence held out. Per round and rule it records σ²,
σ²/σ²_heldout, the held-out Gaussian NLL per output (nats), the median predictive std
σ√M_jj next to the median top-2 logit margin, and the Spearman correlation of M_jj with the
squared error ‖y_j − base_j‖² (does the GP's variance rank the errors at all?), and the
Spearman correlations of BALD (64 draws; softmax and simplex links) with M_jj and with
−margin of the network's outputs (is BALD variance sampling or margin sampling at that σ²?).

    OMP_NUM_THREADS=1 python scripts/gp_output_scale.py --protocol protocols/fashion-mnist-cpu.toml \\
        --seeds 0,1 --out runs/gp-scale/fashion.json

Writes a JSON summary (atomically) and prints a table of medians over rounds and seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from entk_al.lookahead.gp import SCALE_METHODS, fit_gp, output_scale
from entk_al.lookahead.gp_scores import bald_mc
from entk_al.lookahead.system import relative_ridge


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


class ScaleProbe:
    """Random queries; logs σ² by every rule against the held-out σ² (see the module docstring).

    Args:
        dataset: the run's dataset name (the probe reads the true labels from it).
        log: JSONL file the per-round rows are appended to.
        ridge_rel: λ relative to trace(K)/n.
    """

    name = "scale_probe"

    def __init__(self, dataset: str = "fashion-mnist", log: str = "scale_probe.jsonl", ridge_rel: float = 1e-3):
        from entk_al.data import load_dataset

        self.y = load_dataset(dataset).y_train.numpy()
        self.log, self.ridge_rel = log, ridge_rel

    def select(self, ctx, k: int) -> np.ndarray:
        cand = ctx.candidate_ids
        gp = fit_gp(ctx, cand, ridge_rel=self.ridge_rel, scale=1.0)
        pos = gp.positions(cand)
        lab = ctx.labeled_ids
        k_ll = ctx.kernel(lab).double().cpu()
        ridge = relative_ridge(k_ll, self.ridge_rel) + gp.posterior.jitter
        labels = ctx.labeled_onehot().double().cpu()
        resid = labels - ctx.logits(lab).double().cpu()
        y = torch.nn.functional.one_hot(torch.from_numpy(self.y[cand]), ctx.num_classes).double()
        base, m_jj = gp.mean(pos), gp.posterior.m_diag[torch.from_numpy(pos)]
        n_out = base.shape[1]
        err2 = ((y - base) ** 2).sum(1)
        var_unit = m_jj + gp.ridge
        held = float((err2 / (n_out * var_unit)).mean())
        f = gp.outputs(pos)
        top2 = f.topk(2, dim=1).values
        margin = float((top2[:, 0] - top2[:, 1]).median())
        row = {"round": ctx.round, "seed": ctx.seed, "n": int(len(lab)), "heldout": held,
               "train_resid_rms": float(resid.pow(2).mean().sqrt()), "heldout_resid_rms": float(
                   (y - base).pow(2).mean().sqrt()), "median_margin": margin,
               "spearman_var_err": _spearman(m_jj.numpy(), err2.numpy()), "rules": {}}
        eps = torch.from_numpy(np.random.default_rng(0).standard_normal((64, *base.shape)))
        for rule in (*SCALE_METHODS, "heldout"):
            s2 = held if rule == "heldout" else output_scale(k_ll, resid, labels, ridge, rule)
            var = s2 * var_unit
            nll = float((0.5 * torch.log(2 * math.pi * var) + err2 / (2 * n_out * var)).mean())
            bald = bald_mc(base, s2 * m_jj, eps).numpy()
            bald_s = bald_mc(base, s2 * m_jj, eps, "simplex").numpy()
            row["rules"][rule] = {"scale": s2, "ratio": s2 / held, "nll": nll,
                                  "median_std": float((s2 * m_jj).sqrt().median()),
                                  "bald_vs_var": _spearman(bald, m_jj.numpy()),
                                  "bald_vs_margin": _spearman(bald, -(top2[:, 0] - top2[:, 1]).numpy()),
                                  "simplex_bald_vs_var": _spearman(bald_s, m_jj.numpy()),
                                  "simplex_bald_vs_margin": _spearman(bald_s, -(top2[:, 0] - top2[:, 1]).numpy())}
        with open(self.log, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        return np.sort(ctx.rng.choice(cand, k, replace=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", default="protocols/fashion-mnist-cpu.toml")
    ap.add_argument("--seeds", default="0,1", help="comma-separated seed indices of the protocol")
    ap.add_argument("--rounds", type=int, default=None, help="override the protocol's rounds")
    ap.add_argument("--out", default=None, help="JSON file for all rows")
    args = ap.parse_args()

    from entk_al.fileio import write_json
    from entk_al.report.bench import Protocol
    from entk_al.run.loop import run_experiment

    proto = Protocol.from_file(args.protocol)
    wanted = {int(s) for s in args.seeds.split(",")}
    specs = {s.seed_index: s for s in proto.grid() if s.seed_index in wanted}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "probe.jsonl")
        for idx in sorted(specs):
            cfg = specs[idx].config
            cfg = dataclasses.replace(cfg, strategy=f"{Path(__file__).resolve()}:ScaleProbe",
                                      strategy_options={"dataset": cfg.dataset, "log": log},
                                      **({"rounds": args.rounds} if args.rounds is not None else {}))
            run_experiment(cfg, os.path.join(tmp, f"run{idx}"))
        rows = [json.loads(line) for line in open(log)]
    rules = (*SCALE_METHODS, "heldout")
    print(f"{proto.name}: {len(rows)} rounds; medians over rounds and seeds")
    print(f"  held-out σ² {np.median([r['heldout'] for r in rows]):.3g}, train residual rms "
          f"{np.median([r['train_resid_rms'] for r in rows]):.3g}, held-out residual rms "
          f"{np.median([r['heldout_resid_rms'] for r in rows]):.3g}, median top-2 margin "
          f"{np.median([r['median_margin'] for r in rows]):.3g}, Spearman(M_jj, err²) "
          f"{np.median([r['spearman_var_err'] for r in rows]):.3f}")
    print(f"  {'rule':<11} {'σ²':>10} {'σ²/held-out':>12} {'NLL/output':>11} {'median σ√M_jj':>14} "
          f"{'ρ(BALD, M_jj)':>14} {'ρ(BALD, −margin)':>17} {'simplex link: ρ(·, M_jj)':>25} {'ρ(·, −margin)':>14}")
    for rule in rules:
        get = lambda key, rule=rule: np.median([r["rules"][rule][key] for r in rows])  # noqa: E731
        print(f"  {rule:<11} {get('scale'):>10.3g} {get('ratio'):>12.3g} {get('nll'):>11.3f} "
              f"{get('median_std'):>14.3g} {get('bald_vs_var'):>14.3f} {get('bald_vs_margin'):>17.3f} "
              f"{get('simplex_bald_vs_var'):>25.3f} {get('simplex_bald_vs_margin'):>14.3f}")
    if args.out:
        write_json(args.out, {"protocol": proto.name, "seeds": sorted(specs), "rows": rows})


if __name__ == "__main__":
    main()
