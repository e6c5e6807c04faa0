"""Benchmark the pNTK engines: method="gram" vs method="jacobian" (same tile size), CPU.

Each (case, method, N) runs in its own subprocess so peak RSS (resource.getrusage ru_maxrss,
minus the RSS after model/input setup) is clean. Where the jacobian path would take too long
at the full N it is measured at a smaller N (``--jac-n``), and the gram engine is measured at
that same N too so the printed ratio compares equal work; rows are labelled with their N.

    python scripts/bench_ntk.py            # all cases
    python scripts/bench_ntk.py --quick    # smaller N for the jacobian path
    python scripts/bench_ntk.py --repeat 3 # each measurement 3 times, interleaved, min reported

On a shared machine use ``--repeat``: the gram and jacobian workers of a case then alternate
(gram, jacobian, gram, ...) so both see similar load, and the minimum time is reported (all
times are printed too).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def build(case: str):
    import torch
    from torch import nn

    torch.manual_seed(0)
    if case == "mlp":
        m = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 10))
        return m, (784,)
    if case == "cnn":
        m = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))
        return m, (1, 28, 28)
    if case == "resnet18":
        import torchvision

        return torchvision.models.resnet18(num_classes=10), (3, 32, 32)
    raise SystemExit(f"unknown case {case}")


def worker(case: str, method: str, n: int, tile: int | None, threads: int) -> dict:
    import torch

    from entk_al.ntk import pntk

    torch.set_num_threads(threads)
    model, shape = build(case)
    x = torch.randn(n, *shape)
    pntk(model, x[:4], method=method, tile_size=tile)  # warm-up: kernels, allocator
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    k = pntk(model, x, method=method, tile_size=tile)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"case": case, "method": method, "n": n, "tile": tile, "seconds": dt,
            "peak_mib": (peak - base) / 1024, "checksum": float(k.double().sum())}


def run(case, method, n, tile, threads) -> dict:
    cmd = [sys.executable, __file__, "--worker", case, method, str(n), str(tile or 0),
           str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def best(runs: list[dict]) -> dict:
    """The fastest of repeated runs, with every time listed under "all"."""
    r = dict(min(runs, key=lambda r: r["seconds"]))
    r["all"] = [x["seconds"] for x in runs]
    r["peak_mib"] = max(x["peak_mib"] for x in runs)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller jacobian N")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", default="mlp1024,mlp4096,cnn,resnet18")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per measurement (interleaved gram/jacobian); min is reported")
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        case, method, n, tile, threads = a.worker
        print(json.dumps(worker(case, method, int(n), int(tile) or None, int(threads))))
        return
    # case: (model, full N, jacobian N normal, jacobian N quick, tile)
    specs = {"mlp1024": ("mlp", 1024, 1024, 512, 512), "mlp4096": ("mlp", 4096, 4096, 1024, 512),
             "cnn": ("cnn", 1024, 1024, 256, 256), "resnet18": ("resnet18", 256, 32, 16, 32)}
    rows = []
    # the machine may be shared: record its load so timings can be judged
    print("loadavg before:", open("/proc/loadavg").read().strip(), flush=True)
    for name in a.cases.split(","):
        case, n, jn, jq, tile = specs[name]
        jn = jq if a.quick else jn
        fulls, gs, js = [], [], []
        for _ in range(a.repeat):
            fulls.append(run(case, "gram", n, None, a.threads))
            gs.append(run(case, "gram", jn, tile, a.threads))
            js.append(run(case, "jacobian", jn, tile, a.threads))
        g_full, g, j = best(fulls), best(gs), best(js)
        rows.append((name, "gram (default tile)", g_full))
        rows += [(name, f"gram tile={tile}", g), (name, f"jacobian tile={tile}", j)]
        rel = abs(g["checksum"] - j["checksum"]) / max(abs(j["checksum"]), 1e-30)
        print(f"{name}: N={jn} tile={tile}: jacobian/gram time {j['seconds'] / g['seconds']:.1f}x, "
              f"peak-RSS delta {j['peak_mib']:.0f} vs {g['peak_mib']:.0f} MiB, "
              f"checksum rel diff {rel:.1e}", flush=True)
        print(f"{name}: gram at N={n} (default tile): {g_full['seconds']:.3f} s, "
              f"{g_full['peak_mib']:.0f} MiB", flush=True)
    print("loadavg after:", open("/proc/loadavg").read().strip())
    print("\n| case | method | N | seconds (min) | all runs (s) | peak RSS delta (MiB) |\n"
          "|---|---|---|---|---|---|")
    for name, label, r in rows:
        runs = " / ".join(f"{t:.2f}" for t in r["all"])
        print(f"| {name} | {label} | {r['n']} | {r['seconds']:.3f} | {runs} | "
              f"{r['peak_mib']:.0f} |")


if __name__ == "__main__":
    main()
