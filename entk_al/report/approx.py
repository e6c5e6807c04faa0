"""How close is pNTK ⊗ I_O to the eNTK? Kernel distance, spectrum, kernel regression, cost.

Reproduces the measurements of Mohamadi, Bae & Sutherland, *A Fast, Well-Founded
Approximation to the Empirical Neural Tangent Kernel* (ICML 2023, arXiv 2206.12543) on our
models and data. Every kernel comes from :func:`entk_al.ntk.kernel` (kinds ``entk``,
``pntk``, ``first_logit``, ``trace``); this module only compares them.

Notation: Θ is the eNTK, (N, N, O, O), Θ(x, x')_{kl} = ⟨∇θ f_k(x), ∇θ f_l(x')⟩. As an
NO × NO matrix its row index is i·O + k (:func:`flatten_entk`), the layout in which an
N × N stand-in k appears as the Kronecker product k ⊗ I_O. Stand-ins:
``pntk`` (1/O)·1ᵀΘ1 (their eq. 3), ``first_logit`` Θ₁₁, ``trace`` (1/O)Σ_k Θ_kk and
``random_logit`` Θ_cc for one class c drawn from the seed.

Measured, per readout width and training checkpoint (at init; after training on n labels):
1. kernel distance ‖k ⊗ I − Θ‖_F / ‖Θ‖_F for each stand-in, and the off-diagonal block share
   ‖Θ − blockdiag(Θ)‖_F / ‖Θ‖_F (their Thm 4.1: O(n^{-1/2}) in the readout width n at init);
2. spectrum of the labeled-set kernel: largest eigenvalue and condition number of K + λI;
3. kernel regression with the look-ahead's ridge λ = ridge_rel · trace(K)/dim(K)
   (arXiv 2206.12569, authors' code): test accuracy and argmax agreement with pNTK vs eNTK,
   and at init the linearized ("eNTK-predicted") outputs against the real trained network;
4. cost: time and peak memory of the pNTK and eNTK kernels at several N, and the largest N
   whose kernel fits a memory budget;
5. with ``kernel_params`` (``entk-al approx --kernel-params last:1``): the pNTK over a subset
   of the parameters (:func:`entk_al.ntk.common.select_params`, the look-ahead's
   ``-o kernel_params``) against the pNTK over all of them: relative Frobenius distance (raw,
   and after the best scalar factor, to which the look-ahead is blind since its ridge is
   relative to trace(K)), the linearized kernel regression's argmax agreement, and the time
   ratio (:func:`subset_record`).
"""

from __future__ import annotations

import copy
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..lookahead.system import relative_ridge
from ..nets.models import MODELS, build_model, predict, user_model_class
from ..nets.train import TrainConfig, train_model
from ..ntk import kernel
from ..seeding import APPROX_EVAL, APPROX_LABELED, APPROX_RANDOM_LOGIT, APPROX_TEST, TRAIN, numpy_rng, torch_generator

STANDINS = ("pntk", "first_logit", "trace", "random_logit")
#: Extra float64 copies of the eNTK alive while comparing/solving (norms, eigvalsh, solve).
ENTK_F64_COPIES = 2
GIB = float(1 << 30)


# -- comparisons (pure functions of kernels) --------------------------------------------------
def flatten_entk(theta: torch.Tensor) -> torch.Tensor:
    """(N1, N2, O, O) eNTK -> (N1·O, N2·O) matrix with row index i·O + k (the layout of k ⊗ I_O).

    Args:
        theta: (N1, N2, O, O) eNTK, any float dtype.
    """
    n1, n2, o, _ = theta.shape
    return theta.permute(0, 2, 1, 3).reshape(n1 * o, n2 * o)


def kernel_distance(theta: torch.Tensor, approx: torch.Tensor) -> float:
    """Relative Frobenius error ‖approx ⊗ I_O − Θ‖_F / ‖Θ‖_F, without forming the Kronecker product.

    ‖k ⊗ I − Θ‖² = Σ_ij Σ_c (k_ij − Θ_ij,cc)² + Σ_ij Σ_{c≠d} Θ_ij,cd² (float64 sums).

    Args:
        theta: (N1, N2, O, O) eNTK.
        approx: (N1, N2) stand-in kernel.
    """
    theta, approx = theta.double(), approx.double()
    diag = theta.diagonal(dim1=2, dim2=3)  # (N1, N2, O)
    total = theta.square().sum()
    off = total - diag.square().sum()
    err2 = (diag - approx.unsqueeze(-1)).square().sum() + off.clamp_min(0)
    return float((err2 / total).sqrt())


