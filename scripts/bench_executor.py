"""Benchmark: pool-scan and look-ahead kernel-row throughput, local vs ray with 1 and 2 workers.

Not a test. A synthetic pool (``--pool`` × ``--dim`` float32) and an MLP (``--width``); per
executor it times, after one warm-up:

- the pool scan: outputs and penultimate features of every pool id
  (:func:`entk_al.executor.scan.predict`), a fresh round each repetition so nothing is cached;
- look-ahead kernel rows: k(U, U ∪ L) for ``--eval`` rows and ``--eval + --labeled`` columns
  (:func:`entk_al.executor.kernel_rows.kernel_rows`, the look-ahead's dense path);
- one empty map call (the per-call round trip), and the driver's serial look-ahead work on
  the assembled kernel (Cholesky of K + λI and streamed MLMOC scores), which no worker count
  changes.

The local executor runs with ``--threads`` torch threads (default 1), each Ray actor with
``cpus_per_worker = --threads``: ratios compare one core with two. Results go to stdout
and, with ``--out``, to a JSON file (written atomically). docs/scaling.md quotes a run.

Usage: OMP_NUM_THREADS=1 python scripts/bench_executor.py [--pool 40000] [--eval 1500] [--out bench.json]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn


def _best(fn, reps: int) -> float:
    fn()  # warm-up (actors import torch, caches fill)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(ex, x: torch.Tensor, model: nn.Module, args) -> dict:
    from entk_al.executor.kernel_rows import kernel_rows
    from entk_al.executor.scan import predict
    from entk_al.ntk import pntk

    ids = np.arange(len(x))
    rng = np.random.default_rng(0)
    u = np.sort(rng.choice(len(x), args.eval, replace=False))
    lab = np.setdiff1d(ids, u)[:args.labeled]
    cols = x[torch.from_numpy(np.concatenate([u, lab]))]
    rnd = [0]

    def fresh():
        rnd[0] += 1
        ex.begin_round(rnd[0], 0, model)

    def scan():
        fresh()
        predict(ex, ids)

    def rows():
        fresh()
        kernel_rows(ex, pntk, u, cols)

    def empty():
        ex.map("predict", {0: np.zeros(1, dtype=np.int64)})  # cached after the first call

    fresh()
    return {"scan_s": _best(scan, args.reps), "kernel_rows_s": _best(rows, args.reps),
            "round_trip_s": _best(empty, 5)}


def driver_serial(x: torch.Tensor, model: nn.Module, args) -> dict:
    from entk_al.acquisition import lookahead_scores
    from entk_al.lookahead import fit_lookahead
    from entk_al.ntk import pntk
    from entk_al.sequential import Posterior

    m, n = args.eval, args.labeled
    xs = x[:m + n]
    k = pntk(model, xs).double()
    f = model(xs).detach().double()
    y = torch.nn.functional.one_hot(f.argmax(1), f.shape[1]).double()
    t0 = time.perf_counter()
    sysm = fit_lookahead(k[m:, m:], k[:m, m:], k[:m, :m], f[m:], y[m:], f[:m], ridge=1e-3)
    t1 = time.perf_counter()
    lookahead_scores(Posterior(sysm), torch.arange(m))
    t2 = time.perf_counter()
    return {"cholesky_solve_s": t1 - t0, "scores_s": t2 - t1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=40_000)
    ap.add_argument("--dim", type=int, default=784)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--eval", type=int, default=1500, help="look-ahead rows |U|")
    ap.add_argument("--labeled", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.pool, args.dim, generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(args.dim, args.width), nn.ReLU(), nn.Linear(args.width, args.width), nn.ReLU(),
                          nn.Linear(args.width, 10)).eval()

    import ray

    from entk_al.executor import LocalExecutor
    from entk_al.executor.ray_executor import RayExecutor

    results = {"local": measure(LocalExecutor(x), x, model, args)}
    ray.init(num_cpus=2 * args.threads, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for w in (1, 2):
            with RayExecutor(x, workers=w, cpus_per_worker=args.threads) as ex:
                results[f"ray-{w}"] = measure(ex, x, model, args)
    finally:
        ray.shutdown()
    results["driver"] = driver_serial(x, model, args)
    print(f"pool {args.pool} x {args.dim}, MLP width {args.width}, |U| = {args.eval}, n = {args.labeled}, "
          f"{args.threads} thread(s) per shard")
    print(f"{'executor':<10}{'scan ids/s':>14}{'kernel rows/s':>16}{'round trip ms':>15}")
    for name in ("local", "ray-1", "ray-2"):
        r = results[name]
        print(f"{name:<10}{args.pool / r['scan_s']:>14.0f}{args.eval / r['kernel_rows_s']:>16.1f}"
              f"{1e3 * r['round_trip_s']:>15.2f}")
    for what in ("scan_s", "kernel_rows_s"):
        print(f"speed-up ray-2 / ray-1 ({what}): {results['ray-1'][what] / results['ray-2'][what]:.2f}x; "
              f"ray-2 / local: {results['local'][what] / results['ray-2'][what]:.2f}x")
    d = results["driver"]
    print(f"driver serial: Cholesky + solves {d['cholesky_solve_s']:.3f} s, MLMOC scores {d['scores_s']:.3f} s")
    if args.out:
        from entk_al.fileio import write_json

        write_json(args.out, {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()
