"""MaxHerding and Uncertainty Herding: greedy kernel coverage of the candidate subset.

Sources: Bae, Noh & Sutherland, ECCV 2024 (arXiv 2407.12212) and Bae, Oliveira & Sutherland,
ICLR 2025 (arXiv 2412.20644); formulas, the authors' choices and where this differs from them:
:mod:`entk_al.lookahead.herding`. The evaluation set U is the round's candidate subset (the authors
evaluate coverage on the labeled set plus a random unlabeled subset; labeled points add no
gain, since k(l, l) = 1 ≥ k(l, c) for a normalized kernel) and the coverage starts from the
labeled set, m_u = max_{l∈L} k(u, l).

Kernels (``kernel`` option), both a function of a cosine between unit-normalized features:

- ``pntk`` (default): the normalized pNTK k(x, x')/√(k(x, x) k(x', x')) of this round's
  network (sum-of-logits pNTK, Mohamadi, Bae & Sutherland, arXiv 2206.12543), its blocks from
  :meth:`entk_al.round.context.RoundContext.kernel` (computed on the executor's shards, each input's
  features once per round);
- ``embedding``: cosines of the penultimate embeddings (:meth:`RoundContext.embeddings`), the
  feature space the authors' kernels act on (they use self-supervised or classifier features).

``bandwidth`` turns the cosine c into the coverage kernel: ``none`` keeps c; h > 0 gives the
authors' Gaussian exp(−(2 − 2c)/h²); ``adaptive`` is UHerding's radius (h = the smallest
non-zero distance between two labeled points).

Memory: the (C × C) coverage kernel and the greedy's (C × C) per-point gain terms, both float32
(the round context also caches the raw pNTK block of that size); temporaries are float64 blocks
of rows or columns sized by ``memory_budget_mb``.
"""

from __future__ import annotations

import numpy as np
import torch

from entk_al.errors import StrategyError
from entk_al.lookahead.herding import (
    UNCERTAINTIES,
    calibrate_temperature,
    cosine_from_kernel,
    greedy_coverage,
    loo_outputs,
    min_nonzero_distance,
    similarity_kernel,
    uncertainty_weights,
)
from entk_al.lookahead.system import cholesky_with_jitter, relative_ridge
from entk_al.round.context import RoundContext

KERNELS = ("pntk", "embedding")
BANDWIDTHS = ("auto", "none", "adaptive")


