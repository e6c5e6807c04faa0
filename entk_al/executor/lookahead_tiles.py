"""The look-ahead's per-tile work, run where the evaluation rows' inputs live.

Each tile t of the evaluation set U (the ids of U that fall in plan tile t) keeps, for the
round, its rows of A = k(U, X_L), its inputs and, on the dense path, B[U_t, cand] =
k(U_t, candidates). The driver (:mod:`entk_al.executor.sharded_posterior`) holds the Cholesky
factor of K + λI and everything of size m·O or m·(folds); it broadcasts the column block's
W_c = (K + λI)⁻¹A[cand]ᵀ and gets back per tile only (c,) score partials, (m_t,) fold
columns, or (P, P) Gram partials. Formulas: :mod:`entk_al.lookahead` (Eq. 11–12 of
arXiv 2206.12569), :mod:`entk_al.acquisition` (score terms), :mod:`entk_al.sequential` (folds).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..acquisition import BlockColumns, BlockRows, block_terms
from .shard import Shard, task

F64 = torch.float64


def _kernel(fn, model, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
    # Kernel functions differentiate the model, so tasks cannot run under no_grad.
    return (fn(model, x1) if x2 is None else fn(model, x1, x2)).detach()


@task("la_setup")
def _setup(shard: Shard, tile: int, payload: tuple[np.ndarray, np.ndarray, np.ndarray], shared: dict) -> dict:
    """Rows of A, base and diag(M) of this tile; caches A (and B[U_t, cand] when dense)."""
    ids, pos, cidx = payload
    dev, fn, model = shard.device, shared["fn"], shard.model
    x = shard.inputs(ids)
    f = shard.outputs(tile, ids)[0].to(F64)
    x_lab = shared["x_lab"]
    n = len(x_lab)
    a = _kernel(fn, model, x, x_lab.to(dev)).to(F64) if n else torch.zeros(len(ids), 0, dtype=F64, device=dev)
    diag = _kernel(fn, model, x).diagonal().to(F64)
    chol, alpha = shared["chol"].to(dev, F64), shared["alpha"].to(dev, F64)
    w = torch.cholesky_solve(a.T.contiguous(), chol) if n else a.T.clone()  # (n, m_t)
    base = f + a @ alpha if n else f.clone()
    # Schur complements are >= 0 in exact arithmetic; clamp the round-off below zero.
    m_diag = (diag - (a * w.T).sum(dim=1)).clamp_min_(0.0)
    b = _kernel(fn, model, x, shared["x_cand"].to(dev)) if shared["dense"] else None
    shard.state(tile)["lookahead"] = {"pos": torch.from_numpy(np.asarray(pos, dtype=np.int64)), "a": a, "b": b,
                                      "x": x, "x_cand": shared["x_cand"], "fn": fn}
    bad = ~(torch.isfinite(a).all(1) & torch.isfinite(diag) & torch.isfinite(f).all(1))
    bad_b = None if b is None or bool(torch.isfinite(b).all()) else (~torch.isfinite(b)).cpu().numpy()
    is_cand = torch.from_numpy(cidx >= 0).to(dev)
    return {"base": base.cpu(), "f": f.cpu(), "m_diag": m_diag.cpu(), "diag_abs_sum": float(diag.abs().sum()),
            "w_cand": w[:, is_cand].cpu(), "cidx": cidx[cidx >= 0], "bad": bad.cpu().numpy(), "bad_b": bad_b}


def _m_block(shard: Shard, la: dict, rows: slice, shared: dict) -> torch.Tensor:
    """M'[rows of this tile, the shared columns] = B − A W_c − U_rows U_colsᵀ, (r, c) float64, a new tensor."""
    dev = shard.device
    cidx = shared["cidx"]
    if la["b"] is not None:
        b = la["b"][rows][:, cidx.to(la["b"].device)]
    else:
        b = _kernel(la["fn"], shard.model, la["x"][rows], la["x_cand"][cidx].to(dev))
    out = torch.addmm(b.to(F64), la["a"][rows], shared["w"].to(dev), alpha=-1.0)
    u = shared["u"]
    if u.shape[1]:
        out.addmm_(u[la["pos"][rows]].to(dev), u[shared["pos"]].to(dev).T, alpha=-1.0)
    return out


@task("la_score")
def _score(shard: Shard, tile: int, payload: Any, shared: dict) -> torch.Tensor:
    """(c,) float64: this tile's rows' terms of the column block's score sums (row chunks in order)."""
    la = shard.state(tile)["lookahead"]
    dev = shard.device
    cols = BlockColumns(*(None if v is None else v.to(dev) for v in shared["cols"]))
    out = torch.zeros(len(shared["cidx"]), dtype=F64, device=dev)
    m_t = len(la["pos"])
    for r0 in range(0, m_t, shared["rows_n"]):
        rows = slice(r0, min(m_t, r0 + shared["rows_n"]))
        p = la["pos"][rows]
        r = BlockRows(p.to(dev), *(None if v is None else v[p].to(dev) for v in shared["rows"]))
        out += block_terms(shared["acquisition"], _m_block(shard, la, rows, shared), cols, r,
                           shared["exclude_self"]).sum(dim=0)
    return out.cpu()


@task("la_column")
def _column(shard: Shard, tile: int, payload: Any, shared: dict) -> torch.Tensor:
    """(m_t,) float64: this tile's rows of one column M'[:, j] of the current posterior."""
    la = shard.state(tile)["lookahead"]
    return _m_block(shard, la, slice(None), shared)[:, 0].cpu()


@task("la_gram")
def _gram(shard: Shard, tile: int, payload: Any, shared: dict) -> torch.Tensor:
    """(P, P) float64: this tile's part of CᵀC, C the coefficients M'_ij / (M'_jj + λ) of P columns."""
    la = shard.state(tile)["lookahead"]
    coef = _m_block(shard, la, slice(None), shared).div_(shared["den"].to(shard.device))
    return (coef.T @ coef).cpu()