def offdiag_share(theta: torch.Tensor) -> float:
    """‖Θ − blockdiag(Θ)‖_F / ‖Θ‖_F: the part of the eNTK that any k ⊗ I_O throws away.

    Args:
        theta: (N1, N2, O, O) eNTK.
    """
    theta = theta.double()
    total = theta.square().sum()
    off = (total - theta.diagonal(dim1=2, dim2=3).square().sum()).clamp_min(0)
    return float((off / total).sqrt())


def spectrum(k: torch.Tensor, ridge_rel: float) -> dict:
    """Extreme eigenvalues and the condition number of K + λI, λ = ridge_rel · trace(K)/dim(K).

    The eigenvalues of k ⊗ I_O are those of k, each O times, and trace(k ⊗ I)/(nO) =
    trace(k)/n, so the (n, n) stand-in gives the same numbers as its Kronecker product.
    λ_min is clipped at 0 in the condition number (round-off can make it slightly negative).

    Args:
        k: (D, D) symmetric kernel (an (n, n) stand-in or :func:`flatten_entk` of an eNTK).
    Returns:
        {lambda_max, lambda_min, ridge, cond} (floats; cond is inf for a singular K with λ = 0).
    """
    k = k.double()
    ev = torch.linalg.eigvalsh(0.5 * (k + k.T))
    ridge = relative_ridge(k, ridge_rel)
    lmax, lmin = float(ev[-1]), float(ev[0])
    denom = max(lmin, 0.0) + ridge
    return {"lambda_max": lmax, "lambda_min": lmin, "ridge": ridge,
            "cond": (lmax + ridge) / denom if denom > 0 else math.inf}


def regress(k_ll: torch.Tensor, k_el: torch.Tensor, targets: torch.Tensor, prior_l: torch.Tensor,
            prior_e: torch.Tensor, ridge_rel: float) -> tuple[torch.Tensor, float]:
    """Closed-form kernel regression f(E) = prior(E) + K_EL (K_LL + λI)⁻¹ (Y − prior(L)).

    λ = ridge_rel · trace(K_LL)/dim(K_LL), the look-ahead's ridge (arXiv 2206.12569, code). With
    prior = the network outputs this is the linearized network trained to convergence on L
    (arXiv 2206.12569, Eq. 11); with prior = 0 it is plain kernel regression.

    Args:
        k_ll: (n, n) stand-in or (n, n, O, O) eNTK on the labeled set.
        k_el: (m, n) or (m, n, O, O) between the evaluation set and the labeled set.
        targets: (n, O) one-hot labels; prior_l (n, O), prior_e (m, O).
    Returns:
        (m, O) float64 predictions and the absolute ridge λ.
    """
    r = (targets - prior_l).double()
    m, o = prior_e.shape
    if k_ll.dim() == 4:
        k, a, r = flatten_entk(k_ll).double(), flatten_entk(k_el).double(), r.reshape(-1, 1)
    else:
        k, a = k_ll.double(), k_el.double()
    ridge = relative_ridge(k, ridge_rel)
    k = 0.5 * (k + k.T) + ridge * torch.eye(k.shape[0], dtype=k.dtype, device=k.device)
    return prior_e.double() + (a @ torch.linalg.solve(k, r)).reshape(m, o), ridge


def fit_slope(widths, values) -> dict:
    """Least-squares fit log(value) = slope · log(width) + b (NaN with fewer than 2 widths).

    Args:
        widths: readout widths (> 0).
        values: measured errors at those widths (> 0), same length.
    """
    w, v = np.asarray(widths, dtype=float), np.asarray(values, dtype=float)
    ok = np.isfinite(v) & (v > 0) & np.isfinite(w) & (w > 0)
    if ok.sum() < 2:
        return {"slope": math.nan, "intercept": math.nan}
    slope, b = np.polyfit(np.log(w[ok]), np.log(v[ok]), 1)
    return {"slope": float(slope), "intercept": float(b)}


