"""Benchmark: queries over a pool larger than memory (a ``memmap:`` ``.npy`` file).

Not a test. Writes an (N, 3, 32, 32) float32 ``.npy`` pool in chunks (default N = 1,000,000,
≈ 12 GB; ten class templates plus noise, labels beside it), trains the small CNN
(``build_model("cnn", (3, 32, 32), 10, 16)``) on a few hundred labeled ids, then runs
:func:`entk_al.query` over the whole pool, each stage in a fresh child process so that its
peak resident memory (``ru_maxrss`` and ``/proc/self/status`` VmHWM) is that stage's own:

- ``margin``: margin sampling over every unlabeled id (``subset`` = pool size), local executor;
- ``lookahead``: the look-ahead with the faiss knn prefilter over every unlabeled id
  (``prefilter=knn, num_candidates=1000, eval_size=4000``), local executor;
- ``ray_margin``: margin on the Ray executor (2 shard actors, private cluster); the actors
  open the file themselves: the bytes the driver sends each actor (the pickled
  ``pool.shard(...)``) are reported, and the actors' own peak RSS (VmHWM of the driver's
  ``ShardHost`` descendants).

A stage name ending in ``_notrim`` (e.g. ``margin_notrim``) runs it without returning the C
heap's free pages after each tile (:func:`entk_al.executor.shard.trim_heap`), the baseline of
that fix; run it on a small pool only (its memory grows ≈ 16 KB per id).

Run it once, with ``OMP_NUM_THREADS=1``; the load average is reported with the numbers.

Usage: OMP_NUM_THREADS=1 python scripts/bench_pool.py [--pool 1000000] [--dir /tmp/bigpool]
       [--stages margin,lookahead,ray_margin] [--keep] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHAPE = (3, 32, 32)
CLASSES = 10
CHUNK = 20_000


def vm_hwm_mb(pid: int | str = "self") -> float:
    """Peak resident set (VmHWM) of a process, MiB (0 when unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_pool(path: Path, n: int, seed: int) -> np.ndarray:
    """An (n, 3, 32, 32) float32 pool in ``path`` (written chunk by chunk); returns its labels."""
    rng = np.random.default_rng(seed)
    templates = rng.standard_normal((CLASSES, *SHAPE)).astype(np.float32)
    labels = rng.integers(0, CLASSES, n)
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, *SHAPE))
    for s in range(0, n, CHUNK):
        e = min(n, s + CHUNK)
        arr[s:e] = templates[labels[s:e]] + 2.0 * rng.standard_normal((e - s, *SHAPE), dtype=np.float32)
        arr.flush()
    del arr
    np.save(path.with_name("labels.npy"), labels)
    return labels


def train(labeled: np.ndarray, pool_path: Path, labels: np.ndarray, out: Path) -> None:
    import torch
    import torch.nn.functional as F

    from entk_al.data.pool import MemmapPool
    from entk_al.nets.models import build_model

    model = build_model("cnn", SHAPE, CLASSES, 16, seed=0)
    x = MemmapPool(pool_path).get(labeled)
    y = torch.from_numpy(labels[labeled])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(20):
        for b in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
    torch.save(model.state_dict(), out)


