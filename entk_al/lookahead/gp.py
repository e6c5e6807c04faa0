"""The linearized network's Gaussian-process posterior under pNTK ⊗ I_O, as a public object.

Linearize the network at its trained weights θ̂, f_lin(x) = f(x) + J(x)(θ − θ̂), and put the
prior θ − θ̂ ~ N(0, σ² I) on the weights; with the sum-of-logits pNTK as the kernel
(eNTK ≈ pNTK ⊗ I_O, Mohamadi, Bae & Sutherland, arXiv 2206.12543) and Gaussian label noise
of variance σ²λ, each output o is an independent GP regression of the residuals
R = Y_L − f(X_L) (Rasmussen & Williams 2006, Eq. 2.23–2.24):

    mean        base = f(U) + A (K + λI)⁻¹ R                     (m, O)
    covariance  σ² M,  M = B − A (K + λI)⁻¹ Aᵀ                    (m, m), the same for every class

with K = k(L, L), A = k(U, L), B = k(U, U). These are the look-ahead's ``base`` and M
(Mohamadi, Bae & Sutherland, NeurIPS 2022, arXiv 2206.12569, Eq. 11–12); ensembles of
linearized networks sample this posterior (Wilson et al. 2025, arXiv 2502.02870). The mean
does not depend on σ²; the covariance after adding points does not depend on their labels
(:meth:`GPPosterior.condition`). σ² is fitted on the labeled set (:func:`output_scale`).

:func:`fit_gp` builds a :class:`GPPosterior` from a round context: K + λI is factored on the
driver, A and B stay on the executor's shards (:meth:`entk_al.round.context.RoundContext.posterior`),
so the same ids come out of the local and the Ray executor.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import StrategyError
from .system import cholesky_with_jitter, relative_ridge

F64 = torch.float64

#: Ways to fit the output scale σ² (see :func:`output_scale`).
SCALE_METHODS = ("prior", "loo_labels", "ml_labels", "loo", "ml")


def _solve_terms(k_ll: torch.Tensor, targets: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(α (n, O) = (K + λI)⁻¹ targets, diag (K + λI)⁻¹ (n,)), float64, one Cholesky."""
    # The caller's ridge already holds any jitter the round's factorization needed.
    chol, _ = cholesky_with_jitter(k_ll, ridge)
    alpha = torch.cholesky_solve(targets.to(chol), chol)
    q_diag = torch.cholesky_inverse(chol).diagonal()
    return alpha, q_diag