# -- cost --------------------------------------------------------------------------------------
class PeakMemory:
    """Peak memory growth (bytes) over a block: CUDA allocator peak, or sampled process RSS on CPU.

    On the CPU a thread reads /proc/self/statm every ms. glibc's mmap threshold is pinned at
    1 MiB (:func:`_pin_mmap_threshold`) so that large tensors are mapped on allocation and
    unmapped on free, and the RSS rises and falls with them. ``peak`` is None where neither
    is available.

    Args:
        device: where the kernel runs: ``cuda`` uses the allocator's peak, anything else the sampled
            RSS.
    """

    def __init__(self, device: torch.device):
        self.device, self.peak = torch.device(device), None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        _pin_mmap_threshold()
        self._stop, self._max, self._base = threading.Event(), 0, _rss()
        if self._base is not None:
            self._max = self._base
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.001):
            self._max = max(self._max, _rss() or 0)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self._base is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, _rss() or 0) - self._base
        return False


_PINNED = []


def _pin_mmap_threshold(nbytes: int = 1 << 20) -> None:
    """Fix glibc's mmap threshold (it otherwise grows after each large free, after which big
    tensors come from the heap and their memory is never returned, hiding them from the RSS)."""
    if _PINNED:
        return
    _PINNED.append(True)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, nbytes)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: the RSS figure is then a lower bound
        pass


def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def measure_kernel(model: nn.Module, x1, x2=None, *, kind: str, method: str = "auto"):
    """``kernel(model, x1, x2, kind=kind)`` with its wall time (s) and peak memory growth (bytes).

    Args:
        model: the network.
        x1: (N1, *F) inputs.
        x2: (N2, *F) inputs or None for x2 = x1.
        kind: kernel kind (see :func:`entk_al.ntk.kernel`).
        method: ``auto``, ``gram`` or ``jacobian`` (see :func:`entk_al.ntk.kernel`).
    """
    device = next(model.parameters()).device
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        k = kernel(model, x1, x2, kind=kind, method=method)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
    return k, seconds, mem.peak


def largest_n(sizes, peaks, budget_bytes: float, kernel_bytes_per_pair: int) -> int:
    """Largest N whose kernel computation fits ``budget_bytes``, from peak(N) ≈ a + c·N².

    c is the slope between the two largest measured sizes (the fixed part a, weight-sized
    temporaries, cancels), floored at the kernel's own bytes per pair of points (O²·itemsize
    for the eNTK, itemsize for the pNTK); a is what the largest size leaves over.

    Args:
        sizes: measured N values.
        peaks: peak memory growth in bytes at each N (None where not measurable).
        budget_bytes: memory budget in bytes.
        kernel_bytes_per_pair: bytes of the kernel result per pair of points.
    """
    pts = sorted((n, p) for n, p in zip(sizes, peaks) if p is not None)
    c, a = float(kernel_bytes_per_pair), 0.0
    if len(pts) >= 2 and pts[-1][0] > pts[-2][0]:
        (n1, p1), (n2, p2) = pts[-2], pts[-1]
        c = max(c, (p2 - p1) / (n2 ** 2 - n1 ** 2))
    if pts:
        a = max(0.0, pts[-1][1] - c * pts[-1][0] ** 2)
    return int(math.sqrt(max(0.0, budget_bytes - a) / c))


def entk_bytes(n1: int, n2: int, num_outputs: int, itemsize: int) -> int:
    """Memory for an (n1, n2, O, O) eNTK in the model dtype plus its float64 working copies.

    Args:
        n1: rows.
        n2: columns.
        num_outputs: O.
        itemsize: bytes per element of the model dtype.
    """
    return n1 * n2 * num_outputs ** 2 * (itemsize + 8 * ENTK_F64_COPIES)


