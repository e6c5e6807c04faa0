"""Benchmark: streamed look-ahead scoring vs torch.matmul throughput and vs naive retraining.

Not a test. For each size (n labeled, M = T = m candidates = evaluation points) it:
1. builds a PSD kernel from random features Φ (P columns, float64): K = Φ_L Φ_Lᵀ, A = Φ_U Φ_Lᵀ,
   and streams B = Φ_U Φ_Uᵀ in column blocks (B is never built whole);
2. times one scoring pass (Cholesky of K + fit + streamed MLMOC over all m candidates),
   counts its floating-point operations and reports GFLOP/s;
3. measures this machine's float64 torch.matmul GFLOP/s in the same process, on the
   shape of the dominant product (m × n)(n × c), and reports the ratio (target ≥ 50%);
4. reports peak RSS of the process (each size runs in its own subprocess);
5. times naive retraining (the loop recipe: MLP, 200 SGD steps, then predicting U) for a
   few candidates and extrapolates it to all m candidates, reporting the speed ratio.

Usage: python scripts/bench_lookahead.py [--sizes 4000 20000] [--n 1000] [--features 512]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_gflops(m: int, n: int, c: int, reps: int = 3) -> float:
    a = torch.randn(m, n, dtype=torch.float64)
    b = torch.randn(n, c, dtype=torch.float64)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2.0 * m * n * c * reps / (time.perf_counter() - t) / 1e9


def naive_retrain_seconds(n: int, m: int, reps: int = 3) -> float:
    """Seconds per candidate of the loop's recipe: warm-started MLP, 200 steps, predict U."""
    import copy

    from entk_al.nets.models import build_model, predict
    from entk_al.nets.train import TrainConfig, train_model

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n + 1, 64, generator=g)
    y = torch.randint(0, 10, (n + 1,), generator=g)
    xu = torch.randn(m, 64, generator=g)
    net = build_model("mlp", (64,), 10)
    cfg = TrainConfig(epochs=1, min_steps=200)
    t = time.perf_counter()
    for _ in range(reps):
        w = copy.deepcopy(net)
        train_model(w, x, y, cfg, torch.Generator().manual_seed(1))
        predict(w, xu)
    return (time.perf_counter() - t) / reps


def run_single(m: int, n: int, p: int, o: int, budget_mb: int) -> dict:
    from entk_al.lookahead.acquisition import block_shape, lookahead_scores
    from entk_al.lookahead.posterior import Posterior
    from entk_al.lookahead.system import fit_lookahead

    g = torch.Generator().manual_seed(0)
    phi_l = torch.randn(n, p, generator=g, dtype=torch.float64) / p**0.5
    phi_u = torch.randn(m, p, generator=g, dtype=torch.float64) / p**0.5
    f_l = torch.randn(n, o, generator=g, dtype=torch.float64)
    y_l = torch.nn.functional.one_hot(torch.randint(0, o, (n,), generator=g), o).double()
    f_u = torch.randn(m, o, generator=g, dtype=torch.float64)
    k_ll, k_ul = phi_l @ phi_l.T, phi_u @ phi_l.T
    rss_inputs = peak_rss_mb()
    t0 = time.perf_counter()
    sysm = fit_lookahead(k_ll, k_ul, None, f_l, y_l, f_u, k_uu_diag=(phi_u * phi_u).sum(1), ridge=1e-3)
    post = Posterior(sysm, lambda rows, cols: phi_u[rows] @ phi_u[cols].T)
    t1 = time.perf_counter()
    scores = lookahead_scores(post, torch.arange(m), memory_budget_bytes=budget_mb * 2**20)
    t2 = time.perf_counter()
    rss_scoring = peak_rss_mb()
    assert torch.isfinite(scores).all()
    rows, cols = block_shape(m, m, 48, budget_mb * 2**20)
    fit_flops = n**3 / 3 + 2.0 * n * n * (m + o) + 2.0 * m * n * o + 2.0 * m * n
    stream_flops = 2.0 * m * m * p + 2.0 * m * m * n + 2.0 * m * m * o + 12.0 * m * m
    total = fit_flops + stream_flops
    seconds = t2 - t0
    mm = matmul_gflops(m, n, cols)
    la_per_cand = seconds / m
    naive = naive_retrain_seconds(n, m)
    return {"m": m, "n": n, "features": p, "outputs": o, "threads": torch.get_num_threads(),
            "fit_seconds": t1 - t0, "stream_seconds": t2 - t1, "scoring_seconds": seconds,
            "gflop": total / 1e9, "gflops": total / seconds / 1e9, "matmul_gflops": mm,
            "ratio_to_matmul": total / seconds / 1e9 / mm, "block": [rows, cols], "memory_budget_mb": budget_mb,
            "peak_rss_mb": rss_scoring, "rss_after_inputs_mb": rss_inputs,
            "dense_B_would_need_mb": m * m * 8 / 2**20, "dense_CxTxO_would_need_mb": m * m * o * 8 / 2**20,
            "naive_retrain_seconds_per_candidate": naive,
            "naive_retrain_all_candidates_seconds_extrapolated": naive * m,
            "speedup_vs_naive_retraining": naive / la_per_cand}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4000, 20000])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--features", type=int, default=512)
    ap.add_argument("--outputs", type=int, default=10)
    ap.add_argument("--budget-mb", type=int, default=256)
    ap.add_argument("--single", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help="Also write results here.")
    args = ap.parse_args()
    if args.single is not None:
        print(json.dumps(run_single(args.single, args.n, args.features, args.outputs, args.budget_mb)))
        return
    results = []
    for m in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--single", str(m), "--n", str(args.n), "--features",
                              str(args.features), "--outputs", str(args.outputs), "--budget-mb", str(args.budget_mb)],
                             check=True, capture_output=True, text=True, env=os.environ)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"n={r['n']} M=T={r['m']} P={r['features']} O={r['outputs']} threads={r['threads']}: "
              f"scoring {r['scoring_seconds']:.2f}s (fit {r['fit_seconds']:.2f}s), {r['gflops']:.1f} GFLOP/s = "
              f"{100 * r['ratio_to_matmul']:.0f}% of torch.matmul ({r['matmul_gflops']:.1f} GFLOP/s), "
              f"peak RSS {r['peak_rss_mb']:.0f} MiB ({r['rss_after_inputs_mb']:.0f} before scoring; "
              f"dense B alone would be {r['dense_B_would_need_mb']:.0f} MiB), "
              f"naive retraining {r['naive_retrain_seconds_per_candidate']:.2f}s/candidate -> "
              f"look-ahead {r['speedup_vs_naive_retraining']:.0f}x faster (extrapolated to all {r['m']} candidates)",
              flush=True)
    if args.json:
        from entk_al.fileio import write_json

        write_json(args.json, results)


if __name__ == "__main__":
    main()
