"""Closed-form look-ahead: outputs of the network retrained on L ∪ {(x', y')}.

Source: Mohamadi, Bae & Sutherland, "Making Look-Ahead Active Learning Strategies Feasible
with Neural Tangent Kernels", NeurIPS 2022 (arXiv 2206.12569), Eq. 11–12. The network is
linearized at its trained weights θ_L, and the eNTK is approximated by pNTK ⊗ I_O
(arXiv 2206.12543), so every kernel here is N×N and the O outputs share it.

Notation (all kernels pNTK):
    K = k(X_L, X_L) (n, n)        A = k(U, X_L) (m, n)        B = k(U, U) (m, m)
    R = Y_L − f(X_L) (n, O)
    base = f(U) + A (K + λI)⁻¹ R                                     (m, O)
    M = B − A (K + λI)⁻¹ Aᵀ                                           (m, m)
Adding candidate j (a position in U) with target y gives, for every i in U,
    f_{L+j}(U_i) = base_i + M_ij / (M_jj + λ) · (y − base_j)           (block inverse, Eq. 12)
which equals the direct kernel regression f(U) + k(U, X⁺)(k(X⁺, X⁺) + λI)⁻¹(Y⁺ − f(X⁺)),
X⁺ = X_L ∪ {U_j}. One Cholesky of K + λI serves every candidate.

Names of the ridge, the same along the whole path (strategy option → :func:`relative_ridge` →
:func:`cholesky_with_jitter` → :class:`LookaheadSystem` → the posteriors): ``ridge_rel`` is λ
relative to the kernel scale trace(K)/n; ``ridge`` is the absolute λ; ``jitter`` the diagonal
added when K + λI does not factor; ``ridge_eff`` = λ + jitter, the ridge the system was solved
with and every denominator M_jj + λ uses.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .acquisition import lookahead_scores

#: Jitter ladder, relative to the mean diagonal of K, tried when the Cholesky fails.
JITTER_LADDER = (1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2)


def cholesky_with_jitter(k: torch.Tensor, ridge: float = 0.0) -> tuple[torch.Tensor, float]:
    """Lower Cholesky factor of ``k + (ridge + jitter)·I`` in float64.

    Jitter is 0 when ``k + ridge·I`` factors; otherwise it climbs :data:`JITTER_LADDER`
    (times the mean diagonal of ``k``) until the factorization succeeds.

    Args:
        k: (n, n) symmetric kernel matrix, any float dtype and device.
        ridge: absolute diagonal ridge λ ≥ 0.

    Returns:
        (L, jitter): L (n, n) float64 on ``k``'s device; jitter the absolute value added.

    Raises:
        ValueError: ``k`` is not square, ridge < 0, or ``k`` is not finite.
        torch.linalg.LinAlgError: no jitter on the ladder makes it positive definite.
    """
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"kernel must be square, got shape {tuple(k.shape)}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    k = k.to(torch.float64)
    if not torch.isfinite(k).all():
        raise ValueError("kernel has non-finite entries")
    k = 0.5 * (k + k.T)
    eye = torch.eye(k.shape[0], dtype=k.dtype, device=k.device)
    scale = float(k.diagonal().abs().mean()) if k.numel() else 1.0
    scale = scale if scale > 0 else 1.0
    for rel in (0.0, *JITTER_LADDER):
        jitter = rel * scale
        chol, info = torch.linalg.cholesky_ex(k + (ridge + jitter) * eye)
        if int(info) == 0:
            return chol, jitter
    raise torch.linalg.LinAlgError(
        f"kernel is not positive definite even with jitter {JITTER_LADDER[-1]}×mean diagonal")


class EvalSetPosterior:
    """What every posterior over an evaluation set U shares (:class:`LookaheadSystem`,
    :class:`~entk_al.lookahead.posterior.Posterior`,
    :class:`~entk_al.scans.sharded_posterior.ShardedPosterior`): ``base`` (m, O) and
    ``ridge_eff`` (λ + jitter) attributes."""

    @property
    def num_eval(self) -> int:
        """m, the size of the evaluation set U."""
        return self.base.shape[0]

    @property
    def ridge(self) -> float:
        """Deprecated (removed in 0.3): λ + jitter; use :attr:`ridge_eff` (``ridge`` names the absolute λ)."""
        return deprecated_ridge_eff(self)


@dataclass
class LookaheadSystem(EvalSetPosterior):
    """The per-round quantities shared by every candidate (one factorization).

    All tensors are float64 on the kernels' device. ``m`` evaluation points, ``n`` labeled,
    ``O`` outputs.

    Attributes:
        base: (m, O) linearized prediction at U from the labeled set alone.
        f_u: (m, O) current network outputs at U.
        k_ul: (m, n) A.
        k_uu: (m, m) B, or None when only columns are supplied later.
        w: (n, m) (K + λI)⁻¹ Aᵀ.
        m_diag: (m,) diagonal of M.
        ridge_eff: λ + jitter, the ridge of the factored (and augmented) system.
        jitter: extra diagonal added to make K + λI factor (0 when none was needed).
        tol: denominators M_jj + λ at or below it count as degenerate (duplicates of labeled
            points); their update is 0 (:meth:`denominators`).
    """

    base: torch.Tensor
    f_u: torch.Tensor
    k_ul: torch.Tensor
    k_uu: torch.Tensor | None
    w: torch.Tensor
    m_diag: torch.Tensor
    ridge_eff: float
    jitter: float
    tol: float = 0.0


    @property
    def ref(self) -> torch.Tensor:
        """What scores compare against: the network outputs f(U), (m, O)."""
        return self.f_u

    def m_columns(self, cols: torch.Tensor, k_uu_cols: torch.Tensor | None = None) -> torch.Tensor:
        """Columns ``cols`` of M = B − A (K+λI)⁻¹ Aᵀ, shape (m, len(cols)), float64.

        ``k_uu_cols`` (m, C) supplies B[:, cols] when the system holds no full B.
        """
        if k_uu_cols is None:
            return self.m_block(slice(None), cols)
        return k_uu_cols.to(torch.float64) - self.k_ul @ self.w[:, cols]

    def outputs(self, cand: torch.Tensor, y_cand: torch.Tensor) -> torch.Tensor:
        """(C, m, O) float64: base_i + M_{i,c_j}/(M_{c_j,c_j} + λ)(y_cand_j − base_{c_j}) (Eq. 12).

        Raises:
            ValueError: ``cand`` out of range or ``y_cand`` not (C, O).
        """
        cand = torch.as_tensor(cand, dtype=torch.long, device=self.base.device)
        _check_cand(cand, y_cand, self)
        coef = self.m_columns(cand) / self.denominators(cand)  # (m, C)
        delta = y_cand.to(self.base) - self.base[cand]  # (C, O)
        return self.base.unsqueeze(0) + coef.T.unsqueeze(-1) * delta.unsqueeze(1)

    def m_block(self, rows: slice, cols: torch.Tensor) -> torch.Tensor:
        """Block M[rows, cols], (r, c) float64, a new tensor. Needs the full ``k_uu``."""
        if self.k_uu is None:
            raise ValueError("this system holds no k_uu; pass k_uu_cols")
        return torch.addmm(self.k_uu[rows][:, cols].to(torch.float64), self.k_ul[rows], self.w[:, cols], alpha=-1.0)

    def denominators(self, cols: torch.Tensor) -> torch.Tensor:
        """Schur complements plus ridge, M_jj + λ, for candidates ``cols`` (C,).

        A candidate whose denominator is at round-off level (``≤ tol``: a duplicate of a
        labeled point with no ridge) gets +inf, so its predicted change is 0 rather than
        noise divided by noise.
        """
        return safe_denominators(self.m_diag[cols] + self.ridge_eff, self.tol)


def deprecated_ridge_eff(obj) -> float:
    """``obj.ridge_eff`` with a FutureWarning: the old ``ridge`` attribute of the look-ahead's
    systems and posteriors, which held λ + jitter.

    Args:
        obj: a :class:`LookaheadSystem` or a posterior (anything with ``ridge_eff``).
    """
    warnings.warn(f"{type(obj).__name__}.ridge is deprecated and will be removed in 0.3: it is λ + jitter, "
                  f"use .ridge_eff", FutureWarning, stacklevel=3)
    return obj.ridge_eff


#: Denominators at or below this fraction of the mean diagonal of B are round-off.
DEGENERATE_REL = 1e-9


def safe_denominators(den: torch.Tensor, tol: float) -> torch.Tensor:
    """``den`` with entries ≤ ``tol`` replaced by +inf (their rank-one update is then 0)."""
    return torch.where(den > tol, den, torch.full_like(den, float("inf")))


def relative_ridge(k_ll: torch.Tensor, ridge_rel: float | None = None, *, rel: float | None = None) -> float:
    """Absolute ridge λ = ridge_rel · trace(K)/n, the authors' kernel-scaled regularization
    (arXiv 2206.12569, code); 0 for an empty labeled set.

    Args:
        k_ll: (n, n) labeled-set Gram matrix K.
        ridge_rel: relative ridge, >= 0.
        rel: deprecated name of ``ridge_rel`` (a FutureWarning; removed in 0.3).

    Raises:
        TypeError: neither ``ridge_rel`` nor ``rel`` given.
    """
    if rel is not None:
        warnings.warn("relative_ridge(rel=...) is deprecated and will be removed in 0.3; pass ridge_rel=",
                      FutureWarning, stacklevel=2)
        ridge_rel = rel if ridge_rel is None else ridge_rel
    if ridge_rel is None:
        raise TypeError("relative_ridge() needs ridge_rel")
    n = k_ll.shape[0]
    return ridge_rel * float(k_ll.diagonal().double().sum()) / n if n else 0.0


def fit_lookahead(k_ll: torch.Tensor, k_ul: torch.Tensor, k_uu: torch.Tensor | None, f_l: torch.Tensor,
                  y_l: torch.Tensor, f_u: torch.Tensor, *, k_uu_diag: torch.Tensor | None = None,
                  ridge: float = 0.0) -> LookaheadSystem:
    """Factor K + λI once and precompute base, (K+λI)⁻¹Aᵀ and diag(M).

    The tensors come in the same order as in :func:`lookahead_outputs` (kernels K, A, B, then
    outputs f_L, targets Y_L, outputs f_U); everything else is keyword-only.

    Args:
        k_ll: (n, n) K = k(X_L, X_L).
        k_ul: (m, n) A = k(U, X_L).
        k_uu: (m, m) B = k(U, U), or None if ``k_uu_diag`` is given and columns come later.
        f_l: (n, O) network outputs on the labeled set.
        y_l: (n, O) targets (one-hot) of the labeled set.
        f_u: (m, O) network outputs on U.
        k_uu_diag: (m,) diagonal of B, needed only when ``k_uu`` is None.
        ridge: absolute ridge λ ≥ 0 on the (augmented) kernel system.

    Returns:
        A :class:`LookaheadSystem` (float64, on ``k_ll``'s device).

    Raises:
        ValueError: inconsistent shapes or a negative ridge.
    """
    n, m = k_ll.shape[0], k_ul.shape[0]
    if k_ul.shape != (m, n) or f_l.shape[0] != n or y_l.shape != f_l.shape or f_u.shape != (m, f_l.shape[1]):
        raise ValueError(
            f"inconsistent shapes: k_ll {tuple(k_ll.shape)}, k_ul {tuple(k_ul.shape)}, f_l {tuple(f_l.shape)}, "
            f"y_l {tuple(y_l.shape)}, f_u {tuple(f_u.shape)}")
    if k_uu is None and k_uu_diag is None:
        raise ValueError("pass k_uu or k_uu_diag")
    if k_uu is not None and k_uu.shape != (m, m):
        raise ValueError(f"k_uu must be ({m}, {m}), got {tuple(k_uu.shape)}")
    dev = k_ll.device
    f64 = dict(dtype=torch.float64, device=dev)
    a = k_ul.to(**f64)
    chol, jitter = cholesky_with_jitter(k_ll, ridge)
    resid = y_l.to(**f64) - f_l.to(**f64)
    rhs = torch.cat([resid, a.T], dim=1) if n else torch.zeros(0, resid.shape[1] + m, **f64)
    sol = torch.cholesky_solve(rhs, chol) if n else rhs
    alpha, w = sol[:, :resid.shape[1]], sol[:, resid.shape[1]:]
    f_u64 = f_u.to(**f64)
    base = f_u64 + a @ alpha
    diag_b = (k_uu.diagonal() if k_uu is not None else k_uu_diag).to(**f64)
    if diag_b.shape != (m,):
        raise ValueError(f"k_uu_diag must have shape ({m},), got {tuple(diag_b.shape)}")
    # Schur complements are >= 0 in exact arithmetic; clamp the round-off below zero.
    m_diag = (diag_b - (a * w.T).sum(dim=1)).clamp_min_(0.0)
    tol = DEGENERATE_REL * float(diag_b.abs().mean()) if m else 0.0
    return LookaheadSystem(base=base, f_u=f_u64, k_ul=a, k_uu=k_uu, w=w, m_diag=m_diag,
                           ridge_eff=float(ridge) + jitter, jitter=jitter, tol=tol)


def lookahead_outputs(k_ll: torch.Tensor, k_ul: torch.Tensor, k_uu: torch.Tensor, f_l: torch.Tensor,
                      y_l: torch.Tensor, f_u: torch.Tensor, *, cand: torch.Tensor, y_cand: torch.Tensor,
                      ridge: float = 0.0) -> torch.Tensor:
    """Predicted outputs at every U_i of the network retrained on L ∪ {(U_cand_j, y_cand_j)}.

    Eq. 11–12 of arXiv 2206.12569 with eNTK ≈ pNTK ⊗ I_O:
    ``out[j, i] = base_i + M_{i,c_j} / (M_{c_j,c_j} + λ) · (y_cand_j − base_{c_j})``, which equals
    ``f_u + k(U, X⁺)(k(X⁺, X⁺) + λI)⁻¹(Y⁺ − f(X⁺))`` for X⁺ = X_L ∪ {U_{c_j}}.

    Args:
        k_ll: (n, n) K; k_ul: (m, n) A; k_uu: (m, m) B (the order of :func:`fit_lookahead`).
        f_l, y_l: (n, O) outputs and one-hot targets of the labeled set.
        f_u: (m, O) outputs on U.
        cand: (C,) int64 positions in U (keyword-only, like everything after ``f_u``).
        y_cand: (C, O) target assumed for each candidate.
        ridge: absolute ridge λ ≥ 0 on the augmented system (K⁺ + λI).

    Returns:
        (C, m, O) float64 tensor on ``k_ll``'s device. It materializes C·m·O numbers; for
        scores over many candidates use :func:`mlmoc_scores`, which streams.

    Raises:
        ValueError: inconsistent shapes, or ``cand`` out of range.
    """
    return fit_lookahead(k_ll, k_ul, k_uu, f_l, y_l, f_u, ridge=ridge).outputs(cand, y_cand)


def _check_cand(cand: torch.Tensor, y_cand: torch.Tensor, sysm: LookaheadSystem) -> None:
    if cand.ndim != 1 or (cand.numel() and (int(cand.min()) < 0 or int(cand.max()) >= sysm.num_eval)):
        raise ValueError(f"cand must be 1-D positions in [0, {sysm.num_eval})")
    if y_cand.shape != (cand.numel(), sysm.base.shape[1]):
        raise ValueError(f"y_cand must be ({cand.numel()}, {sysm.base.shape[1]}), got {tuple(y_cand.shape)}")


def mlmoc_scores(sysm: LookaheadSystem, cand: torch.Tensor, y_cand: torch.Tensor, *,
                 exclude_self: bool = False, memory_budget_bytes: int = 256 * 2**20) -> torch.Tensor:
    """MLMOC score of each candidate, streamed: Σ_i ‖f_{L+j}(U_i) − f(U_i)‖₂.

    Source: Eq. 13 of arXiv 2206.12569 ("most likely model output change"), with y_cand the
    one-hot predicted class. With g_i = base_i − f(U_i), δ_j = y_j − base_j and
    c_ij = M_ij/(M_jj+λ): ‖g_i + c_ij δ_j‖² = ‖g_i‖² + 2 c_ij g_i·δ_j + c_ij²‖δ_j‖², so only
    (m × block) matrices are formed, never the (C, m, O) tensor. This is
    :func:`entk_al.lookahead.acquisition.lookahead_scores` with ``acquisition="mlmoc"``.

    Args:
        sysm: the round's :class:`LookaheadSystem` (with ``k_uu``).
        cand: (C,) int64 positions in U.
        y_cand: (C, O) pseudo-label per candidate.
        exclude_self: leave i = j (the candidate itself) out of its own sum.
        memory_budget_bytes: bytes for the per-block work arrays.

    Returns:
        (C,) float64 scores on the system's device (units: output-space L2 norm summed over U).
    """
    return lookahead_scores(sysm, cand, acquisition="mlmoc", y_cand=y_cand, exclude_self=exclude_self,
                            memory_budget_bytes=memory_budget_bytes)