# -- the study ---------------------------------------------------------------------------------
@dataclass
class ApproxSettings:
    """What :func:`run_approx` measures.

    Attributes:
        widths: readout widths (``None``: the model's default width).
        checkpoints: 0 = at init; n > 0 = after training on the first n of a seeded labeled set.
        n_points: N test points per kernel-distance subset.
        subsets: independent random test subsets for the kernel distance (spread = stability).
        kr_labels: labeled points of the kernel regression (the first ``kr_labels`` of the same
            nested labeled set the checkpoints train on).
        eval_size: test points the regression is evaluated on.
        cost_sizes: N at which kernel time and memory are measured (at init).
        ridge_rel: relative ridge, λ = ridge_rel · trace(K)/dim(K) (look-ahead default 1e-3).
        memory_budget_gib: refuse eNTKs whose estimated memory exceeds this; also the budget of
            the "largest N" figure.
        seed: model init, labeled set, subsets, random logit, mini-batches.
        method: kernel engine (see :func:`entk_al.ntk.kernel`).
        kernel_params: parameter-subset specs (as the look-ahead's ``-o kernel_params``:
            ``trainable``, ``all``, ``last:N``, ``prefix,prefix``) compared with the full pNTK
            (:func:`subset_record`); empty: none.
    """

    widths: list
    checkpoints: list[int]
    n_points: int = 200
    subsets: int = 2
    kr_labels: int = 100
    eval_size: int = 1000
    cost_sizes: list[int] = field(default_factory=lambda: [64, 128, 256])
    ridge_rel: float = 1e-3
    memory_budget_gib: float = 8.0
    seed: int = 0
    method: str = "auto"
    kernel_params: list[str] = field(default_factory=list)


def check_settings(s: ApproxSettings, pool_size: int, test_size: int, num_outputs: int, itemsize: int) -> None:
    """Refuse impossible sizes before anything is allocated.

    Args:
        s: the study's settings.
        pool_size: points in the pool (train) split.
        test_size: points in the test split.
        num_outputs: O, the model's output size.
        itemsize: bytes per element of the model dtype.

    Raises:
        ConfigError: no test split, sizes < 1, more points than the splits hold, or an eNTK
            (with its float64 working copies) larger than the memory budget; the message says how large.
    """
    if test_size == 0:
        raise ConfigError("approx measures kernels and kernel regression on the test split, and this dataset "
                          "has none (0 test points); use a dataset with a test split")
    for name, v in (("--n-points", s.n_points), ("--subsets", s.subsets), ("--kr-labels", s.kr_labels),
                    ("--eval-size", s.eval_size)):
        if v < 1:
            raise ConfigError(f"{name} must be >= 1, got {v}")
    if not s.widths or not s.checkpoints:
        raise ConfigError("need at least one width and one checkpoint")
    if any(n < 2 for n in s.cost_sizes):
        raise ConfigError(f"--cost-sizes must be >= 2, got {s.cost_sizes}")
    if s.ridge_rel < 0:
        raise ConfigError(f"--ridge-rel must be >= 0, got {s.ridge_rel}")
    from ..ntk.common import check_params_spec, parse_params

    for spec in s.kernel_params:
        try:
            check_params_spec(parse_params(spec))
        except ValueError as exc:
            raise ConfigError(f"--kernel-params {spec!r}: {exc}") from None
    if s.n_points * s.subsets > test_size:
        raise ConfigError(f"--n-points {s.n_points} x --subsets {s.subsets} exceeds the {test_size} test points")
    if s.eval_size > test_size or max(s.cost_sizes) > test_size:
        raise ConfigError(f"--eval-size and --cost-sizes must be <= the {test_size} test points")
    n_max = max([s.kr_labels, *s.checkpoints])
    if n_max > pool_size:
        raise ConfigError(f"{n_max} labels requested but the pool holds {pool_size} points")
    budget = s.memory_budget_gib * GIB
    for what, n1, n2 in (("--n-points", s.n_points, s.n_points), ("--eval-size x --kr-labels", s.eval_size,
                                                                   s.kr_labels),
                         ("--kr-labels", s.kr_labels, s.kr_labels), ("--cost-sizes", max(s.cost_sizes),
                                                                     max(s.cost_sizes))):
        need = entk_bytes(n1, n2, num_outputs, itemsize)
        if need > budget:
            raise ConfigError(f"the eNTK for {what} ({n1} x {n2} points, O={num_outputs}) would need "
                              f"{need / GIB:.1f} GiB with its float64 working copies, over the "
                              f"{s.memory_budget_gib:g} GiB budget (--memory-gib); use fewer points")


