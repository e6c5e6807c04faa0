"""Peak memory of BALD, BADGE and Core-Set on a large synthetic pool.

Each strategy runs in a fresh subprocess on N candidates with H-dimensional penultimate
features and O classes (default 100,000 × 512 × 10, the size the baselines must handle in
under 4 GB). Reported per strategy: peak RSS of the process, the RSS right after building the
inputs (the baseline measured in the same process), and the ratio of the extra memory to
the size an explicit (N × H·O) BADGE embedding matrix would need.

    python scripts/bench_baselines_memory.py [--n 100000] [--hidden 512] [--classes 10] [--k 100]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(name: str, n: int, hidden: int, classes: int, k: int) -> dict:
    from types import SimpleNamespace

    import numpy as np
    import torch
    from torch import nn

    from strategies import REGISTRY

    torch.manual_seed(0)
    feats = torch.relu(torch.randn(n, hidden))
    model = nn.Sequential(nn.Identity(), nn.Linear(hidden, classes))
    with torch.no_grad():
        logits = model(feats)
    probs = torch.softmax(logits, 1)
    ids = np.arange(n, dtype=np.int64)
    ctx = SimpleNamespace(candidate_ids=ids[1000:], labeled_ids=ids[:1000], info={}, model=model,
                          device=torch.device("cpu"), rng=np.random.default_rng(0),
                          torch_generator=torch.Generator().manual_seed(0),
                          probs=lambda i: probs[torch.as_tensor(i)], logits=lambda i: logits[torch.as_tensor(i)],
                          embeddings=lambda i: feats[torch.as_tensor(i)])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    picked = REGISTRY[name]().select(ctx, k)
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert len(set(picked.tolist())) == k
    return {"strategy": name, "baseline_mib": round(base, 1), "peak_mib": round(peak, 1),
            "extra_mib": round(peak - base, 1), "seconds": round(secs, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.n, args.hidden, args.classes, args.k)))
        return
    explicit_mib = args.n * args.hidden * args.classes * 4 / 2**20
    print(f"pool {args.n} x H={args.hidden} x O={args.classes}, k={args.k}; "
          f"an explicit float32 BADGE embedding matrix would be {explicit_mib:.0f} MiB")
    for name in ("bald", "badge", "coreset"):
        out = subprocess.run([sys.executable, __file__, "--child", name, "--n", str(args.n), "--hidden",
                              str(args.hidden), "--classes", str(args.classes), "--k", str(args.k)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name:8s} peak {r['peak_mib']:8.1f} MiB  (inputs {r['baseline_mib']:.1f} MiB, extra "
              f"{r['extra_mib']:.1f} MiB = {r['extra_mib'] / explicit_mib:.3f} x explicit BADGE matrix)  "
              f"{r['seconds']:.1f} s")


if __name__ == "__main__":
    main()
