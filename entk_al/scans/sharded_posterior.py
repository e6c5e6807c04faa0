"""The look-ahead posterior spread over the executor's shards (driver side).

Source: Mohamadi, Bae & Sutherland, NeurIPS 2022 (arXiv 2206.12569), Eq. 11–13; notation of
:mod:`entk_al.lookahead.system`. The driver factors K + λI (n × n) once and keeps what is m·O or
m·(folds) in size: base, ref, diag(M), the fold factors u_t and W_c = (K + λI)⁻¹A[cand]ᵀ
(n × C). The shards keep A = k(U, X_L) and B[U, cand] by row tile
(:mod:`entk_al.scans.lookahead_tiles`). Per column block of candidates the driver
broadcasts W_c's columns and gets back one (c,) partial per tile, which it sums in tile order
in float64; a fold asks every tile for its rows of one column of M'. The m × m (or m × C)
kernel never reaches the driver, and the same plan runs in one process (``local``) and on
Ray, so both executors score and select alike.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
import torch

from ..lookahead.acquisition import (
    BlockColumns,
    block_shape,
    bytes_per_entry,
    check_score_inputs,
    finish_columns,
    flip_fraction,
)
from ..lookahead.posterior import condition_update, fold_update
from ..lookahead.system import DEGENERATE_REL, EvalSetPosterior, safe_denominators
from . import lookahead_tiles
from .feature_store import is_feature_kernel
from .kernel_rows import nonfinite_blame

F64 = torch.float64


class ShardedPosterior(EvalSetPosterior):
    """Current linearized model on U, its kernel rows held by the executor's shards.

    Built by :func:`fit_on_shards`. Offers what :func:`entk_al.lookahead.posterior.select_lookahead`
    uses: ``base`` and ``ref`` (m, O), ``m_diag`` (m,), ``folded``, :meth:`denominators`,
    :meth:`scores`, :meth:`fold` and :meth:`coef_gram`, and for the Gaussian-process view
    (:class:`entk_al.lookahead.gp.GPPosterior`) :meth:`columns` and :meth:`condition` (label-free
    conditioning, listed in ``conditioned``); all driver tensors are float64 on the CPU.

    Args:
        executor: the run's executor, whose tiles hold the round's look-ahead rows.
        tile_pos: {tile: (m_t,) int64 positions in U of the tile's rows}.
        base: (m, O) float64 base = f(U) + A α.
        f_u: (m, O) float64 network outputs f(U).
        m_diag: (m,) float64 diag(M).
        w_cand: (n, C) float64 W_c = (K + λI)⁻¹A[cand]ᵀ.
        col_of: (m,) int64 column of W_c / the tiles' B for each position in U (−1: not a candidate).
        ridge_eff: λ + jitter.
        jitter: the jitter part of ``ridge_eff``.
        tol: round-off level of the denominators.
        reference: ``network`` (ref = f(U)) | ``base`` (ref = base).

    Attributes:
        tile_pos: {tile: (m_t,) int64 positions in U of the tile's rows}.
        jitter: extra diagonal added to make K + λI factor.
        ridge_eff: λ + jitter, the ridge of the augmented system.
        tol: denominators at or below it are round-off (their update is 0).
    """

    def __init__(self, executor: Any, tile_pos: dict[int, torch.Tensor], base: torch.Tensor, f_u: torch.Tensor,
                 m_diag: torch.Tensor, w_cand: torch.Tensor, col_of: torch.Tensor, ridge_eff: float, jitter: float,
                 tol: float, reference: str):
        self.executor, self.tile_pos, self.tiles = executor, tile_pos, sorted(tile_pos)
        self.base = base.clone()
        self.ref = (f_u if reference == "network" else base).clone()
        self.m_diag = m_diag
        self.w_cand, self.col_of = w_cand, col_of
        self.ridge_eff, self.jitter, self.tol = float(ridge_eff), float(jitter), float(tol)
        self.u = torch.zeros(len(base), 0, dtype=F64)
        self.folded: list[int] = []
        self.conditioned: list[int] = []

    def denominators(self, cols: torch.Tensor) -> torch.Tensor:
        """M'_jj + λ at positions ``cols`` (c,); +inf where it is round-off."""
        return safe_denominators(self.m_diag[cols] + self.ridge_eff, self.tol)

    def _columns(self, pos: torch.Tensor) -> dict:
        """What every tile needs to form M'[its rows, pos]: B column indices, W_c's columns, u."""
        cidx = self.col_of[pos]
        if bool((cidx < 0).any()):
            raise ValueError("only candidate positions have kernel columns on the shards")
        return {"cidx": cidx, "pos": pos, "w": self.w_cand[:, cidx].contiguous(), "u": self.u}

    def _sum_tiles(self, task: Callable, shared: dict) -> torch.Tensor:
        got = self.executor.map(task, {t: None for t in self.tiles}, shared)
        total = None
        for t in self.tiles:  # float64, in tile order
            total = got[t].clone() if total is None else total.add_(got[t])
        return total

    def scores(self, cand: torch.Tensor, *, acquisition: str = "mlmoc", y_cand: torch.Tensor | None = None,
               probs: torch.Tensor | None = None, exclude_self: bool = False,
               memory_budget_bytes: int = 256 * 2**20, eval_weights: torch.Tensor | None = None,
               variance_power: float = 0.0, progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """:func:`entk_al.lookahead.acquisition.lookahead_scores` computed on the shards (same arguments).

        Per column block (:func:`entk_al.lookahead.acquisition.block_shape`) one map call; each tile
        returns its rows' (c,) partial sums, which are added in tile order in float64.

        Returns:
            (C,) float64 CPU scores of candidates ``cand`` (positions in U).

        Raises:
            ValueError: unknown acquisition, a non-candidate position, or bad y_cand/probs/eval_weights shapes.
        """
        base, ref = self.base, self.ref
        m, n_out = base.shape
        cand = torch.as_tensor(cand, dtype=torch.long).cpu()
        num_c = cand.numel()
        y_cand, probs, eval_weights = check_score_inputs(acquisition, base, ref, cand, y_cand, probs, eval_weights)
        g = base - ref
        rows = (g, (g * g).sum(dim=1), base, ref.argmax(dim=1), eval_weights)
        rows_n, cols_n = block_shape(m, max(num_c, 1), bytes_per_entry(acquisition, n_out), memory_budget_bytes)
        out = torch.zeros(num_c, dtype=F64)
        for s in range(0, num_c, cols_n):
            cb = cand[s:s + cols_n]
            cols = BlockColumns(cb, self.denominators(cb), base[cb], None if y_cand is None else y_cand[s:s + cols_n],
                                None if probs is None else probs[s:s + cols_n])
            shared = dict(self._columns(cb), cols=cols, rows=rows, rows_n=rows_n, acquisition=acquisition,
                          exclude_self=exclude_self)
            summed = self._sum_tiles(lookahead_tiles.la_score, shared)
            out[s:s + cols_n] = finish_columns(acquisition, summed, cols, variance_power)
            if progress is not None:
                progress(min(num_c, s + cols_n))
        if acquisition == "flip":
            out = flip_fraction(out, cand, m, exclude_self,
                                None if eval_weights is None else (eval_weights.sum(), eval_weights[cand]))
        return out

    def column(self, j: int) -> torch.Tensor:
        """Column M'[:, j] of the current posterior, (m,) float64, assembled from the tiles' rows."""
        got = self.executor.map(lookahead_tiles.la_column, {t: None for t in self.tiles},
                                self._columns(torch.tensor([int(j)])))
        col = torch.empty(self.num_eval, dtype=F64)
        for t in self.tiles:
            col[self.tile_pos[t]] = got[t]
        return col

    def columns(self, pos: torch.Tensor) -> torch.Tensor:
        """Columns M'[:, pos] of the current posterior, (m, c) float64, one map call (``la_columns``).

        Raises:
            ValueError: a position that is not a candidate (no kernel column on the shards).
        """
        pos = torch.as_tensor(pos, dtype=torch.long).cpu()
        got = self.executor.map(lookahead_tiles.la_columns, {t: None for t in self.tiles}, self._columns(pos))
        out = torch.empty(self.num_eval, pos.numel(), dtype=F64)
        for t in self.tiles:
            out[self.tile_pos[t]] = got[t]
        return out

    def fold(self, j: int, y: torch.Tensor) -> None:
        """Add (U_j, y) to the labeled set by a rank-one update (:meth:`entk_al.lookahead.posterior.Posterior.fold`)."""
        col = self.column(j)
        den = self.denominators(torch.tensor([int(j)]))[0]
        self.u = fold_update(self.base, self.ref, self.m_diag, self.u, col, den, j, y)
        self.folded.append(int(j))

    def condition(self, j: int) -> None:
        """Add U_j without its label: the covariance part of :meth:`fold` only
        (:func:`entk_al.lookahead.posterior.condition_update`); base and ref stay."""
        col = self.column(j)
        den = self.denominators(torch.tensor([int(j)]))[0]
        self.u = condition_update(self.m_diag, self.u, col, den)
        self.conditioned.append(int(j))

    def coef_gram(self, pos: torch.Tensor) -> torch.Tensor:
        """CᵀC (P, P) float64, C = M'[:, pos] / (M'_jj + λ): per-tile parts summed in tile order."""
        pos = torch.as_tensor(pos, dtype=torch.long).cpu()
        return self._sum_tiles(lookahead_tiles.la_gram, dict(self._columns(pos), den=self.denominators(pos)))


def _complete_symmetric_b(executor: Any, got: dict, groups: dict, u_ids: np.ndarray, cand_ids: np.ndarray) -> None:
    """Send each tile the transposes of the earlier tiles' upper B columns it lacks (``la_b_lower``).

    Tile t returned ``b_upper`` (n_t, C − s_t): its rows (in U order) against the candidates in
    canonical (increasing id) order from s_t on, s_t being its first id's canonical position;
    its rows are the canonical positions s_t .. s_t + n_t − 1. The blocks are laid into one
    canonical upper triangle, whose transposed columns give each tile its lower part.
    """
    order = np.argsort(cand_ids, kind="stable")
    canon_of = np.empty(len(cand_ids), dtype=np.int64)
    canon_of[order] = np.arange(len(cand_ids))
    tiles = sorted(groups)
    c = len(cand_ids)
    first = got[tiles[0]]["b_upper"]
    upper = first.new_empty((c, c))  # only the upper part (each tile's rows from its own start on) is read
    rows_canon = {}
    for t in tiles:
        s_t = got[t]["canon_start"]
        rows_canon[t] = torch.from_numpy(np.searchsorted(cand_ids[order], u_ids[groups[t]]))
        upper[rows_canon[t], s_t:] = got[t].pop("b_upper")
    jobs = {}
    for t in tiles:
        s_t = got[t]["canon_start"]
        # rows: tile t's canonical positions, in its U order; columns: canonical 0 .. s_t
        jobs[t] = upper[:s_t].T[rows_canon[t]]
    identity = bool((canon_of == np.arange(c)).all())  # candidates given in increasing id order
    masks = executor.map(lookahead_tiles.la_b_lower, jobs,
                         {"canon_of": None if identity else torch.from_numpy(canon_of)})
    for t in tiles:
        got[t]["bad_b"] = masks[t]


def fit_on_shards(executor: Any, kernel_fn: Callable[..., torch.Tensor], *, u_ids: np.ndarray, cand_pos: np.ndarray,
                  x_lab: torch.Tensor, x_cand: torch.Tensor, chol: torch.Tensor, alpha: torch.Tensor,
                  ridge_eff: float | None = None, jitter: float, dense: bool, reference: str = "network",
                  lab_ids: np.ndarray | None = None, cand_ids: np.ndarray | None = None,
                  probe: torch.Tensor | None = None,
                  ridge: float | None = None) -> tuple[ShardedPosterior | None, np.ndarray]:
    """Set the round's look-ahead system up on the shards (one map call).

    Each tile of ``u_ids`` computes A_t = k(U_t, X_L) and diag k(U_t, U_t), its rows of
    base = f(U) + A α and diag(M) = diag B − rowsum(A ∘ ((K+λI)⁻¹Aᵀ)ᵀ), its candidates' columns
    of W_c = (K + λI)⁻¹A[cand]ᵀ and, when ``dense``, B[U_t, cand] (kept for the round; else B's
    column blocks are recomputed per scoring block from the inputs).

    Args:
        executor: the run's executor (round begun).
        kernel_fn: ``kernel_fn(model, x1, x2=None) -> (N1, N2)`` pNTK (module-level for Ray).
        u_ids: (m,) int64 global ids of the evaluation set U.
        cand_pos: (C,) int64 positions in U of the candidates.
        x_lab: (n, *input_shape) CPU inputs of the labeled set.
        x_cand: (C, *input_shape) CPU inputs of the candidates, in ``cand_pos`` order.
        chol: (n, n) float64 lower Cholesky factor of K + (λ + jitter)I
            (:func:`entk_al.lookahead.system.cholesky_with_jitter`).
        alpha: (n, O) float64 (K + λI)⁻¹(Y_L − f(X_L)).
        ridge_eff: λ + jitter, the augmented system's ridge.
        jitter: the jitter part (reported).
        dense: keep B[U_t, cand] on the shards for the round.
        reference: ``network`` | ``base`` (:class:`entk_al.lookahead.posterior.Posterior`).
        lab_ids: (n,) int64 global ids of the labeled set, in ``x_lab`` order.
        cand_ids: (C,) int64 global ids of the candidates, in ``x_cand`` order.
        probe: (4, *input_shape) inputs the kernel's layer plan is traced on
            (:meth:`entk_al.round.context.RoundContext.kernel_probe`). With the ids and the probe, a
            feature kernel (:class:`~entk_al.ntk.features.FeatureKernel`) computes the labeled
            set's and the candidates' features once per shard instead of once per tile.
        ridge: deprecated name of ``ridge_eff`` (a FutureWarning; removed in 0.3).

    Returns:
        (posterior, bad): ``bad`` (int64 global ids) lists ids of U with non-finite kernel or
        output values; when it is non-empty the posterior is None and the caller drops them
        and calls again.

    Raises:
        TypeError: no ``ridge_eff`` given.
    """
    if ridge is not None:
        warnings.warn("fit_on_shards(ridge=...) is deprecated and will be removed in 0.3; pass ridge_eff= "
                      "(λ + jitter)", FutureWarning, stacklevel=2)
        ridge_eff = ridge if ridge_eff is None else ridge_eff
    if ridge_eff is None:
        raise TypeError("fit_on_shards() needs ridge_eff")
    u_ids = np.asarray(u_ids, dtype=np.int64)
    m, c = len(u_ids), len(cand_pos)
    col_of = np.full(m, -1, dtype=np.int64)
    col_of[np.asarray(cand_pos, dtype=np.int64)] = np.arange(c)
    groups = executor.plan.split(u_ids)
    shared = {"fn": kernel_fn, "x_lab": x_lab, "x_cand": x_cand, "chol": chol.cpu(), "alpha": alpha.cpu(),
              "dense": bool(dense), "lab_ids": lab_ids, "cand_ids": cand_ids, "probe": probe}
    features = is_feature_kernel(kernel_fn) and probe is not None and lab_ids is not None and cand_ids is not None
    shared["b_sym"] = bool(features and dense and c == m and np.array_equal(np.sort(u_ids), np.sort(cand_ids)))
    got = executor.map(lookahead_tiles.la_setup_features if features else lookahead_tiles.la_setup,
                       {t: (u_ids[p], p, col_of[p]) for t, p in groups.items()}, shared)
    tiles = sorted(groups)
    if shared["b_sym"]:
        _complete_symmetric_b(executor, got, groups, u_ids, np.asarray(cand_ids, dtype=np.int64))
    bad = np.zeros(m, dtype=bool)
    bad_b = None
    for t in tiles:
        bad[groups[t]] = got[t]["bad"]
        if got[t]["bad_b"] is not None:
            bad_b = np.zeros((m, c), dtype=bool) if bad_b is None else bad_b
            bad_b[groups[t]] = got[t]["bad_b"]
    if bad_b is not None:
        bad_rows, bad_cols = nonfinite_blame(bad_b)  # a column bad in every row blames the candidate
        bad[np.asarray(cand_pos)[bad_cols]] = True
        bad |= bad_rows
    if bad.any():
        return None, u_ids[bad]
    n_out = got[tiles[0]]["base"].shape[1]
    base, f_u = torch.empty(m, n_out, dtype=F64), torch.empty(m, n_out, dtype=F64)
    m_diag = torch.empty(m, dtype=F64)
    w_cand = torch.empty(len(x_lab), c, dtype=F64)
    diag_sum = 0.0
    for t in tiles:  # float64, in tile order
        pos = torch.from_numpy(groups[t])
        base[pos], f_u[pos], m_diag[pos] = got[t]["base"], got[t]["f"], got[t]["m_diag"]
        w_cand[:, torch.as_tensor(np.array(got[t]["cidx"]))] = got[t]["w_cand"]  # Ray hands read-only arrays
        diag_sum += got[t]["diag_abs_sum"]
    tol = DEGENERATE_REL * diag_sum / m if m else 0.0
    post = ShardedPosterior(executor, {t: torch.from_numpy(groups[t]) for t in tiles}, base, f_u, m_diag, w_cand,
                            torch.from_numpy(col_of), ridge_eff, jitter, tol, reference)
    return post, np.zeros(0, dtype=np.int64)