def make_model_factory(spec: str, input_shape: tuple[int, ...], num_classes: int, seed: int
                       ) -> Callable[[int | None], nn.Module]:
    """width -> freshly initialized model (parameters from ``seed``), :func:`entk_al.nets.models.build_model`.

    ``spec`` is a built-in name (:data:`entk_al.nets.models.MODELS`) or ``module:Class`` /
    ``path/file.py:Class``; a user class is called as ``Class(input_shape, num_classes)``
    plus ``width=w`` when a width is given.

    Raises:
        ConfigError: unknown name, or a class that cannot be loaded (checked here, before any
            model is built); a class that fails to build, when the factory is called.
    """
    if spec not in MODELS:
        if ":" not in spec:
            build_model(spec, input_shape, num_classes)  # raises the unknown-name error
        user_model_class(spec)
    return lambda width: build_model(spec, input_shape, num_classes, width, seed=seed)


def check_kernel_params(model: nn.Module, specs: list[str]) -> None:
    """Refuse parameter-subset specs that are malformed or select nothing of ``model``.

    Raises:
        ConfigError: naming the spec (``--kernel-params``) and the reason.
    """
    from ..ntk.common import parse_params, select_params

    for spec in specs:
        try:
            select_params(model, parse_params(spec))
        except ValueError as exc:
            raise ConfigError(f"--kernel-params {spec!r}: {exc}") from None


def _accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred.argmax(1).cpu() == y.cpu()).double().mean())


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(1) == b.argmax(1)).double().mean())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def distance_record(model: nn.Module, x: torch.Tensor, logit: int, method: str) -> dict:
    """Kernel distances of all stand-ins and the off-diagonal share on one (N, ...) point set.

    Args:
        model: the network at one width and checkpoint.
        x: (N, *F) points.
        logit: class index c of the ``random_logit`` stand-in Θ_cc.
        method: kernel method (see :func:`entk_al.ntk.kernel`).
    """
    theta, t_entk, _ = measure_kernel(model, x, kind="entk", method=method)
    kp, t_pntk, _ = measure_kernel(model, x, kind="pntk", method=method)
    ks = {"pntk": kp, "first_logit": kernel(model, x, kind="first_logit", method=method),
          "trace": kernel(model, x, kind="trace", method=method), "random_logit": theta[:, :, logit, logit]}
    out = {f"error_{name}": kernel_distance(theta, k) for name, k in ks.items()}
    out.update(offdiag_share=offdiag_share(theta), entk_seconds=t_entk, pntk_seconds=t_pntk)
    return out


