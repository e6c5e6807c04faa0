"""Benchmark: pool-scan and look-ahead kernel-row throughput, local vs ray with 1 and 2 workers.

Not a test. A synthetic pool (``--pool`` × ``--dim`` float32) and an MLP (``--width``); per
executor it times, after one warm-up:

- the pool scan: outputs and penultimate features of every pool id
  (:func:`entk_al.scans.outputs.outputs_on_shards`), a fresh round each repetition so nothing is cached;
- look-ahead scoring on the shards: the round's setup (A = k(U, L), diag k(U, U) and
  B[U, cand] per row tile, :func:`entk_al.scans.sharded_posterior.fit_on_shards`, dense
  path) and one MLMOC pass over all ``--eval`` candidates (per-tile partials summed on the
  driver);
- one empty map call (the per-call round trip), and the driver's serial look-ahead work
  (pNTK of the labeled set, Cholesky of K + λI and the residual solve), which no worker count
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


def _noop(shard, tile, payload, shared):
    """A task that does nothing: the round trip of one map call."""
    return None


def _best(fn, reps: int) -> float:
    fn()  # warm-up (actors import torch, caches fill)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(ex, x: torch.Tensor, model: nn.Module, args) -> dict:
    from entk_al.ntk import pntk
    from entk_al.scans.outputs import outputs_on_shards
    from entk_al.scans.sharded_posterior import fit_on_shards

    ids = np.arange(len(x))
    rng = np.random.default_rng(0)
    u = np.sort(rng.choice(len(x), args.eval, replace=False))
    lab = np.setdiff1d(ids, u)[:args.labeled]
    chol, alpha = driver_system(x, model, lab)
    rnd = [0]

    def fresh():
        rnd[0] += 1
        ex.begin_round(rnd[0], 0, model)

    def scan():
        fresh()
        outputs_on_shards(ex, ids)

    def lookahead():
        fresh()
        post, _ = fit_on_shards(ex, pntk, u_ids=u, cand_pos=np.arange(len(u)), x_lab=x[lab], x_cand=x[u], chol=chol,
                                alpha=alpha, ridge_eff=1e-3, jitter=0.0, dense=True)
        post.scores(torch.arange(len(u)))

    def empty():
        ex.map(_noop, {0: None})

    fresh()
    return {"scan_s": _best(scan, args.reps), "lookahead_s": _best(lookahead, args.reps),
            "round_trip_s": _best(empty, 5)}


def driver_system(x: torch.Tensor, model: nn.Module, lab: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The driver's serial part: K = pNTK(L, L), its Cholesky (+1e-3 ridge) and α = (K + λI)⁻¹R."""
    from entk_al.lookahead.system import cholesky_with_jitter
    from entk_al.ntk import pntk

    xl = x[torch.from_numpy(lab)]
    chol, _ = cholesky_with_jitter(pntk(model, xl), 1e-3)
    f = model(xl).detach().double()
    y = torch.nn.functional.one_hot(f.argmax(1), f.shape[1]).double()
    return chol, torch.cholesky_solve(y - f, chol)


def driver_serial(x: torch.Tensor, model: nn.Module, args) -> dict:
    lab = np.arange(args.labeled)
    t0 = time.perf_counter()
    driver_system(x, model, lab)
    return {"driver_system_s": time.perf_counter() - t0}


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
    print(f"{'executor':<10}{'scan ids/s':>14}{'look-ahead rows/s':>19}{'round trip ms':>15}")
    for name in ("local", "ray-1", "ray-2"):
        r = results[name]
        print(f"{name:<10}{args.pool / r['scan_s']:>14.0f}{args.eval / r['lookahead_s']:>19.1f}"
              f"{1e3 * r['round_trip_s']:>15.2f}")
    for what in ("scan_s", "lookahead_s"):
        print(f"speed-up ray-2 / ray-1 ({what}): {results['ray-1'][what] / results['ray-2'][what]:.2f}x; "
              f"ray-2 / local: {results['local'][what] / results['ray-2'][what]:.2f}x")
    d = results["driver"]
    print(f"driver serial: K = pNTK(L, L), Cholesky and solve {d['driver_system_s']:.3f} s")
    if args.out:
        from entk_al.fileio import write_json

        write_json(args.out, {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()
