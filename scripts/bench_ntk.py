"""Benchmark the pNTK engines: method="gram" against the bound it cannot beat, and torch.func.

For each (case, N) one worker subprocess times, interleaved ``--repeat`` times (min reported,
all runs kept in the JSON), in one process so that the ratios see the same machine state:
    gram      pntk(model, x, method="gram")                     (default tile)
    fwd_bwd   one batched forward+backward over the N inputs (parameter gradients of the
              summed outputs): the pass the engine cannot avoid
    jacobian  pntk(model, x, method="jacobian")                 (torch.func vmap(grad) + matmul;
              skipped where it would take too long, see CASES)
and reports
    gram/fb     engine time over the forward+backward
    gram_flops  the cheapest exact Gram: per layer the smaller of the materialized form's
                2 N^2 P_layer and the factored form's 2 N^2 T^2 g (d_in + d_out) flops (plus
                2 N^2 P for the torch.func fallback), at R, the fp32 GEMM rate of a 2048^3
                matmul measured in the same worker (best of 3; in CPU time on the CPU)
    bound       fwd_bwd + gram_flops / R: one batched pass plus that Gram at the machine's
                GEMM rate; gram/bound says how far the engine is from it.
On the CPU each time is taken twice: wall clock and the thread's CPU time
(``time.thread_time``). On a shared machine the CPU time is the steadier (it leaves out the
time the thread waits for a core); both ratios are printed. ``os.getloadavg()`` before and
after each case and the thread count are printed and kept.
A second subprocess per (case, N) runs the gram engine once and reports its peak RSS
(resource.getrusage ru_maxrss: torch allocations are invisible to tracemalloc).

    python scripts/bench_ntk.py                          # all cases
    python scripts/bench_ntk.py --cases wrn28_2,wrn --repeat 3 --no-mem
    python scripts/bench_ntk.py --vs-nt ~/nt-venv/bin/python   # + neural-tangents (mlp, cnn)
    python scripts/bench_ntk.py --device cuda --sizes resnet18_cifar:128,1024,4096

On CUDA every timed call ends with torch.cuda.synchronize(), the GEMM rate is that of an fp32
8192^3 matmul (TF32 off, torch's default), only wall times are kept and peak memory is
torch.cuda.max_memory_allocated.

``--vs-nt PYTHON`` runs the same MLP / CNN with neural-tangents' structured-derivatives pNTK
(JAX, jit, float32, warm-up call at full size) in that interpreter; it is skipped with a message
when the interpreter or neural_tangents is missing (see docs/ntk_bench.md for the venv recipe).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

# case: model name, input shape, [(N, run jacobian?)]
CASES = {
    "mlp": ("mlp", (784,), [(1024, True)]),
    "cnn": ("cnn", (1, 28, 28), [(1024, True)]),
    "cnn_bn": ("cnn_bn", (1, 28, 28), [(512, True)]),
    "resnet18_cifar": ("resnet18_cifar", (3, 32, 32), [(16, True), (32, True), (64, True),
                                                       (128, False)]),
    "wrn28_2": ("wrn28_2", (3, 32, 32), [(64, True), (128, False)]),
    "wrn": ("wrn", (3, 32, 32), [(32, True), (64, False)]),
    "wrn2": ("wrn2", (3, 32, 32), [(32, False)]),
}


def build(name: str):
    import torch
    from torch import nn

    from entk_al.nets import models

    torch.manual_seed(0)
    if name == "mlp":  # 784-512-512-10
        return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                             nn.Linear(512, 10))
    if name == "cnn":  # conv32-pool-conv64-pool-fc128-fc10, no BatchNorm
        return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
                             nn.Linear(128, 10))
    if name == "cnn_bn":  # entk_al.nets.models.CNN: the same with BatchNorm after each conv
        return models.CNN((1, 28, 28), 10)
    if name == "resnet18_cifar":  # 3x3 stride-1 stem, no max-pool (entk_al.nets.models.resnet18_32)
        return models.resnet18_32((3, 32, 32), 10)
    if name == "wrn28_2":  # WRN-28-2: 4 blocks per group, widths 32/64/128
        return models.WideResNet((3, 32, 32), 10, width=128, blocks=4)
    if name in ("wrn", "wrn2"):  # the look-ahead paper's: widths 160/320/640, 1 or 2 blocks
        return models.build_model("wide_resnet" if name == "wrn" else "wide_resnet2", (3, 32, 32), 10)
    raise SystemExit(f"unknown case {name}")


def gemm_rate(torch, device: str = "cpu") -> float:
    """fp32 GEMM flops per second: best of 3 square matmuls (2048 on the CPU, timed in this
    thread's CPU time; 8192 on CUDA, wall clock)."""
    size = 8192 if device == "cuda" else 2048
    a = torch.randn(size, size, device=device)
    a @ a
    best = min(_timed2(lambda: a @ a)[0 if device == "cuda" else 1] for _ in range(3))
    return 2 * size ** 3 / best


def _sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _timed(fn) -> float:
    return _timed2(fn)[0]


def _timed2(fn) -> tuple[float, float]:
    """(wall seconds, this thread's CPU seconds) of ``fn()``."""
    _sync()
    t0, c0 = time.perf_counter(), time.thread_time()
    fn()
    _sync()
    return time.perf_counter() - t0, time.thread_time() - c0


def fwd_bwd(model, x) -> None:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    torch.autograd.grad(model(x).sum(), params)


def gram_flops(model, x) -> dict:
    """Flops of the cheapest exact pNTK Gram of x with itself (module docstring): per layer of
    the engine's plan the smaller of 2 N^2 P_layer (materialized) and 2 N^2 T^2 g (d_in + d_out)
    (factored, Novak et al. 2022 Sec. 3), plus 2 N^2 P for the torch.func fallback; and the
    flops of the materialized columns alone as the engine's plan chose them."""
    from entk_al.nets.models import eval_mode
    from entk_al.ntk import common, gram

    n = len(x)
    with eval_mode(model):
        V, full = common.directions("pntk", common.n_outputs(model, x), x.device, x.dtype)
        plan = gram.build_plan(model, common.trainable(model), x, V, n, full)
    cheapest = 2 * n * n * sum(p.numel() for p in plan.fallback.values())
    for lp in plan.layers:
        size = sum(getattr(lp.mod, nm).numel() for nm in lp.names)
        mat = 2 * n * n * size
        if lp.dims is not None and lp.dims[4] is None:
            T, g, di, do, _ = lp.dims
            mat = min(mat, 2 * n * n * T * T * g * (di + ("bias" in lp.names) + do))
        cheapest += mat
    return {"gram_flops": cheapest, "mat_flops": 2 * n * n * plan.mat_width()}


def worker_time(name: str, n: int, jac: bool, threads: int, repeat: int, device: str = "cpu") -> dict:
    import torch

    from entk_al.nets.models import eval_mode
    from entk_al.ntk import pntk

    torch.set_num_threads(threads)
    model = build(name).to(device)
    x = torch.randn(n, *CASES[name][1], device=device)
    P = sum(p.numel() for p in model.parameters() if p.requires_grad)
    pntk(model, x[:4])  # warm-up: kernels, allocator
    runs = {"gram": [], "jacobian": [], "fwd_bwd": []}
    cpu = {"gram": [], "jacobian": [], "fwd_bwd": []}
    rate = gemm_rate(torch, device)
    sums = {}
    peak = {}
    if device == "cuda":  # one untimed full-size call: warm-up and the engine's device-memory peak
        torch.cuda.reset_peak_memory_stats()
        pntk(model, x, method="gram")
        peak["gram_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20

    def timed(key, fn):
        w, c = _timed2(fn)
        runs[key].append(w)
        cpu[key].append(c)

    for _ in range(repeat):  # interleaved, so that every method sees similar load
        timed("gram", lambda: sums.__setitem__("gram", float(pntk(model, x, method="gram").double().sum())))
        if jac:
            timed("jacobian", lambda: sums.__setitem__(
                "jacobian", float(pntk(model, x, method="jacobian").double().sum())))
        with eval_mode(model):
            timed("fwd_bwd", lambda: fwd_bwd(model, x))
    out = {"case": name, "n": n, "params": P, "gemm_gflops": rate / 1e9, "runs": runs,
           "threads": threads, "device": device, **peak, **gram_flops(model, x)}
    if device == "cuda":
        out["gpu"] = torch.cuda.get_device_name()
    else:
        out["cpu_runs"] = cpu
        out["cpu"] = {k: min(v) for k, v in cpu.items() if v}
    best = {k: min(v) for k, v in runs.items() if v}
    out.update(best)
    out["gram_s"] = out["gram_flops"] / rate
    out["bound"] = best["fwd_bwd"] + out["gram_s"]
    if "cpu" in out:
        out["cpu"]["bound"] = out["cpu"]["fwd_bwd"] + out["gram_s"]
    if jac:
        out["rel_diff"] = abs(sums["gram"] - sums["jacobian"]) / max(abs(sums["jacobian"]), 1e-30)
    return out


def worker_mem(name: str, n: int, threads: int, device: str = "cpu") -> dict:
    import torch

    from entk_al.ntk import pntk

    torch.set_num_threads(threads)
    model = build(name).to(device)
    x = torch.randn(n, *CASES[name][1], device=device)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":
        base_gpu = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    dt = _timed(lambda: pntk(model, x))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":  # device memory is what limits N there, not host RSS
        return {"case": name, "n": n, "peak_mib": torch.cuda.max_memory_allocated() / 2**20,
                "delta_mib": (torch.cuda.max_memory_allocated() - base_gpu) / 2**20, "seconds": dt}
    return {"case": name, "n": n, "peak_mib": peak / 1024, "delta_mib": (peak - base) / 1024,
            "seconds": dt}


def _run(args: list[str]) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *args]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"worker {args} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- neural-tangents side
NT_SCRIPT = r'''
import json, sys, time
import jax, jax.numpy as jnp
from jax import lax
import neural_tangents as nt

case, n = sys.argv[1], int(sys.argv[2])
key = jax.random.PRNGKey(0)

def dense(k, i, o):
    k1, k2 = jax.random.split(k)
    return {"w": jax.random.normal(k1, (i, o)) / jnp.sqrt(i), "b": jnp.zeros(o)}

def conv(k, ci, co):
    k1, k2 = jax.random.split(k)
    return {"w": jax.random.normal(k1, (co, ci, 3, 3)) / jnp.sqrt(9 * ci), "b": jnp.zeros(co)}

def conv_apply(p, x):
    y = lax.conv_general_dilated(x, p["w"], (1, 1), ((1, 1), (1, 1)),
                                 dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return y + p["b"][None, :, None, None]

def pool(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

ks = jax.random.split(key, 4)
if case == "mlp":
    params = [dense(ks[0], 784, 512), dense(ks[1], 512, 512), dense(ks[2], 512, 10)]
    shape = (n, 784)
    def f(p, x):
        h = jax.nn.relu(x @ p[0]["w"] + p[0]["b"])
        h = jax.nn.relu(h @ p[1]["w"] + p[1]["b"])
        return h @ p[2]["w"] + p[2]["b"]
elif case == "cnn":
    params = [conv(ks[0], 1, 32), conv(ks[1], 32, 64), dense(ks[2], 64 * 7 * 7, 128),
              dense(ks[3], 128, 10)]
    shape = (n, 1, 28, 28)
    def f(p, x):
        h = pool(jax.nn.relu(conv_apply(p[0], x)))
        h = pool(jax.nn.relu(conv_apply(p[1], h)))
        h = h.reshape(h.shape[0], -1)
        h = jax.nn.relu(h @ p[2]["w"] + p[2]["b"])
        return h @ p[3]["w"] + p[3]["b"]
else:
    print(json.dumps({"skip": f"no JAX port of case {case}"})); sys.exit(0)

def s(p, x):  # pNTK = NTK of the scaled logit sum (Mohamadi et al. 2022, eq. 3)
    out = f(p, x)
    return out.sum(-1, keepdims=True) / jnp.sqrt(out.shape[-1])

kfn = jax.jit(nt.empirical_ntk_fn(s, trace_axes=(), vmap_axes=0,
              implementation=nt.NtkImplementation.STRUCTURED_DERIVATIVES))
x = jax.random.normal(key, shape)
kfn(x, None, params).block_until_ready()  # warm-up at full size (compile)
best = min(
    (lambda t0: (kfn(x, None, params).block_until_ready(), time.perf_counter() - t0)[1])(
        time.perf_counter()) for _ in range(3))
print(json.dumps({"seconds": best}))
'''


def run_nt(python: str, case: str, n: int, threads: int = 1) -> dict:
    """neural-tangents pNTK time in ``python``; {"skip": reason} when it cannot run."""
    if not os.path.exists(python):
        return {"skip": f"interpreter {python} not found"}
    probe = subprocess.run([python, "-c", "import neural_tangents"], capture_output=True,
                           text=True)
    if probe.returncode:
        return {"skip": f"neural_tangents does not import in {python}: "
                        f"{(probe.stderr.strip().splitlines() or ['?'])[-1]}"}
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
        fh.write(NT_SCRIPT)
    try:
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        if threads == 1:  # the same one core that the torch side gets
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                                " intra_op_parallelism_threads=1").strip()
        out = subprocess.run([python, fh.name, case, str(n)], capture_output=True, text=True,
                             env=env)
    finally:
        os.unlink(fh.name)
    if out.returncode:
        return {"skip": f"neural-tangents run failed: {out.stderr.strip()[-300:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def loadavg() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per worker (1: ratios least disturbed by a shared machine)")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs per method; min kept")
    ap.add_argument("--max-n", type=int, default=None, help="skip rows with N above this")
    ap.add_argument("--min-n", type=int, default=None, help="skip rows with N below this")
    ap.add_argument("--no-mem", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--vs-nt", metavar="PYTHON", default=None,
                    help="interpreter with neural-tangents 0.6.5 for a side-by-side timing")
    ap.add_argument("--json", default=None, help="also write all measurements to this file")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--sizes", default=None, metavar="CASE:N[,N...][;CASE:...]",
                    help="replace the listed cases' N (torch.func runs where N <= 128)")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        kind, name, n, *rest = a.worker
        if kind == "time":
            r = worker_time(name, int(n), rest[0] == "1", int(rest[1]), int(rest[2]), rest[3])
        else:
            r = worker_mem(name, int(n), int(rest[0]), rest[1])
        print(json.dumps(r))
        return
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    sizes = {}
    for part in filter(None, (a.sizes or "").split(";")):
        case, _, ns = part.partition(":")
        sizes[case] = [(int(v), int(v) <= 128) for v in ns.split(",")]
    print(f"torch {torch.__version__}, {a.device}, {a.threads} threads, {os.cpu_count()} CPUs; "
          f"loadavg {loadavg()}", flush=True)
    rows = []
    for name in a.cases.split(","):
        if name not in CASES:
            raise SystemExit(f"unknown case {name!r}; choose from {', '.join(CASES)}")
        for n, jac in sizes.get(name, CASES[name][2]):
            if (a.max_n and n > a.max_n) or (a.min_n and n < a.min_n):
                continue
            before = loadavg()
            r = _run(["--worker", "time", name, str(n), "1" if jac else "0", str(a.threads),
                      str(a.repeat), a.device])
            if not a.no_mem:
                r["mem"] = _run(["--worker", "mem", name, str(n), str(a.threads), a.device])
            if a.vs_nt and name in ("mlp", "cnn"):
                r["nt"] = run_nt(a.vs_nt, name, n, a.threads)
            r["load"] = f"{before} -> {loadavg()}"
            rows.append(r)
            print(json.dumps(r), flush=True)
    if a.vs_nt and not any("nt" in r for r in rows):
        print("--vs-nt: no mlp/cnn case selected; neural-tangents comparison skipped")
    for r in rows:
        if "skip" in r.get("nt", {}):
            print(f"neural-tangents skipped for {r['case']}: {r['nt']['skip']}")
    print("\nTimes: min over the runs; on the CPU the thread's CPU time, wall clock in brackets. "
          "bound = fwd+bwd + cheapest exact Gram flops / GEMM rate.")
    print("\n| case | N | P | threads | gram (s) | fwd+bwd (s) | Gram at R (s) | gram/fwd+bwd | gram/bound "
          "| gram/bound (wall) | torch.func (s) | func/gram | peak mem (MiB) | NT SD (s) | NT/gram | loadavg |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = r.get("cpu", r)  # CPU times where measured, else wall

        def both(key, t=t, r=r):
            return f"{t[key]:.2f}" + (f" ({r[key]:.2f})" if t is not r else "")

        jac = both("jacobian") if "jacobian" in r else "-"
        ratio = f"{t['jacobian'] / t['gram']:.1f}x" if "jacobian" in r else "-"
        mem = f"{r['mem']['peak_mib']:.0f}" if "mem" in r else (
            f"{r['gram_peak_mib']:.0f}" if "gram_peak_mib" in r else "-")
        nt = r.get("nt", {})
        nts = f"{nt['seconds']:.2f}" if "seconds" in nt else "-"
        ntr = f"{nt['seconds'] / r['gram']:.1f}x" if "seconds" in nt else "-"
        print(f"| {r['case']} | {r['n']} | {r['params'] / 1e6:.2f}M | {r['threads']} | {both('gram')} "
              f"| {both('fwd_bwd')} | {r['gram_s']:.3f} | {t['gram'] / t['fwd_bwd']:.2f} "
              f"| {t['gram'] / t['bound']:.2f} | {r['gram'] / r['bound']:.2f} | {jac} | {ratio} | {mem} "
              f"| {nts} | {ntr} | {r['load']} |")
    print("\nGEMM rate (GFLOP/s, per worker): "
          + ", ".join(f"{r['case']}/{r['n']}: {r['gemm_gflops']:.0f}" for r in rows))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
