"""Time one look-ahead round at the look-ahead paper's CIFAR sizes, through the public pieces.

The paper's CIFAR-10 protocol (Mohamadi, Bae & Sutherland, NeurIPS 2022, arXiv 2206.12569):
1000 labeled points, a random subset of 6000 unlabeled candidates that is also the evaluation
set U, 1000 queries per round, ResNet-18 (``resnet18``: CIFAR stem) or their WideResNet
(``wide_resnet``: widths 160/320/640, 7.4M parameters). Inputs are synthetic CIFAR-shaped
(3x32x32 standard normal; the time does not depend on the pixels), the model is the seeded
initialization (a round's cost does not depend on training either).

Each run is a worker process that builds the round as :func:`entk_al.run.query_step.select_queries`
does (a :class:`~entk_al.executor.LocalExecutor` begun with the model, a
:class:`~entk_al.round.context.RoundContext`, ``screen_candidates``) and calls
:meth:`strategies.lookahead.LookaheadSampling.select` (MLMOC, batch top-k, U = the candidates;
dense B since |U| + n <= 8000). From wrappers around the functions the strategy calls it reports
    kernel     seconds inside the kernel function (every kernel block the round asks for), split
               into per-sample features (``gram.tile_features``, with the engine's probe) and
               Gram products (``gram.pair``)
    cholesky   ``cholesky_with_jitter`` of K + lambda I
    scoring    ``select_lookahead``: the MLMOC scores over U and the top-k
    select     the whole select step: candidate screening (forward passes) + ``select``
    peak       peak memory: CPU ru_maxrss of the worker (absolute: interpreter and torch
               included); CUDA torch.cuda.max_memory_allocated
    entries    kernel entries the round asked for (sum of N1 x N2 over kernel calls)
On the CPU, times are the worker thread's CPU time (steady on a shared machine; run with one
thread) and the select step's wall clock.

The CPU cannot run the pNTK at full size in reasonable time (7000 points with the WRN: ~5e14
flops of Gram products alone), so each model is run twice:
  * at ``--scales`` s (s x 1000 labeled, s x 6000 candidates, s x 1000 queries) with the pNTK;
  * at full size with a stand-in kernel (a linear kernel on a fixed 64-dim random projection of
    the inputs: negligible cost), which times everything but the pNTK at the true size
    (screening forward passes, Cholesky, the look-ahead algebra, MLMOC scoring) and counts the
    kernel entries the full round asks for.
The full-size estimate is then: stand-in select - stand-in kernel + pNTK kernel at the largest
scale x (entries at full size / entries at that scale), i.e. the kernel extrapolated by the N^2
law of its entries. On a GPU (``--device cuda --scales 1``) the full size is measured directly.

``--precision full,bf16`` runs the reduced round once per kernel precision (``pntk(...,
precision=)``) and reports the reduced-precision kernel's relative error (Frobenius, over every
block the round computed, in call order) and the overlap of its selected ids with the
full-precision selection.

    python scripts/bench_round.py                                   # CPU defaults
    python scripts/bench_round.py --models resnet18 --scales 0.02,0.05 --precision full,bf16
    python scripts/bench_round.py --device cuda --scales 1 --precision full,tf32,bf16
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

PAPER = {"labeled": 1000, "candidates": 6000, "query": 1000}
COMPONENTS = ("kernel", "features", "gram", "cholesky", "scoring", "select")


#: the stand-in kernel's random projection: (3*32*32, STANDIN_DIM), seeded
STANDIN_DIM = 64


def standin_kernel(model, x1, x2=None):
    """Linear kernel of a fixed random projection of the inputs (PSD, negligible cost): times
    the round around the kernel at full size. ``model`` is unused."""
    import torch

    gen = torch.Generator().manual_seed(12345)
    proj = torch.randn(x1[0].numel(), STANDIN_DIM, generator=gen).to(x1.device) / x1[0].numel() ** 0.5
    f1 = x1.reshape(len(x1), -1) @ proj
    f2 = f1 if x2 is None else x2.reshape(len(x2), -1) @ proj
    return f1 @ f2.T


def engine_structure(model, x1, x2=None) -> tuple[int, int]:
    """(samples through the per-sample features, Gram entries) that ``pntk(model, x1, x2)``'s
    gram engine would process: its plan's default tile and :func:`entk_al.ntk.tiling.tiled_kernel`'s
    visiting order (column caching included), run with counting stand-ins for the features and
    the products."""
    import torch

    from entk_al.nets.models import eval_mode
    from entk_al.ntk import common, gram, tiling

    n1, n2 = len(x1), len(x1 if x2 is None else x2)
    with eval_mode(model):
        V, full = common.directions("pntk", common.n_outputs(model, x1), x1.device, torch.float32)
        plan = gram.build_plan(model, common.trainable(model), x1[:gram.PROBE_SAMPLES], V,
                               min(gram.DEFAULT_TILE, n1), full, min(gram.DEFAULT_TILE, n2))
    tile = gram.plan_tile(plan, V, n1, n2, full)
    per_sample = plan.bytes_per_sample(1, 4)
    got = [0, 0]

    def feats(idx):
        got[0] += len(idx)
        return len(idx), per_sample * len(idx)

    def pair(a, b):
        got[1] += a * b
        return torch.zeros(1, 1, a, b)

    tiling.tiled_kernel(feats, pair, torch.arange(n1), None if x2 is None else torch.arange(n2), tile, True)
    return got[0], got[1]


def worker(model_name: str, scale: float, precision: str, device: str, threads: int, seed: int,
           dump: str, standin: bool = False) -> dict:
    import numpy as np
    import torch

    from entk_al.executor import LocalExecutor
    from entk_al.nets.models import build_model
    from entk_al.ntk import gram, pntk
    from entk_al.progress import NullProgress
    from entk_al.round.context import RoundContext
    from entk_al.seeding import numpy_rng, torch_generator
    from strategies import lookahead as la_mod
    from strategies.lookahead import LookaheadSampling

    torch.set_num_threads(threads)
    n_lab, n_cand = max(2, round(scale * PAPER["labeled"])), max(2, round(scale * PAPER["candidates"]))
    k = max(1, round(scale * PAPER["query"]))
    gen = torch.Generator().manual_seed(seed)
    x_pool = torch.randn(n_lab + n_cand, 3, 32, 32, generator=gen)
    labels = torch.randint(0, 10, (n_lab + n_cand,), generator=gen).numpy()
    model = build_model(model_name, (3, 32, 32), 10, seed=seed).to(device).eval()
    times = dict.fromkeys(COMPONENTS, 0.0)
    cpu = dict.fromkeys(COMPONENTS, 0.0)
    counts = {"feature_samples": 0, "pairs": 0, "entries": 0, "calls": 0}
    if standin:
        counts.update(engine_samples=0, engine_entries=0)
    blocks = []

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def timed(key, fn):
        def run(*a, **kw):
            sync()
            t0, c0 = time.perf_counter(), time.thread_time()
            out = fn(*a, **kw)
            sync()
            times[key] += time.perf_counter() - t0
            cpu[key] += time.thread_time() - c0
            return out
        return run

    def kernel_fn(model, x1, x2=None):
        out = standin_kernel(model, x1, x2) if standin else pntk(model, x1, x2, precision=precision)
        counts["entries"] += out.shape[0] * out.shape[1]
        counts["calls"] += 1
        if standin:
            samples, entries = engine_structure(model, x1, x2)
            counts["engine_samples"] += samples
            counts["engine_entries"] += entries
        else:
            blocks.append(out.detach().double().cpu())
        return out

    tile_features, pair = timed("features", gram.tile_features), timed("gram", gram.pair)

    def counted_features(plan, model, x, *a, **kw):
        counts["feature_samples"] += len(x)
        return tile_features(plan, model, x, *a, **kw)

    def counted_pair(fa, fb, full):
        out = pair(fa, fb, full)
        counts["pairs"] += out.shape[-2] * out.shape[-1]
        return out

    gram.tile_features, gram.pair = counted_features, counted_pair
    la_mod.cholesky_with_jitter = timed("cholesky", la_mod.cholesky_with_jitter)
    la_mod.select_lookahead = timed("scoring", la_mod.select_lookahead)
    kernel_timed = timed("kernel", kernel_fn)

    lab = np.arange(n_lab, dtype=np.int64)
    unl = np.arange(n_lab, n_lab + n_cand, dtype=np.int64)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0, c0 = time.perf_counter(), time.thread_time()
    # as entk_al.run.query_step.select_queries builds a round (round 0, U = the candidates)
    executor = LocalExecutor(x_pool, device)  # the context begins its round
    ctx = RoundContext(round=0, seed=seed, model=model, device=torch.device(device), pool=x_pool,
                       num_classes=10, labeled_ids=lab, labeled_targets=labels[lab], unlabeled_ids=unl,
                       candidate_ids=unl, rng=numpy_rng(seed, 0, "strategy"),
                       torch_generator=torch_generator(seed, 0, "strategy"),
                       oracle=lambda ids: labels[np.asarray(ids)], kernel_fn=kernel_timed,
                       progress=NullProgress(), executor=executor)
    ctx.screen_candidates(k)
    picked = LookaheadSampling(acquisition="mlmoc").select(ctx, k)
    sync()
    times["select"] = time.perf_counter() - t0
    cpu["select"] = time.thread_time() - c0
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    torch.save(blocks, dump)
    return {"model": model_name, "scale": scale, "precision": "stand-in" if standin else precision,
            "device": device,
            "threads": threads, "labeled": n_lab, "candidates": n_cand, "query": k,
            "params": sum(p.numel() for p in model.parameters()), "times": times,
            "cpu": cpu if device == "cpu" else None, **counts, "peak_mib": peak,
            "rss_before_mib": rss0 / 1024, "picked": sorted(int(i) for i in picked),
            "gpu": torch.cuda.get_device_name() if device == "cuda" else None}


def _run(args: list[str]) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *args]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"worker {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _load(path: str) -> list:
    import torch

    return torch.load(path, weights_only=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,wide_resnet",
                    help="comma list of entk_al.nets.models names (resnet18, wide_resnet, wide_resnet2, ...)")
    ap.add_argument("--scales", default="0.05",
                    help="comma list of size fractions of the paper's 1000 + 6000 (1 = full size)")
    ap.add_argument("--precision", default="full", help="comma list of pntk precisions: full, tf32, bf16")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per worker (1: steadiest on a shared machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write every measurement to this file")
    ap.add_argument("--no-standin", action="store_true",
                    help="skip the full-size stand-in runs (no full-size estimate)")
    ap.add_argument("--worker", nargs=7, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        name, scale, prec, device, threads, dump, standin = a.worker
        print(json.dumps(worker(name, float(scale), prec, device, int(threads), a.seed, dump, standin == "1")))
        return
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda: torch sees no CUDA device")
    scales = sorted(float(s) for s in a.scales.split(","))
    precisions = a.precision.split(",")
    if "full" not in precisions:
        precisions.insert(0, "full")  # the reference for error and overlap
    print(f"torch {torch.__version__}, {a.device}, {a.threads} threads, {os.cpu_count()} CPUs; "
          f"loadavg {' '.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models.split(","):
            if not a.no_standin and max(scales) < 1:
                print(f"... {name} full size with the stand-in kernel", flush=True)
                before = os.getloadavg()
                r = _run(["--worker", name, "1", "full", a.device, str(a.threads), os.path.join(tmp, "s.pt"), "1"])
                r["load"] = [before, os.getloadavg()]
                rows.append(r)
                print(json.dumps({k: v for k, v in r.items() if k != "picked"}), flush=True)
            for scale in scales:
                ref = None
                for prec in precisions:
                    dump = os.path.join(tmp, f"{name}-{scale}-{prec}.pt")
                    before = os.getloadavg()
                    print(f"... {name} scale {scale} precision {prec}", flush=True)
                    r = _run(["--worker", name, str(scale), prec, a.device, str(a.threads), dump, "0"])
                    r["load"] = [before, os.getloadavg()]
                    if prec == "full":
                        ref = (_load(dump), set(r["picked"]))
                    else:
                        got = _load(dump)
                        num = sum(float((g - f).norm() ** 2) for g, f in zip(got, ref[0]))
                        den = sum(float(f.norm() ** 2) for f in ref[0])
                        r["kernel_rel_err"] = math.sqrt(num / den)
                        r["overlap"] = len(ref[1] & set(r["picked"])) / max(1, len(ref[1]))
                    rows.append(r)
                    print(json.dumps({k: v for k, v in r.items() if k != "picked"}), flush=True)
    _report(rows, scales)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)


def _report(rows: list[dict], scales: list[float]) -> None:
    print("\nMeasured (seconds: the worker thread's CPU time on the CPU, wall clock on CUDA; wall clock in "
          "brackets for the select step; peak memory in MiB):\n")
    print("| model | scale | n + m (k) | precision | kernel | features | Gram | Cholesky | scoring | select "
          "| peak | samples through features / Gram entries / kernel entries | kernel rel. err | overlap "
          "| loadavg before -> after |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = r["cpu"] or r["times"]
        err = f"{r['kernel_rel_err']:.1e}" if "kernel_rel_err" in r else "-"
        ov = f"{r['overlap']:.3f}" if "overlap" in r else "-"
        ld = " -> ".join(" ".join(f"{v:.1f}" for v in lv) for lv in r["load"])
        counts = f"{r['feature_samples']} / {r['pairs']} / {r['entries']}"
        print(f"| {r['model']} | {r['scale']} | {r['labeled']} + {r['candidates']} ({r['query']}) | {r['precision']} | "
              + " | ".join(f"{t[c]:.2f}" for c in COMPONENTS) + (f" ({r['times']['select']:.2f})" if r["cpu"] else "")
              + f" | {r['peak_mib']:.0f} | {counts} | {err} | {ov} | {ld} |")
    print("\nFull size (1000 + 6000, 1000 queries): stand-in round measured; pNTK kernel from the largest "
          "scale x (entries at full size / entries there), the N^2 law:\n")
    print("| model | precision | from scale | screening + look-ahead algebra + Cholesky + scoring (measured) "
          "| of which Cholesky | scoring | pNTK kernel (N^2) | select step (N^2) | pNTK kernel (unit costs) "
          "| select step (unit costs) | peak stand-in |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    top = max(scales)
    for si in rows:
        if si["precision"] != "stand-in":
            continue
        ts = si["cpu"] or si["times"]
        rest = ts["select"] - ts["kernel"]
        for r in rows:
            if r["model"] != si["model"] or r["scale"] != top or r["precision"] == "stand-in":
                continue
            t = r["cpu"] or r["times"]
            kern = t["kernel"] * si["entries"] / max(1, r["entries"])
            # the engine's own work at full size (tile structure counted) at the unit costs measured here
            other = (t["kernel"] - t["features"] - t["gram"]) / max(1, r["calls"])
            kern2 = (si["engine_samples"] * t["features"] / max(1, r["feature_samples"])
                     + si["engine_entries"] * t["gram"] / max(1, r["pairs"]) + si["calls"] * other)
            print(f"| {r['model']} | {r['precision']} | {top} | {rest:.1f} | {ts['cholesky']:.2f} "
                  f"| {ts['scoring']:.1f} "
                  f"| {kern:.0f} | {rest + kern:.0f} | {kern2:.0f} | {rest + kern2:.0f} | {si['peak_mib']:.0f} |")
    print("\nUnit costs (CPU time on the CPU): seconds per sample through the per-sample features, "
          "microseconds per kernel entry of the Gram products:\n")
    print("| model | precision | scale | s / sample | us / entry |")
    print("|---|---|---|---|---|")
    for r in rows:
        t = r["cpu"] or r["times"]
        if r["precision"] == "stand-in":
            continue
        print(f"| {r['model']} | {r['precision']} | {r['scale']} | {t['features'] / max(1, r['feature_samples']):.4f} "
              f"| {1e6 * t['gram'] / max(1, r['pairs']):.1f} |")
    if len(scales) > 1:
        lo, hi = scales[0], scales[-1]
        print(f"\nExponent measured between scales {lo} and {hi} (time ~ N^e):\n")
        print("| model | precision | " + " | ".join(COMPONENTS) + " |")
        print("|---|---|" + "---|" * len(COMPONENTS))
        by = {(r["model"], r["precision"], r["scale"]): r["cpu"] or r["times"] for r in rows
              if r["precision"] != "stand-in"}
        for (m, p, s), t_hi in by.items():
            t_lo = by.get((m, p, lo))
            if s != hi or t_lo is None:
                continue
            e = [math.log(max(t_hi[c], 1e-9) / max(t_lo[c], 1e-9)) / math.log(hi / lo) for c in COMPONENTS]
            print(f"| {m} | {p} | " + " | ".join(f"{v:.2f}" for v in e) + " |")


if __name__ == "__main__":
    main()