def subset_record(model: nn.Module, xs: list[torch.Tensor], x_l, y_l, x_e, y_e, num_classes: int, ridge_rel: float,
                  method: str, spec: str) -> dict:
    """How far the pNTK over the parameter subset ``spec`` is from the pNTK over all parameters.

    The NTK is a sum over parameters (Jacot et al. 2018, eq. 3), so the subset kernel K_S
    drops the terms of the others. Reported:

    - ``rel_distance``: mean over the point sets ``xs`` of ‖K_S − K‖_F / ‖K‖_F;
    - ``rel_distance_scaled``: the same after the best scalar factor, min_c ‖c·K_S − K‖_F / ‖K‖_F
      = √(1 − cos²), cos = ⟨K_S, K⟩_F / (‖K_S‖_F ‖K‖_F). The look-ahead and the kernel regression
      with a ridge relative to trace(K) (arXiv 2206.12569, authors' code) give the same answer
      for K and c·K, so this is the part of the difference they can see;
    - the linearized kernel regression (prior = network outputs, :func:`regress`; the
      look-ahead's posterior mean, arXiv 2206.12569 Eq. 11) from (x_l, y_l) to x_e with K_S vs
      K: argmax ``agreement``, relative output difference ``rel_diff``, and both accuracies;
    - ``time_ratio``: seconds of K_S over seconds of K on ``xs`` (same engine, same points),
      and the parameter counts.

    Args:
        model: the network.
        xs: point sets (N, *F) for the distance (the study's test subsets).
        x_l: (n, *F) labeled inputs; ``y_l``: (n,) int64 labels.
        x_e: (m, *F) evaluation inputs; ``y_e``: (m,) int64 labels.
        num_classes: O.
        ridge_rel: relative ridge (:func:`entk_al.lookahead.system.relative_ridge`).
        method: kernel engine (see :func:`entk_al.ntk.kernel`).
        spec: the subset, as ``-o kernel_params`` takes it (:func:`entk_al.ntk.common.parse_params`).

    Raises:
        ValueError: ``spec`` is malformed or matches no parameter.
    """
    from ..ntk.common import parse_params, select_params

    params = parse_params(spec)
    n_sub, n_all = (sum(p.numel() for p in select_params(model, ps).values()) for ps in (params, "all"))
    dev = next(model.parameters()).device
    pk = lambda a, b=None, ps="all": kernel(model, a, b, kind="pntk", method=method, params=ps)  # noqa: E731
    f_l, f_e = predict(model, x_l, device=dev).double(), predict(model, x_e, device=dev).double()
    y1 = F.one_hot(y_l.to(dev), num_classes).double()
    full, _ = regress(pk(x_l), pk(x_e, x_l), y1, f_l, f_e, ridge_rel)
    sub, _ = regress(pk(x_l, ps=params), pk(x_e, x_l, ps=params), y1, f_l, f_e, ridge_rel)
    dists, scaled, t_full, t_sub = [], [], 0.0, 0.0
    for x in xs:
        k_full, sec_full, _ = measure_kernel(model, x, kind="pntk", method=method)
        t0 = time.perf_counter()
        k_sub = kernel(model, x, kind="pntk", method=method, params=params)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t_sub += time.perf_counter() - t0
        t_full += sec_full
        a, b = k_sub.double(), k_full.double()
        dists.append(_rel(a, b))
        cos = float((a * b).sum() / (a.norm() * b.norm()))
        scaled.append(math.sqrt(max(0.0, 1.0 - min(1.0, cos) ** 2)))
    return {"spec": spec, "num_params": n_sub, "num_params_all": n_all,
            "rel_distance": float(np.mean(dists)), "rel_distance_scaled": float(np.mean(scaled)),
            "agreement": _agreement(sub, full), "rel_diff": _rel(sub, full),
            "accuracy_subset": _accuracy(sub, y_e), "accuracy_all": _accuracy(full, y_e),
            "seconds_subset": t_sub, "seconds_all": t_full, "time_ratio": t_sub / max(t_full, 1e-12)}


def regression_record(model: nn.Module, x_l, y_l, x_e, y_e, num_classes: int, ridge_rel: float, method: str,
                      real_e: torch.Tensor | None = None) -> dict:
    """Spectrum of the labeled-set kernel and kernel regression with pNTK ⊗ I vs eNTK.

    ``real_e`` (m, O): outputs of the network actually trained on (x_l, y_l) from ``model``'s
    weights; when given, the linearized predictions are compared with them.

    Args:
        model: the network (θ at which the kernels are taken).
        x_l: (n, *F) labeled inputs.
        y_l: (n,) int64 labels.
        x_e: (m, *F) evaluation inputs.
        y_e: (m,) int64 evaluation labels.
        num_classes: O.
        ridge_rel: relative ridge; absolute λ = ridge_rel · trace(K)/n
            (:func:`entk_al.lookahead.system.relative_ridge`).
        method: kernel method (see :func:`entk_al.ntk.kernel`).
    """
    dev = next(model.parameters()).device
    t_ll, t_el = kernel(model, x_l, kind="entk", method=method), kernel(model, x_e, x_l, kind="entk", method=method)
    p_ll, p_el = kernel(model, x_l, kind="pntk", method=method), kernel(model, x_e, x_l, kind="pntk", method=method)
    se, sp = spectrum(flatten_entk(t_ll), ridge_rel), spectrum(p_ll, ridge_rel)
    f_l, f_e = predict(model, x_l, device=dev).double(), predict(model, x_e, device=dev).double()
    y1 = F.one_hot(y_l.to(dev), num_classes).double()
    out = {"spectrum": {"entk": se, "pntk": sp,
                        "lambda_max_rel_diff": (sp["lambda_max"] - se["lambda_max"]) / se["lambda_max"],
                        "cond_rel_diff": (sp["cond"] - se["cond"]) / se["cond"]},
           "network_accuracy": _accuracy(f_e, y_e)}
    for name, (pl, pe) in {"kernel_regression": (torch.zeros_like(f_l), torch.zeros_like(f_e)),
                           "linearized": (f_l, f_e)}.items():
        pred_e, ridge_e = regress(t_ll, t_el, y1, pl, pe, ridge_rel)
        pred_p, ridge_p = regress(p_ll, p_el, y1, pl, pe, ridge_rel)
        rec = {"accuracy_entk": _accuracy(pred_e, y_e), "accuracy_pntk": _accuracy(pred_p, y_e),
               "agreement": _agreement(pred_p, pred_e), "rel_diff": _rel(pred_p, pred_e),
               "ridge_entk": ridge_e, "ridge_pntk": ridge_p}
        if name == "linearized" and real_e is not None:
            real = real_e.double()
            rec.update(real_accuracy=_accuracy(real, y_e),
                       rel_error_entk_vs_real=_rel(pred_e, real), rel_error_pntk_vs_real=_rel(pred_p, real),
                       rel_error_init_vs_real=_rel(f_e, real),
                       agreement_entk_vs_real=_agreement(pred_e, real), agreement_pntk_vs_real=_agreement(pred_p, real))
        out[name] = rec
    return out