def _check_bandwidth(bandwidth: float | str) -> float | str:
    if isinstance(bandwidth, str):
        if bandwidth not in BANDWIDTHS:
            raise ValueError(f"bandwidth must be a number > 0 or one of {', '.join(BANDWIDTHS)}, got {bandwidth!r}")
        return bandwidth
    if not (np.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    return float(bandwidth)


class _Herding:
    """What MaxHerding and UHerding share: the coverage kernel on the candidates, and the greedy."""

    name = "herding"
    #: what ``bandwidth="auto"`` means for each kernel.
    auto_bandwidth: dict[str, float | str] = {"pntk": "none", "embedding": 1.0}

    def __init__(self, kernel: str = "pntk", bandwidth: float | str = "auto", memory_budget_mb: int = 256):
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        if memory_budget_mb < 1:
            raise ValueError(f"memory_budget_mb must be >= 1, got {memory_budget_mb}")
        self.kernel, self.bandwidth = kernel, _check_bandwidth(bandwidth)
        self.memory_budget_mb = int(memory_budget_mb)

    # -- cosines -----------------------------------------------------------------------
    def _pntk_parts(self, ctx: RoundContext, cand: np.ndarray, lab: np.ndarray):
        """(kept candidates, their cosine-block function, cos(cand, L), cos(L, L))."""
        k_ll = ctx.kernel(lab)
        if not ctx.keep_mask(lab).all() or not bool(torch.isfinite(k_ll).all()):
            raise StrategyError("the kernel of the labeled set has non-finite entries (float32 overflow?); "
                                "check the inputs for huge values")
        k_cc, k_cl = ctx.kernel(cand), ctx.kernel(cand, lab)
        d_c, d_l = k_cc.diagonal().double(), k_ll.diagonal().double()
        # A zero-gradient point has no direction in the pNTK feature space: no cosine.
        keep = ctx.keep_mask(cand) & (d_c > 0).cpu().numpy() & torch.isfinite(k_cl).all(1).cpu().numpy()
        ctx.exclude(cand[~keep], "kernel")
        lab_ok = d_l > 0
        rows = torch.from_numpy(np.flatnonzero(keep)).to(k_cc.device)
        if not keep.all():
            k_cc, k_cl, d_c = k_cc[rows][:, rows], k_cl[rows], d_c[rows]

        def block(s: int, e: int) -> torch.Tensor:
            return cosine_from_kernel(k_cc[:, s:e], d_c, d_c[s:e])

        cos_cl = cosine_from_kernel(k_cl[:, lab_ok], d_c, d_l[lab_ok])
        cos_ll = cosine_from_kernel(k_ll[lab_ok][:, lab_ok], d_l[lab_ok], d_l[lab_ok])
        return cand[keep], block, cos_cl, cos_ll

    def _embedding_parts(self, ctx: RoundContext, cand: np.ndarray, lab: np.ndarray):
        e_c, e_l = ctx.embeddings(cand).double(), ctx.embeddings(lab).double()
        n_c, n_l = e_c.norm(dim=1), e_l.norm(dim=1)
        keep = (n_c > 0).cpu().numpy()
        ctx.exclude(cand[~keep], "embeddings")
        lab_ok = torch.isfinite(e_l).all(1) & (n_l > 0)
        u_c = e_c[torch.from_numpy(keep).to(e_c.device)] / n_c[torch.from_numpy(keep).to(e_c.device)][:, None]
        u_l = e_l[lab_ok] / n_l[lab_ok][:, None]

        def block(s: int, e: int) -> torch.Tensor:
            return (u_c @ u_c[s:e].T).clamp_(-1.0, 1.0)

        return cand[keep], block, (u_c @ u_l.T).clamp_(-1.0, 1.0), (u_l @ u_l.T).clamp_(-1.0, 1.0)

    # -- the coverage kernel ------------------------------------------------------------
    def _resolve_bandwidth(self, cos_ll: torch.Tensor) -> float | None:
        bw = self.auto_bandwidth[self.kernel] if self.bandwidth == "auto" else self.bandwidth
        if bw == "none":
            return None
        if bw == "adaptive":
            h = min_nonzero_distance(cos_ll)
            return 1.0 if h is None else h  # fewer than two distinct labeled points: the authors' h = 1
        return float(bw)

    def _chunk(self, rows: int) -> int:
        return max(1, self.memory_budget_mb * 2**20 // (16 * max(rows, 1)))

    def coverage_problem(self, ctx: RoundContext, k: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """(candidate ids (C,), coverage kernel (C, C) float32, starting coverage (C,) float64).

        Records ``kernel`` and ``bandwidth`` in ``ctx.info``.

        Raises:
            StrategyError: fewer than ``k`` candidates have a usable kernel, or the labeled set's
                kernel is not finite.
        """
        lab = ctx.labeled_ids
        parts = self._pntk_parts if self.kernel == "pntk" else self._embedding_parts
        cand, block, cos_cl, cos_ll = parts(ctx, ctx.candidate_ids, lab)
        if len(cand) < k:
            raise StrategyError(f"only {len(cand)} candidates have a usable {self.kernel} kernel, "
                                f"fewer than the {k} to query")
        h = self._resolve_bandwidth(cos_ll)
        num_c = len(cand)
        kern = torch.empty(num_c, num_c, dtype=torch.float32, device=cos_cl.device)
        step = self._chunk(num_c)
        for s in range(0, num_c, step):
            kern[:, s:s + step] = similarity_kernel(block(s, s + step), h).to(torch.float32)
        if cos_cl.shape[1]:
            covered = similarity_kernel(cos_cl, h).max(dim=1).values
        else:  # no labeled point with a direction: nothing is covered yet
            covered = torch.full((num_c,), -1.0 if h is None else 0.0, dtype=torch.float64, device=kern.device)
        ctx.info.update(kernel=self.kernel, bandwidth="none" if h is None else h)
        return cand, kern, covered

    def weights(self, ctx: RoundContext, cand: np.ndarray) -> torch.Tensor | None:
        """(C,) coverage weights of the candidates, or None for uniform (MaxHerding)."""
        return None

    def select(self, ctx: RoundContext, k: int) -> np.ndarray:
        cand, kern, covered = self.coverage_problem(ctx, k)
        w = self.weights(ctx, cand)
        with ctx.progress.task(f"{self.name}, {len(cand)} candidates", total=k) as advance:
            picks, gains = greedy_coverage(kern, covered, k, w, chunk_rows=self._chunk(len(cand)),
                                           on_pick=lambda n: advance(1))
        ctx.info.update(num_candidates=int(len(cand)), coverage_gain=float(sum(gains)),
                        coverage_gain_last=float(gains[-1]))
        return cand[picks]


class MaxHerdingSampling(_Herding):
    """MaxHerding: greedy generalized coverage Σ_u max_{s∈L∪S} k(u, s) of the candidates (pass options with ``-o``).

    Each pick adds the candidate c with the largest gain Σ_u max(k(u, c) − m_u, 0) over the
    candidate subset U (MaxHerding, Bae, Noh & Sutherland, ECCV 2024); details in :mod:`strategies.herding`.

    Args:
        kernel: ``pntk`` (default: the normalized pNTK of this round's network) | ``embedding``
            (cosine of the penultimate embeddings).
        bandwidth: ``auto`` (default: ``none`` for ``pntk``, the authors' h = 1 for
            ``embedding``) | ``none`` (the cosine itself) | ``adaptive`` (smallest non-zero
            distance between labeled points) | h > 0 (Gaussian exp(−(2 − 2 cos)/h²)).
        memory_budget_mb: MiB for the float64 temporaries (blocks of kernel rows or columns).
    """

    name = "max_herding"
    description = "greedy kernel coverage of the candidates, normalized pNTK (MaxHerding, Bae et al. ECCV 2024)"

    def __repr__(self) -> str:
        return f"MaxHerdingSampling(kernel={self.kernel!r}, bandwidth={self.bandwidth!r})"


class UncertaintyHerdingSampling(_Herding):
    """Uncertainty Herding: greedy coverage weighted by the model's uncertainty (pass options with ``-o``).

    Each pick adds the candidate c with the largest gain Σ_u w_u · max(k(u, c) − m_u, 0), w_u
    the uncertainty of u under softmax(f(u)/T) (Bae, Oliveira & Sutherland, ICLR 2025); the
    adaptive radius (``bandwidth=auto``) and the temperature make it move from coverage to
    uncertainty sampling as labels accumulate. Details in :mod:`strategies.herding`.

    Args:
        kernel: ``pntk`` (default) | ``embedding``; the cosine the kernel is built from.
        bandwidth: ``auto`` (default: ``adaptive``, the authors' radius: the smallest
            non-zero distance between two labeled points) | ``none`` | ``adaptive`` | h > 0.
        temperature: ``loo`` (default: the T with the lowest ECE of the linearized network's
            leave-one-out outputs on the labeled set) | T > 0 (fixed; 1 = no scaling).
        uncertainty: ``margin`` (default, 1 − (p_(1) − p_(2))) | ``entropy`` (nats) |
            ``least_confidence`` (1 − max p).
        ridge_rel: λ relative to the kernel scale for the leave-one-out system, as in the look-ahead.
        memory_budget_mb: MiB for the float64 temporaries (blocks of kernel rows or columns).
    """

    name = "uncertainty_herding"
    description = "uncertainty-weighted kernel coverage, adaptive radius (UHerding, Bae et al. ICLR 2025)"
    auto_bandwidth = {"pntk": "adaptive", "embedding": "adaptive"}

    def __init__(self, kernel: str = "pntk", bandwidth: float | str = "auto", temperature: float | str = "loo",
                 uncertainty: str = "margin", ridge_rel: float = 1e-3, memory_budget_mb: int = 256):
        super().__init__(kernel=kernel, bandwidth=bandwidth, memory_budget_mb=memory_budget_mb)
        if isinstance(temperature, str):
            if temperature != "loo":
                raise ValueError(f"temperature must be 'loo' or a number > 0, got {temperature!r}")
        elif not (np.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if uncertainty not in UNCERTAINTIES:
            raise ValueError(f"uncertainty must be one of {', '.join(UNCERTAINTIES)}, got {uncertainty!r}")
        if not (np.isfinite(ridge_rel) and ridge_rel >= 0):
            raise ValueError(f"ridge_rel must be >= 0, got {ridge_rel}")
        self.temperature = temperature if isinstance(temperature, str) else float(temperature)
        self.uncertainty, self.ridge_rel = uncertainty, float(ridge_rel)

    def fitted_temperature(self, ctx: RoundContext) -> float:
        """T: fixed, or calibrated on the labeled set's leave-one-out outputs
        (:func:`entk_al.lookahead.herding.loo_outputs`)."""
        if not isinstance(self.temperature, str):
            return self.temperature
        lab = ctx.labeled_ids
        if len(lab) < 2:
            return 1.0
        k_ll = ctx.kernel(lab)
        if not bool(torch.isfinite(k_ll).all()):
            raise StrategyError("the kernel of the labeled set has non-finite entries (float32 overflow?); "
                                "check the inputs for huge values, or give a fixed temperature")
        chol, _ = cholesky_with_jitter(k_ll, relative_ridge(k_ll, self.ridge_rel))
        loo = loo_outputs(chol, ctx.labeled_onehot(), ctx.logits(lab))
        return calibrate_temperature(loo, torch.from_numpy(ctx.labeled_targets).to(loo.device))

    def weights(self, ctx: RoundContext, cand: np.ndarray) -> torch.Tensor:
        t = self.fitted_temperature(ctx)
        w = uncertainty_weights(ctx.logits(cand), t, self.uncertainty)
        uniform = not bool(w.sum() > 0)  # no uncertainty anywhere: plain coverage, as the authors' fallback
        ctx.info.update(temperature=t, uncertainty=self.uncertainty, uncertainty_mean=float(w.mean()),
                        uniform_weights=uniform)
        return torch.ones_like(w) if uniform else w

    def __repr__(self) -> str:
        return (f"UncertaintyHerdingSampling(kernel={self.kernel!r}, bandwidth={self.bandwidth!r}, "
                f"temperature={self.temperature!r}, uncertainty={self.uncertainty!r})")