def loo_predictive(k_ll: torch.Tensor, targets: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Leave-one-out residuals and unit variances of GP regression, in closed form.

    For GP regression of ``targets`` (n, O) with covariance σ²(K + λI) (noise included),
    leaving point i out gives the predictive mean t_i − [Q t]_i / Q_ii and variance σ² / Q_ii,
    Q = (K + λI)⁻¹ (Rasmussen & Williams 2006, Sec. 5.4.2, Eq. 5.12; the residual does not
    depend on σ²).

    Args:
        k_ll: (n, n) labeled-set kernel K (any float dtype).
        targets: (n, O) regression targets (residuals Y − f(X_L), or centred labels).
        ridge: absolute λ ≥ 0 (plus any jitter).

    Returns:
        (residuals (n, O) float64: t_i − LOO mean, variances (n,) float64: LOO variance / σ²).

    Raises:
        ValueError: non-square or non-finite K, or ridge < 0.
        torch.linalg.LinAlgError: K + λI does not factor even with jitter.
    """
    alpha, q_diag = _solve_terms(k_ll, targets, ridge)
    return alpha / q_diag[:, None], 1.0 / q_diag


def output_scale(k_ll: torch.Tensor, resid: torch.Tensor, labels: torch.Tensor | None, ridge: float,
                 method: str = "prior") -> float:
    """The output scale σ² of the GP on the labeled set, in closed form.

    With t the regression targets (n, O), Q = (K + λI)⁻¹ and O independent outputs:

    - ``ml`` / ``ml_labels``: maximum marginal likelihood, σ² = Σ_o t_oᵀ Q t_o / (nO)
      (log N(t_o; 0, σ²(K + λI)) summed over o, maximized in σ²; Rasmussen & Williams 2006,
      Eq. 2.30).
    - ``loo`` / ``loo_labels``: maximum leave-one-out predictive log likelihood (Rasmussen &
      Williams 2006, Sec. 5.4.2, Eq. 5.10–5.12): with LOO residual e_io = [Q t]_io / Q_ii and
      variance σ²/Q_ii, Σ_io log N(e_io; 0, σ²/Q_ii) is maximal at σ² = Σ_io Q_ii e_io² / (nO).

    - ``prior`` (the default of :func:`fit_gp` and the GP strategies): no fit; the prior's
      variance σ² k(x, x), averaged over the labeled set, equals the variance of a one-hot
      coordinate, σ² = mean_c p_c(1 − p_c) / mean_i K_ii (p_c the labeled class frequencies).

    ``ml`` and ``loo`` regress the network's residuals t = Y_L − f(X_L), the GP of this module.
    A trained network interpolates its labels, so these residuals are near zero and σ²
    collapses (LOO too: its residual is linear in t). ``*_labels`` regress the centred one-hot
    labels t = Y_L − 1/O instead, which avoids the network's fit but not the kernel's: the
    trained pNTK is aligned with the labels it was trained on. Measured against the σ² that
    held-out labels call for (docs/uncertainty.md, scripts/gp_output_scale.py), every fitted
    rule was too small — ``ml``/``loo`` 100–170× on Fashion-MNIST — while ``prior`` was
    within 3–10× on Fashion-MNIST and digits, the least bad worst case: hence the default.

    Args:
        k_ll: (n, n) labeled-set kernel K.
        resid: (n, O) residuals Y_L − f(X_L) (``ml``, ``loo``).
        labels: (n, O) one-hot labels Y_L (``prior``, ``*_labels``); may be None for the others.
        ridge: absolute λ ≥ 0 (plus jitter), the posterior's ridge.
        method: one of :data:`SCALE_METHODS`.

    Returns:
        σ² (float, ≥ 0; units: output² per kernel unit).

    Raises:
        ValueError: unknown method, an empty labeled set, or labels missing for ``*_labels``.
    """
    if method not in SCALE_METHODS:
        raise ValueError(f"output scale method must be one of {', '.join(SCALE_METHODS)}, got {method!r}")
    n = k_ll.shape[0]
    if n == 0:
        raise ValueError("cannot fit the output scale on an empty labeled set")
    if method == "prior":
        if labels is None:
            raise ValueError("method 'prior' needs the one-hot labels")
        freq = labels.to(F64).mean(dim=0)
        return float((freq * (1 - freq)).mean()) / float(k_ll.to(F64).diagonal().mean())
    if method.endswith("_labels"):
        if labels is None:
            raise ValueError(f"method {method!r} needs the one-hot labels")
        t = labels.to(F64) - 1.0 / labels.shape[1]
    else:
        t = resid.to(F64)
    alpha, q_diag = _solve_terms(k_ll, t, ridge)
    n_out = t.shape[1]
    if method.startswith("ml"):
        return float((t.to(alpha) * alpha).sum()) / (n * n_out)
    return float((alpha * alpha / q_diag[:, None]).sum()) / (n * n_out)


class GPPosterior:
    """The GP posterior on an evaluation set U (positions 0..m−1 index :attr:`ids`).

    Wraps a look-ahead posterior (:class:`~entk_al.scans.sharded_posterior.ShardedPosterior`
    from :meth:`RoundContext.posterior <entk_al.round.context.RoundContext.posterior>`, or the dense
    :class:`entk_al.lookahead.posterior.Posterior`) whose kernel columns cover all of U. Nothing here
    touches labels: :meth:`condition` adds points by the label-free rank-one update.

    Args:
        posterior: the look-ahead posterior (``base``, ``ref``, ``m_diag``, ``ridge``,
            ``columns(pos)``, ``condition(j)``).
        ids: (m,) int64 global pool ids of U, in the posterior's order.
        scale: σ², the output scale (:func:`output_scale`), ≥ 0.
        scale_method: how σ² was set (a :data:`SCALE_METHODS` name or ``fixed``).

    Attributes:
        ids: (m,) int64 global ids of U.
        scale: σ².
        ridge: λ (+ jitter): the label noise variance is σ²λ.
        conditioned: positions added by :meth:`condition`, in order.

    Raises:
        ValueError: ``scale`` < 0 or not finite, or ``ids`` does not match the posterior's size.
    """

    def __init__(self, posterior: Any, ids: np.ndarray, scale: float, scale_method: str = "fixed"):
        if not (np.isfinite(scale) and scale >= 0):
            raise ValueError(f"output scale must be finite and >= 0, got {scale}")
        self.posterior = posterior
        self.ids = np.asarray(ids, dtype=np.int64)
        if len(self.ids) != posterior.base.shape[0]:
            raise ValueError(f"{len(self.ids)} ids for a posterior on {posterior.base.shape[0]} points")
        self.scale, self.scale_method = float(scale), scale_method
        self.ridge = float(posterior.ridge_eff)
        self._pos_of = {int(i): p for p, i in enumerate(self.ids.tolist())}

    @property
    def num_eval(self) -> int:
        """m, the size of U."""
        return len(self.ids)

    @property
    def num_outputs(self) -> int:
        """O, the number of outputs (classes)."""
        return self.posterior.base.shape[1]

    @property
    def conditioned(self) -> list[int]:
        """Positions added by :meth:`condition`, in order."""
        return list(self.posterior.conditioned)

    @property
    def tol(self) -> float:
        """Round-off level of diag M: variances at or below it are treated as zero."""
        post = self.posterior
        return float(post.tol if hasattr(post, "tol") else post.sysm.tol)

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Positions in U of global ``ids``: (len(ids),) int64.

        Raises:
            ValueError: an id that is not in U.
        """
        try:
            return np.fromiter((self._pos_of[int(i)] for i in np.asarray(ids).ravel()), dtype=np.int64)
        except KeyError as err:
            raise ValueError(f"pool id {err.args[0]} is not in the posterior's evaluation set") from None

    def _pos(self, pos: Any) -> torch.Tensor:
        return torch.arange(self.num_eval) if pos is None else torch.as_tensor(np.asarray(pos), dtype=torch.long)

    def mean(self, pos: Any = None) -> torch.Tensor:
        """Posterior mean base = f(U) + A(K+λI)⁻¹R at positions ``pos`` (all if None): (c, O) float64."""
        return self.posterior.base[self._pos(pos)]

    def outputs(self, pos: Any = None) -> torch.Tensor:
        """The network's outputs f(U) at ``pos``: (c, O) float64 (the GP's prior mean)."""
        return self.posterior.ref[self._pos(pos)]

    def variance(self, pos: Any = None) -> torch.Tensor:
        """Marginal posterior variance of each latent output, σ² M'_jj: (c,) float64, ≥ 0.

        Every class has this variance (pNTK ⊗ I); the total over classes is O times it. After
        :meth:`condition` it is the conditioned variance.
        """
        return self.scale * self.posterior.m_diag[self._pos(pos)]

    def predictive_variance(self, pos: Any = None) -> torch.Tensor:
        """Variance of a noisy label observation, σ²(M'_jj + λ): (c,) float64."""
        return self.scale * (self.posterior.m_diag[self._pos(pos)] + self.ridge)

    def unit_variance(self, pos: Any = None) -> torch.Tensor:
        """M'_jj (σ² = 1), floored at :attr:`tol` so that ratios stay finite: (c,) float64."""
        return self.posterior.m_diag[self._pos(pos)].clamp_min(max(self.tol, torch.finfo(F64).tiny))

    def covariance(self, rows: Any, cols: Any) -> torch.Tensor:
        """Posterior covariance σ² M'[rows, cols] of one class's latent outputs: (r, c) float64.

        One call to the shards per use (:meth:`ShardedPosterior.columns`).
        """
        block = self.posterior.columns(self._pos(cols))
        return self.scale * block[self._pos(rows)]

    def condition(self, pos: Any) -> None:
        """Condition on observing U_j (any label) for each position j of ``pos`` (an int or a
        sequence): M' ← M' − M'[:, j] M'[j, :] / (M'_jj + λ), one rank-one step per point.

        The GP covariance after an observation does not depend on its value (Rasmussen &
        Williams 2006, Eq. 2.24), so greedy batch selection by conditioning needs no oracle; the
        result does not depend on the order of the points. The mean stays: it is the
        expectation of the updated mean under the predictive.
        """
        for j in np.atleast_1d(np.asarray(pos, dtype=np.int64)).tolist():
            self.posterior.condition(int(j))


def fit_gp(ctx: Any, ids: np.ndarray, *, ridge_rel: float = 1e-3, scale: str | float = "prior",
           dense_max: int = 0) -> GPPosterior:
    """The round's GP posterior on the pool ids ``ids``, σ² fitted on the labeled set.

    Builds the look-ahead system with every id of U as a kernel column
    (:meth:`RoundContext.posterior <entk_al.round.context.RoundContext.posterior>`, reference
    ``network``), and sets σ² by :func:`output_scale` on the same K + λI. Writes
    ``output_scale`` (σ²) and ``output_scale_method`` to ``ctx.info`` (the round's
    ``strategy_info``), with the context's ``ridge`` and ``jitter``.

    Args:
        ctx: the round's :class:`~entk_al.round.context.RoundContext`.
        ids: (m,) int64 global ids of U; ids with non-finite kernel values are left out.
        ridge_rel: λ relative to the kernel scale, λ = ridge_rel · trace(K)/n.
        scale: a :data:`SCALE_METHODS` name, or a fixed σ² > 0 (number).
        dense_max: keep B = k(U, U) on the shards when |U| + n ≤ dense_max; else its columns
            are computed when asked for (the default 0: the per-point scores need only diag B).

    Returns:
        the :class:`GPPosterior`; its ``ids`` are the ids kept.

    Raises:
        StrategyError: an empty labeled set, the labeled kernel is not finite, or a fixed
            scale that is not a finite number > 0.
        ValueError: an unknown scale method.
    """
    lab = ctx.labeled_ids
    if len(lab) == 0:
        raise StrategyError("the GP posterior needs at least one labeled point")
    if not isinstance(scale, str) and not (np.isfinite(scale) and scale > 0):
        raise StrategyError(f"a fixed output scale must be a finite number > 0, got {scale}")
    if isinstance(scale, str) and scale not in SCALE_METHODS:
        raise ValueError(f"output_scale must be a number or one of {', '.join(SCALE_METHODS)}, got {scale!r}")
    ids = np.asarray(ids, dtype=np.int64)
    post, u, _ = ctx.posterior(ids, ids, ridge_rel=ridge_rel, dense_max=dense_max, reference="network")
    if isinstance(scale, str):
        k_ll = ctx.kernel(lab).to(F64)
        ridge = relative_ridge(k_ll, ridge_rel) + post.jitter
        labels = ctx.labeled_onehot().to(F64).cpu()
        resid = labels - ctx.logits(lab).to(F64).cpu()
        sigma2 = output_scale(k_ll.cpu(), resid, labels, ridge, scale)
        method = scale
    else:
        sigma2, method = float(scale), "fixed"
    ctx.info.update(output_scale=sigma2, output_scale_method=method)
    return GPPosterior(post, u, sigma2, method)
