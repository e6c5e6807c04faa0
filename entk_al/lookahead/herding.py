"""Kernel herding for active learning: greedy (uncertainty-weighted) generalized coverage.

Sources:

- MaxHerding: Bae, Noh & Sutherland, "Generalized Coverage for More Robust Low-Budget Active
  Learning", ECCV 2024 (arXiv 2407.12212). Generalized coverage of a labeled set S over an
  evaluation set U is C_k(S) = (1/|U|) Σ_{u∈U} max_{s∈S} k(u, s); MaxHerding adds, one at a
  time, the candidate c maximizing C_k(S ∪ {c}), i.e. the gain
  Σ_u max(k(u, c) − m_u, 0) with m_u = max_{s∈S} k(u, s), starting from S = the labeled set.
- Uncertainty Herding (UHerding): Bae, Oliveira & Sutherland, "Uncertainty Herding: One
  Active Learning Method for All Label Budgets", ICLR 2025 (arXiv 2412.20644). Uncertainty
  coverage weights each u by the model's uncertainty w_u (margin: 1 − (p_(1) − p_(2)) of the
  temperature-scaled softmax); the greedy gain is Σ_u w_u · max(k(u, c) − m_u, 0).

Both as in the authors' public code (github.com/BorealisAI/uherding): features normalized to
unit length, the Gaussian kernel k = exp(−‖a − b‖²/h²) (h = 1 for MaxHerding; for UHerding the
"adaptive radius" h = the smallest non-zero distance between two labeled points, which shrinks
as labels accumulate and moves UHerding from coverage towards uncertainty sampling), and the
temperature chosen by the expected calibration error (ECE, 15 bins) of held-out predictions.
On unit vectors ‖a − b‖² = 2 − 2 cos(a, b), so every kernel here is a function of a cosine
similarity (:func:`similarity_kernel`); with the pNTK the cosine is the normalized kernel
k(x, x')/√(k(x, x) k(x', x')) (its feature map is the pNTK gradient, normalized).

Everything is float64 on the tensors' device; ties go to the lowest position.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .uncertainty import entropy

F64 = torch.float64
#: Distances at or below this count as zero in :func:`min_nonzero_distance` (round-off of
#: duplicates: a float32 cosine of two equal inputs is 1 only to ~1e-7, i.e. a distance ~5e-4).
DUPLICATE_DISTANCE = 1e-3
#: The temperature grid of :func:`calibrate_temperature`: 0.01 … 20, log-spaced. The authors
#: search T ∈ [1, 20) for cross-entropy logits; outputs of MSE-trained networks are near
#: one-hot, whose softmax is under-confident already at T = 1, so the grid also goes below 1.
TEMPERATURE_GRID = tuple(float(t) for t in np.geomspace(0.01, 20.0, 111))


def cosine_from_kernel(k_block: torch.Tensor, diag_rows: torch.Tensor, diag_cols: torch.Tensor) -> torch.Tensor:
    """Normalized kernel k(x, x')/√(k(x, x) k(x', x')): the cosine in the kernel's feature space.

    Args:
        k_block: (R, C) kernel block, any float dtype.
        diag_rows: (R,) k(x, x) of the rows, > 0.
        diag_cols: (C,) k(x', x') of the columns, > 0.

    Returns:
        (R, C) float64 cosines, clamped to [−1, 1] (round-off can step outside).

    Raises:
        ValueError: shapes differ.
    """
    if k_block.shape != (diag_rows.numel(), diag_cols.numel()):
        raise ValueError(f"kernel block {tuple(k_block.shape)} does not match diagonals "
                         f"({diag_rows.numel()},), ({diag_cols.numel()},)")
    scale = diag_rows.to(F64).sqrt()[:, None] * diag_cols.to(F64).sqrt()[None, :]
    return (k_block.to(F64) / scale).clamp_(-1.0, 1.0)


def similarity_kernel(cos: torch.Tensor, bandwidth: float | None) -> torch.Tensor:
    """The coverage kernel from cosines of unit-normalized features.

    Args:
        cos: cosines (any shape), float.
        bandwidth: None: the cosine itself (for the pNTK, the normalized pNTK);
            h > 0: the authors' Gaussian exp(−‖a − b‖²/h²) = exp(−(2 − 2 cos)/h²).

    Returns:
        float64 kernel values of ``cos``'s shape, in [−1, 1] (None) or (0, 1] (Gaussian).

    Raises:
        ValueError: bandwidth ≤ 0 or not finite.
    """
    if bandwidth is None:
        return cos.to(F64)
    if not (math.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(f"bandwidth must be a finite number > 0, got {bandwidth}")
    return torch.exp(-(2.0 - 2.0 * cos.to(F64)).clamp_min(0.0) / bandwidth**2)


def min_nonzero_distance(cos: torch.Tensor) -> float | None:
    """UHerding's adaptive radius: the smallest distance √(2 − 2 cos) between two different points.

    Source: the authors' code (``ADAPTIVE_DELTA``): h = min of the non-zero pairwise distances
    of the labeled set's unit-normalized features. Distances ≤ :data:`DUPLICATE_DISTANCE`
    (duplicates up to round-off) are skipped.

    Args:
        cos: (n, n) cosines among the labeled points.

    Returns:
        the distance (float), or None when no pair is farther apart than the duplicate level.
    """
    n = cos.shape[0]
    if n < 2:
        return None
    iu = torch.triu_indices(n, n, offset=1, device=cos.device)
    dist = (2.0 - 2.0 * cos.to(F64)[iu[0], iu[1]]).clamp_min(0.0).sqrt()
    dist = dist[dist > DUPLICATE_DISTANCE]
    return float(dist.min()) if dist.numel() else None


def greedy_coverage(kernel: torch.Tensor, covered: torch.Tensor, k: int, weights: torch.Tensor | None = None,
                    chunk_rows: int = 1024, on_pick: Callable[[int], None] | None = None
                    ) -> tuple[np.ndarray, list[float]]:
    """Greedy maximization of the (weighted) generalized coverage: MaxHerding / UHerding.

    With m_u the current coverage of evaluation point u (``covered``), each step adds the
    candidate c that maximizes the gain Σ_u w_u · max(K[u, c] − m_u, 0), then sets
    m_u ← max(m_u, K[u, c]). The gain is the increase of Σ_u w_u max_{s∈S} k(u, s)
    (the greedy step of MaxHerding, Bae, Noh & Sutherland 2024; weighted: UHerding, Bae, Oliveira &
    Sutherland 2025).

    The per-point terms P[u, c] = w_u · max(K[u, c] − m_u, 0) are kept (m × C, in the kernel's
    precision, at least float32); a pick
    recomputes only the rows whose coverage it raised, and the gains are P's column sums in
    float64, so every step costs one pass over P plus the changed rows.

    Args:
        kernel: (m, C) k(U, candidates), any float dtype.
        covered: (m,) starting coverage m_u = max over the labeled set of k(u, l).
        k: candidates to pick, 1 ≤ k ≤ C.
        weights: (m,) w_u ≥ 0 (None: all 1, MaxHerding).
        chunk_rows: rows of P recomputed at a time; the working set is (chunk_rows × C) in P's dtype.
        on_pick: called with the number picked so far after each pick (progress).

    Returns:
        (positions (k,) int64 into the candidates in selection order, gains (k,) of each pick).
        Once no candidate adds coverage the gains are 0 and the lowest unpicked positions follow.

    Raises:
        ValueError: k out of range, mismatched shapes or negative / non-finite weights.
    """
    m, num_c = kernel.shape
    if not 1 <= k <= num_c:
        raise ValueError(f"k must be in [1, {num_c}], got {k}")
    if covered.shape != (m,):
        raise ValueError(f"covered must have shape ({m},), got {tuple(covered.shape)}")
    dev = kernel.device
    cov = covered.to(device=dev, dtype=F64).clone()
    w = torch.ones(m, dtype=F64, device=dev) if weights is None else weights.to(dev, F64)
    if w.shape != (m,) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"weights must be ({m},) finite and >= 0")
    step = max(1, int(chunk_rows))
    # float32 for a float32 kernel (memory), float64 for a float64 one (exact tests)
    terms = torch.empty(m, num_c, dtype=torch.promote_types(kernel.dtype, torch.float32), device=dev)

    def refresh(rows: torch.Tensor) -> None:
        cov_t, w_t = cov.to(terms.dtype), w.to(terms.dtype)
        for s in range(0, len(rows), step):
            r = rows[s:s + step]
            terms[r] = (kernel[r].to(terms.dtype) - cov_t[r, None]).clamp_min_(0.0).mul_(w_t[r, None])

    def column_sums() -> torch.Tensor:
        if terms.device.type == "cpu":  # NumPy adds float32 rows into float64 sums ~10x faster than torch
            return torch.from_numpy(terms.numpy().sum(axis=0, dtype=np.float64))
        return terms.sum(dim=0, dtype=F64)

    refresh(torch.arange(m, device=dev))
    taken = torch.zeros(num_c, dtype=torch.bool, device=dev)
    picks: list[int] = []
    gains: list[float] = []
    for _ in range(k):
        gain = column_sums().to(dev)
        gain[taken] = -math.inf
        j = int(torch.argmax(gain))  # the first maximum
        picks.append(j)
        gains.append(float(gain[j]))
        taken[j] = True
        col = kernel[:, j].to(F64)
        raised = torch.nonzero(col > cov).squeeze(1)
        cov = torch.maximum(cov, col)
        refresh(raised)
        if on_pick is not None:
            on_pick(len(picks))
    return np.asarray(picks, dtype=np.int64), gains


#: Uncertainty measures :func:`uncertainty_weights` knows (the authors' code: margin, entropy, conf).
UNCERTAINTIES = ("margin", "entropy", "least_confidence")


def uncertainty_weights(logits: torch.Tensor, temperature: float = 1.0, kind: str = "margin") -> torch.Tensor:
    """UHerding's weights w_u from p = softmax(logits / T): (N,) float64, ≥ 0.

    ``margin`` 1 − (p_(1) − p_(2)) (the authors' default, in [0, 1]); ``entropy`` −Σ p log p
    (nats); ``least_confidence`` 1 − max p.

    Args:
        logits: (N, O) network outputs, O ≥ 2.
        temperature: T > 0.
        kind: one of :data:`UNCERTAINTIES`.

    Raises:
        ValueError: unknown ``kind``.
    """
    p = torch.softmax(logits.to(F64) / temperature, dim=1)
    if kind == "margin":
        top2 = p.topk(2, dim=1).values
        return (1.0 - (top2[:, 0] - top2[:, 1])).clamp_min(0.0)
    if kind == "entropy":
        return entropy(p).clamp_min(0.0)
    if kind == "least_confidence":
        return (1.0 - p.max(dim=1).values).clamp_min(0.0)
    raise ValueError(f"unknown uncertainty {kind!r}; choose from {', '.join(UNCERTAINTIES)}")


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE: Σ_b (|B_b|/N) · |acc(B_b) − conf(B_b)| over equal-width confidence bins.

    Source: Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks", ICML
    2017, Eq. 3 (15 bins, as in the UHerding authors' code). Confidence is max_k p_k; bins are
    (b/B, (b+1)/B], the first also holding confidence 0.

    Args:
        probs: (N, O) class probabilities.
        labels: (N,) int64 true classes.
        bins: number of bins B ≥ 1.

    Returns:
        ECE in [0, 1] (0.0 for N = 0).
    """
    if len(labels) == 0:
        return 0.0
    conf, pred = probs.to(F64).max(dim=1)
    correct = (pred == labels.to(pred.device)).to(F64)
    index = (conf * bins).ceil().long().clamp(1, bins) - 1
    total = 0.0
    for b in range(bins):
        mask = index == b
        if bool(mask.any()):
            total += float(mask.to(F64).mean()) * abs(float(correct[mask].mean() - conf[mask].mean()))
    return total


def calibrate_temperature(logits: torch.Tensor, labels: torch.Tensor,
                          grid: tuple[float, ...] = TEMPERATURE_GRID) -> float:
    """The temperature T of ``grid`` with the lowest ECE of softmax(logits / T) (first on ties).

    Source: the UHerding authors' temperature scaling (held-out predictions, ECE, grid search).

    Args:
        logits: (N, O) held-out outputs (e.g. :func:`loo_outputs`).
        labels: (N,) int64 their true classes.
        grid: candidate temperatures, all > 0.
    """
    best, best_ece = grid[0], math.inf
    for t in grid:
        ece = expected_calibration_error(torch.softmax(logits.to(F64) / t, dim=1), labels)
        if ece < best_ece - 1e-12:
            best, best_ece = t, ece
    return float(best)


def loo_outputs(chol: torch.Tensor, targets: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """Leave-one-out outputs of the linearized network on its labeled set, in closed form.

    With G = (K + λI)⁻¹ (K the labeled set's pNTK), R = Y − f(X_L) and α = G R, the kernel
    regression of the residuals fitted without point i predicts R_i − α_i/G_ii at x_i, so the
    linearized network retrained without (x_i, y_i) outputs f(x_i) + R_i − α_i/G_ii =
    y_i − α_i/G_ii (the standard leave-one-out identity of kernel ridge regression; e.g.
    Rasmussen & Williams, "Gaussian Processes for Machine Learning", 2006, Eq. 5.12, here for
    the look-ahead's system of Mohamadi, Bae & Sutherland, NeurIPS 2022, Eq. 11).

    Args:
        chol: (n, n) lower Cholesky factor of K + λI (float64; :func:`entk_al.lookahead.system.cholesky_with_jitter`).
        targets: (n, O) one-hot labels Y.
        outputs: (n, O) network outputs f(X_L).

    Returns:
        (n, O) float64 leave-one-out outputs.
    """
    g = torch.cholesky_inverse(chol.to(F64))
    resid = targets.to(chol.device, F64) - outputs.to(chol.device, F64)
    alpha = g @ resid
    return targets.to(chol.device, F64) - alpha / g.diagonal()[:, None]
