"""Benchmark: one round's select step per strategy, through the loop's own code path.

Not a test. For a protocol's settings (``--protocol``, its first seed) it trains round 0's
network exactly as ``entk-al run`` does, then for each strategy of ``--strategies`` runs the
round's selection with :func:`entk_al.run.query_step.select_queries` (candidate subset, round
context, executor, strategy) and records ``select_seconds`` and ``kernel_seconds`` as the run
would log them. As the baseline it times, in the same process, one direct
:func:`entk_al.ntk.pntk` call on the same inputs the look-ahead needs: the labeled set and the
round's candidate subset, K(L ∪ cand). ``kernel / pntk`` is the ratio that issue 23 asks to
stay near 1 (it was 68 on the CNN protocol when the context recomputed the columns per tile).

Run it before each change that touches the executor, the round context or the kernels::

    OMP_NUM_THREADS=1 python scripts/bench_select.py --protocol protocols/fashion-mnist-cnn.toml
    OMP_NUM_THREADS=1 python scripts/bench_select.py --protocol protocols/fashion-mnist-cpu.toml \\
        --strategies lookahead,margin,badge --executor ray --workers 2

Results go to stdout and, with ``--out``, to a JSON file (written atomically). The load
average and thread count are recorded beside the numbers: on a shared machine only the
ratios measured in one run mean something.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", default="protocols/fashion-mnist-cnn.toml")
    ap.add_argument("--strategies", default="lookahead", help="comma-separated strategy names or specs")
    ap.add_argument("--executor", default="local", choices=("local", "ray"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (and Ray CPUs per worker)")
    ap.add_argument("--seed-index", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="direct pntk timings (the minimum is reported)")
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from entk_al.executor import make_executor
    from entk_al.fileio import write_json
    from entk_al.ntk import pntk
    from entk_al.report.bench import Protocol
    from entk_al.run.labeled import PoolState
    from entk_al.run.oracle import SimulatedOracle
    from entk_al.run.plugins import load_strategy
    from entk_al.run.query_step import candidate_subset, select_queries
    from entk_al.run.setup import RunSetup

    proto = Protocol.from_file(args.protocol)
    spec = next(s for s in proto.grid() if s.seed_index == args.seed_index)
    cfg = spec.config
    setup = RunSetup.from_config(cfg, with_strategy=False)
    pool = PoolState(setup.data.pool_size)
    first = setup.initial_ids()
    pool.add(first, setup.data.y_train.numpy()[first], PoolState.INITIAL)
    model = setup.new_model(0)
    lab = pool.labeled_ids()
    t0 = time.perf_counter()
    setup.train_round(model, 0, setup.data.x_train[lab], setup.data.y_train[lab])
    print(f"{proto.name}: round 0 trained on {len(lab)} labels in {time.perf_counter() - t0:.1f} s")
    model.eval()

    unl = pool.unlabeled_ids()
    cand = candidate_subset(unl, cfg.subset, cfg.seed, 0)
    x = setup.data.x_train[torch.from_numpy(np.concatenate([lab, cand]))].to(setup.device)
    direct = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        pntk(model, x)
        direct.append(time.perf_counter() - t0)
    base = min(direct)
    print(f"direct pntk on L ∪ cand ({len(x)} inputs): {base:.2f} s")

    rows = []
    oracle = SimulatedOracle(setup.data.y_train)
    for name in args.strategies.split(","):
        setup.strategy = load_strategy(name, proto.options_for(name) if name in proto.strategies else {})
        ex = make_executor(args.executor, setup.data.x_train, setup.device, workers=args.workers,
                           cpus_per_worker=args.threads)
        try:
            t0 = time.perf_counter()
            queried, _, info, kernel_s = select_queries(setup, 0, model, pool, oracle, executor=ex)
            select_s = time.perf_counter() - t0
        finally:
            ex.close()
        row = {"strategy": name, "select_seconds": select_s, "kernel_seconds": kernel_s,
               "kernel_over_pntk": kernel_s / base if kernel_s else None, "queried": queried.tolist()}
        rows.append(row)
        ratio = f"{kernel_s / base:.2f}x pntk" if kernel_s else "no kernel"
        print(f"{name:>20}: select {select_s:7.2f} s, kernel {kernel_s:7.2f} s ({ratio})")
    result = {"protocol": proto.name, "executor": args.executor,
              "workers": args.workers if args.executor == "ray" else 1, "threads": args.threads,
              "loadavg": os.getloadavg(), "n_labeled": int(len(lab)), "n_candidates": int(len(cand)),
              "direct_pntk_seconds": base, "strategies": rows}
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