def cost_records(model: nn.Module, x_test: torch.Tensor, sizes: list[int], budget_bytes: float, method: str) -> dict:
    """Time and peak memory of the pNTK and eNTK kernels at each N, and the largest N in budget.

    Args:
        model: the network at one width.
        x_test: (N_test, *F) points; the first N of them are used for each size.
        sizes: N values to time.
        budget_bytes: memory budget in bytes for the largest-N extrapolation (:func:`largest_n`).
        method: kernel method (see :func:`entk_al.ntk.kernel`).
    """
    rows = []
    for n in sizes:
        x = x_test[:n]
        row = {"n": n}
        for kind in ("pntk", "entk"):
            k, sec, peak = measure_kernel(model, x, kind=kind, method=method)
            row.update({f"{kind}_seconds": sec, f"{kind}_peak_bytes": peak,
                        f"{kind}_kernel_bytes": k.numel() * k.element_size()})
            del k
        rows.append(row)
    out = {"sizes": rows}
    for kind in ("pntk", "entk"):
        per_pair = rows[-1][f"{kind}_kernel_bytes"] // rows[-1]["n"] ** 2
        out[f"largest_n_{kind}"] = largest_n([r["n"] for r in rows], [r[f"{kind}_peak_bytes"] for r in rows],
                                             budget_bytes, per_pair)
    return out