def _descendant_pids(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def child(stage: str, args: argparse.Namespace) -> dict:
    import torch

    import entk_al
    from entk_al.data.pool import MemmapPool
    from entk_al.nets.models import build_model

    torch.set_num_threads(1)
    if stage.endswith("_notrim"):  # the baseline: no heap trimming after each tile
        from entk_al.executor import shard

        shard.TRIM_HEAP = False
    path = Path(args.dir) / "pool.npy"
    pool = MemmapPool(path)
    labels = np.load(path.with_name("labels.npy"))
    labeled = np.load(path.with_name("labeled.npy"))
    model = build_model("cnn", SHAPE, CLASSES, 16, seed=0)
    model.load_state_dict(torch.load(path.with_name("model.pt"), weights_only=True))
    rss_start = vm_hwm_mb()
    res: dict = {"stage": stage, "loadavg_before": os.getloadavg()}
    kw: dict = {}
    if stage.startswith("lookahead"):
        kw = {"strategy": "lookahead", "options": {"prefilter": "knn", "num_candidates": 1000, "eval_size": 4000}}
    else:
        kw = {"strategy": "margin", "subset": len(pool)}
    executor = "local"
    if stage.startswith("ray"):
        from entk_al.executor.factory import make_executor

        executor = make_executor("ray", pool, torch.device("cpu"), workers=2)
        res["bytes_sent_per_actor"] = [len(pickle.dumps(pool.shard(*executor.plan.shard_ids(s))))
                                       for s in range(len(executor.actors))]
    t0 = time.perf_counter()
    try:
        q = entk_al.query(model, pool, labeled, labels[labeled], args.k, seed=0, executor=executor, **kw)
        res["seconds"] = time.perf_counter() - t0
        if not isinstance(executor, str):
            cmdline = lambda p: Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")  # noqa: E731
            actors = [p for p in _descendant_pids(os.getpid()) if "ShardHost" in cmdline(p)]
            res["actor_peak_rss_mb"] = [vm_hwm_mb(p) for p in actors]
    finally:
        if not isinstance(executor, str):
            executor.close()
    res.update({"ids": q.ids.tolist(), "kernel_seconds": q.kernel_seconds, "rss_start_mb": rss_start,
                "peak_rss_mb": peak_rss_mb(), "vm_hwm_mb": vm_hwm_mb(), "loadavg_after": os.getloadavg(),
                "info": {k: v for k, v in q.info.items() if isinstance(v, (int, float, str))}})
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pool", type=int, default=1_000_000)
    ap.add_argument("--dir", default="/tmp/bigpool", help="folder for the pool file (deleted unless --keep)")
    ap.add_argument("--labeled", type=int, default=300)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--stages", default="margin,lookahead,ray_margin")
    ap.add_argument("--keep", action="store_true", help="keep the pool file")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pool.npy"
    results: dict = {"pool": args.pool, "shape": SHAPE, "labeled": args.labeled, "k": args.k,
                     "file_gb": args.pool * int(np.prod(SHAPE)) * 4 / 1e9, "cpus": os.cpu_count(),
                     "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    try:
        t0 = time.perf_counter()
        labels = write_pool(path, args.pool, seed=0)
        results["write_seconds"] = time.perf_counter() - t0
        labeled = np.sort(np.random.default_rng(1).choice(args.pool, args.labeled, replace=False))
        np.save(folder / "labeled.npy", labeled)
        t0 = time.perf_counter()
        train(labeled, path, labels, folder / "model.pt")
        results["train_seconds"] = time.perf_counter() - t0
        print(f"pool {args.pool:,} x {SHAPE} float32 ({results['file_gb']:.1f} GB) written in "
              f"{results['write_seconds']:.0f}s; model trained on {args.labeled} in {results['train_seconds']:.0f}s",
              flush=True)
        for stage in args.stages.split(","):
            cmd = [sys.executable, __file__, "--child", stage, "--dir", str(folder), "--k", str(args.k)]
            got = subprocess.run(cmd, capture_output=True, text=True)
            if got.returncode != 0:
                results[stage] = {"error": got.stderr[-2000:]}
                print(f"{stage}: failed\n{got.stderr[-2000:]}", flush=True)
                continue
            r = json.loads(got.stdout.strip().splitlines()[-1])
            results[stage] = r
            extra = ""
            if "actor_peak_rss_mb" in r:
                extra = (f"; actors' peak RSS {', '.join(f'{m:.0f}' for m in r['actor_peak_rss_mb'])} MiB, "
                         f"bytes sent per actor {r['bytes_sent_per_actor']}")
            print(f"{stage}: {r['seconds']:.0f}s (kernels {r['kernel_seconds']:.0f}s), peak RSS "
                  f"{r['peak_rss_mb']:.0f} MiB (VmHWM {r['vm_hwm_mb']:.0f}, at start {r['rss_start_mb']:.0f}), "
                  f"load {r['loadavg_before'][0]:.1f} -> {r['loadavg_after'][0]:.1f}{extra}", flush=True)
        if {"margin", "ray_margin"} <= results.keys() and "ids" in results["margin"] and "ids" in results["ray_margin"]:
            results["ray_margin_same_ids"] = results["margin"]["ids"] == results["ray_margin"]["ids"]
            print(f"ray margin ids == local margin ids: {results['ray_margin_same_ids']}")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