def run_approx(factory: Callable[[int | None], nn.Module], data, settings: ApproxSettings, train_cfg: TrainConfig,
               *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
               progress: Callable[[str, int], None] | None = None,
               on_width: Callable[[dict], None] | None = None) -> dict:
    """Measure pNTK ⊗ I against the eNTK for each width and checkpoint (see module docstring).

    Args:
        factory: width -> initialized model (N, *input_shape) -> (N, O), O = ``data.num_classes``.
        data: an :class:`~entk_al.data.ALDataset` (pool = train split; test split held out).
        train_cfg: the loop's training recipe (checkpoints are trained from the init weights).
        progress: called with (description, steps done) after each step; total steps =
            ``len(widths) * (len(checkpoints) + 1)`` (the +1 is the cost measurement).
        on_width: called with the result so far (``"finished": False``) after each width, so a
            long study can save partial results.
        settings: widths, checkpoints, sizes, seed and budget of the study.
        device: device the models and kernels run on.
        dtype: floating dtype of the models (float32 or float64).
    Returns:
        JSON-ready dict: ``settings``, ``records`` (one per width × checkpoint), ``cost``
        (one per width), ``fits`` (slope of log error vs log width at init).
    Raises:
        ConfigError: see :func:`check_settings`; a model whose output size is not O.
    """
    s = settings
    device = torch.device(device)
    o = data.num_classes
    itemsize = torch.empty(0, dtype=dtype).element_size()
    check_settings(s, data.pool_size, len(data.x_test), o, itemsize)
    labeled = numpy_rng(s.seed, -1, APPROX_LABELED).permutation(data.pool_size)[:max([s.kr_labels, *s.checkpoints])]
    perm = numpy_rng(s.seed, -1, APPROX_TEST).permutation(len(data.x_test))
    subsets = [np.sort(perm[i * s.n_points:(i + 1) * s.n_points]) for i in range(s.subsets)]
    eval_ids = np.sort(numpy_rng(s.seed, -1, APPROX_EVAL).permutation(len(data.x_test))[:s.eval_size])
    logit = int(numpy_rng(s.seed, -1, APPROX_RANDOM_LOGIT).integers(o))
    x_e, y_e = data.x_test[eval_ids].to(device, dtype), data.y_test[eval_ids]
    kr = labeled[:s.kr_labels]
    x_kr, y_kr = data.x_train[kr].to(device, dtype), data.y_train[kr]
    records, costs, step = [], [], 0
    for width in s.widths:
        net0 = factory(width).to(device=device, dtype=dtype)
        with torch.no_grad():
            n_out = predict(net0, x_e[:1], device=device).shape[1]
        if n_out != o:
            raise ConfigError(f"the model has {n_out} outputs but the dataset has {o} classes")
        n_params = sum(p.numel() for p in net0.parameters() if p.requires_grad)
        check_kernel_params(net0, s.kernel_params)
        nets, train_info = {0: net0}, {}
        for n in sorted({n for n in [*s.checkpoints, s.kr_labels] if n > 0}):
            net = copy.deepcopy(net0)
            ids = labeled[:n]
            train_info[n] = train_model(net, data.x_train[ids], data.y_train[ids], train_cfg,
                                        torch_generator(s.seed, 0, TRAIN))
            nets[n] = net
        for n in s.checkpoints:
            net = nets[n]
            rec = {"width": width, "checkpoint": n, "num_params": n_params, "train": train_info.get(n)}
            dists = [distance_record(net, data.x_test[ids].to(device, dtype), logit, s.method) for ids in subsets]
            rec["subsets"] = dists
            rec["distance"] = {k: float(np.mean([d[k] for d in dists])) for k in dists[0]}
            rec["distance_spread"] = {k: float(np.ptp([d[k] for d in dists])) for k in dists[0]}
            real = None
            if n == 0 and s.kr_labels in nets:
                real = predict(nets[s.kr_labels], x_e, device=device)
            rec.update(regression_record(net, x_kr, y_kr, x_e, y_e, o, s.ridge_rel, s.method, real))
            if s.kernel_params:
                xs = [data.x_test[ids].to(device, dtype) for ids in subsets]
                rec["kernel_params"] = [subset_record(net, xs, x_kr, y_kr, x_e, y_e, o, s.ridge_rel, s.method, spec)
                                        for spec in s.kernel_params]
            records.append(rec)
            step += 1
            if progress:
                progress(f"width {width_label(width)}: {'init' if n == 0 else f'{n} labels'}", step)
        cost = cost_records(net0, data.x_test.to(device, dtype), s.cost_sizes, s.memory_budget_gib * GIB, s.method)
        costs.append({"width": width, "num_params": n_params, **cost})
        step += 1
        if progress:
            progress(f"width {width_label(width)}: cost", step)
        if on_width and width != s.widths[-1]:
            on_width(_result(s, train_cfg, data, o, logit, device, dtype, kr, eval_ids, subsets, records, costs,
                             finished=False))
    return _result(s, train_cfg, data, o, logit, device, dtype, kr, eval_ids, subsets, records, costs, finished=True)


def _result(s, train_cfg, data, o, logit, device, dtype, kr, eval_ids, subsets, records, costs, finished) -> dict:
    fits = {}
    for n in s.checkpoints:
        rows = [r for r in records if r["checkpoint"] == n and r["width"] is not None]
        fits[str(n)] = {name: fit_slope([r["width"] for r in rows], [r["distance"][name] for r in rows])
                        for name in [f"error_{k}" for k in STANDINS] + ["offdiag_share"]}
    return {"settings": {**asdict(s), "train": asdict(train_cfg), "dataset": data.name, "num_classes": o,
                         "random_logit": logit, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
                         "labeled_ids": kr.tolist(), "eval_ids": eval_ids.tolist(),
                         "subset_ids": [x.tolist() for x in subsets]},
            "records": list(records), "cost": list(costs), "fits": fits, "finished": finished}


def width_label(width: int | None) -> str:
    """How a width is shown: the number, or ``"default"`` for the model's own width (``None``).

    Args:
        width: the width parameter passed to the model, or None for its default.
    """
    return "default" if width is None else str(width)
