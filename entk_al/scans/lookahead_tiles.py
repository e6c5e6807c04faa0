"""The look-ahead's per-tile work, run where the evaluation rows' inputs live.

Each tile t of the evaluation set U (the ids of U that fall in plan tile t) keeps, for the
round, its rows of A = k(U, X_L), its inputs and, on the dense path, B[U_t, cand] =
k(U_t, candidates). The driver (:mod:`entk_al.scans.sharded_posterior`) holds the Cholesky
factor of K + λI and everything of size m·O or m·(folds); it broadcasts the column block's
W_c = (K + λI)⁻¹A[cand]ᵀ and gets back per tile only (c,) score partials, (m_t,) fold
columns, or (P, P) Gram partials. Formulas: :mod:`entk_al.lookahead.system` (Eq. 11–12 of
arXiv 2206.12569), :mod:`entk_al.lookahead.acquisition` (score terms), :mod:`entk_al.lookahead.posterior` (folds).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..executor.shard import Shard, per_shard
from ..lookahead.acquisition import BlockColumns, BlockRows, block_terms
from .feature_store import FeatureStore

F64 = torch.float64


def _kernel(fn, model, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
    # Kernel functions differentiate the model, so tasks cannot run under no_grad.
    return (fn(model, x1) if x2 is None else fn(model, x1, x2)).detach()


def la_setup(shard: Shard, tile: int, payload: tuple[np.ndarray, np.ndarray, np.ndarray], shared: dict) -> dict:
    """Rows of A, base and diag(M) of this tile; caches A (and B[U_t, cand] when dense).

    For kernel functions without features: each tile calls the kernel with all the
    labeled and candidate inputs (``la_setup_features`` computes those once per shard).

    Args:
        shard, tile, payload, shared: a tile task's arguments (:class:`~entk_al.executor.base.Executor`).
    """
    ids = payload[0]
    fn, model, x = shared["fn"], shard.model, shard.inputs(ids)
    n = len(shared["x_lab"])
    a = _kernel(fn, model, x, shared["x_lab"].to(shard.device)) if n else None
    diag = _kernel(fn, model, x).diagonal()
    b = _kernel(fn, model, x, shared["x_cand"].to(shard.device)) if shared["dense"] else None
    return _finish_setup(shard, tile, payload, shared, x, a, diag, b, None)


@per_shard
def la_setup_features(shard: Shard, jobs: list, shared: dict) -> list:
    """``la_setup`` for a feature kernel: the labeled set's and the candidates' features are
    computed once on this shard (:class:`~entk_al.scans.feature_store.FeatureStore`), each
    tile's rows once.

    When U and the candidates are one set (``shared["b_sym"]``), B = k(U, U) is symmetric: each
    tile computes only its columns from its own tile on (in canonical order, its own block
    symmetrized) and returns them as ``b_upper``; the driver sends each tile the transposes of
    the other tiles' blocks it needs (``la_b_lower``), so every entry is computed once, by the
    tile of its lower id, whichever shard holds the other.

    Args:
        shard, jobs, shared: a per-shard task's arguments (:func:`~entk_al.executor.shard.per_shard`).
    """
    store = FeatureStore.of(shard, shared["fn"], shared["probe"])
    rows = {t: store.id_set(payload[0]) for t, payload in jobs}
    n = len(shared["x_lab"])
    a = b = None
    if n:
        lab = store.id_set(shared["lab_ids"])
        a = {t: v[:, torch.from_numpy(lab.canon_of).to(v.device)]
             for t, v in store.blocks(rows, lab, shared["x_lab"]).items()}
    sym = shared["dense"] and shared["b_sym"]
    if shared["dense"]:
        cand = store.id_set(shared["cand_ids"])
        start = None
        if sym:
            col_tiles = cand.sorted // shard.tile_size
            start = {t: int(np.searchsorted(col_tiles, t)) for t in rows}
        b = store.blocks(rows, cand, shared["x_cand"], start)
        if not sym:
            b = {t: v[:, torch.from_numpy(cand.canon_of).to(v.device)] for t, v in b.items()}
    out = []
    for t, payload in jobs:
        r = rows[t]
        if sym:
            # own block: rows and columns in canonical order, made exactly symmetric
            order = torch.from_numpy(r.order).to(shard.device)
            own = b[t][order, :len(r)]
            own = 0.5 * (own + own.T)
            b[t][order, :len(r)] = own
            diag = torch.empty(len(r), dtype=own.dtype, device=shard.device)
            diag[order] = own.diagonal()
        else:
            diag = torch.empty(len(r), dtype=store.prep.dtype, device=shard.device)
            for q, (r0, r1) in enumerate(r.pieces):
                f = store.features(r, q, q + 1)
                diag[torch.from_numpy(r.order[r0:r1]).to(shard.device)] = store.block(f, f).diagonal()
        res = _finish_setup(shard, t, payload, shared, None, None if a is None else a[t], diag,
                            None if (b is None or sym) else b[t], store)
        if sym:
            shard.state(t)["lookahead"]["b_upper"] = b[t]
            res["b_upper"] = b[t].cpu()
            res["canon_start"] = start[t]
        out.append((t, res))
    return out


def la_b_lower(shard: Shard, tile: int, lower: torch.Tensor, shared: dict) -> np.ndarray | None:
    """Complete this tile's B[U_t, cand] from the driver's ``lower`` (n_t, start) block (the
    other tiles' transposed columns, canonical column order) and its own upper columns;
    return the non-finite mask (n_t, C) or None.

    Args:
        shard, tile, payload, shared: a tile task's arguments (:class:`~entk_al.executor.base.Executor`).
    """
    la = shard.state(tile)["lookahead"]
    upper = la.pop("b_upper")
    b = torch.cat([lower.to(upper), upper], dim=1)
    la["b"] = b if shared["canon_of"] is None else b[:, shared["canon_of"].to(b.device)]
    return None if bool(torch.isfinite(la["b"]).all()) else (~torch.isfinite(la["b"])).cpu().numpy()


def _finish_setup(shard: Shard, tile: int, payload: tuple, shared: dict, x: torch.Tensor | None,
                  a: torch.Tensor | None, diag: torch.Tensor, b: torch.Tensor | None, store: Any) -> dict:
    ids, pos, cidx = payload
    dev, fn = shard.device, shared["fn"]
    f = shard.outputs(tile, ids)[0].to(F64)
    n = len(shared["x_lab"])
    a = a.to(F64) if n else torch.zeros(len(ids), 0, dtype=F64, device=dev)
    diag = diag.to(F64)
    chol, alpha = shared["chol"].to(dev, F64), shared["alpha"].to(dev, F64)
    w = torch.cholesky_solve(a.T.contiguous(), chol) if n else a.T.clone()  # (n, m_t)
    base = f + a @ alpha if n else f.clone()
    # Schur complements are >= 0 in exact arithmetic; clamp the round-off below zero.
    m_diag = (diag - (a * w.T).sum(dim=1)).clamp_min_(0.0)
    shard.state(tile)["lookahead"] = {"pos": torch.from_numpy(np.asarray(pos, dtype=np.int64)), "a": a, "b": b,
                                      "x": x, "x_cand": shared["x_cand"], "fn": fn, "store": store,
                                      "ids": ids, "cand_ids": shared.get("cand_ids")}
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
    elif la["store"] is not None:  # streamed with features: this block's rows and columns from the store
        store = la["store"]
        r_pos = np.arange(len(la["ids"]))[rows]
        f_r = store.features_at(store.id_set(la["ids"]), r_pos)
        f_c = store.features_at(store.id_set(la["cand_ids"]), cidx.cpu().numpy(), la["x_cand"])
        b = store.block(f_r, f_c)
    else:
        b = _kernel(la["fn"], shard.model, la["x"][rows], la["x_cand"][cidx].to(dev))
    out = torch.addmm(b.to(F64), la["a"][rows], shared["w"].to(dev), alpha=-1.0)
    u = shared["u"]
    if u.shape[1]:
        out.addmm_(u[la["pos"][rows]].to(dev), u[shared["pos"]].to(dev).T, alpha=-1.0)
    return out


def la_score(shard: Shard, tile: int, payload: Any, shared: dict) -> torch.Tensor:
    """(c,) float64: this tile's rows' terms of the column block's score sums (row chunks in order).

    Args:
        shard, tile, payload, shared: a tile task's arguments (:class:`~entk_al.executor.base.Executor`).
    """
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


def la_column(shard: Shard, tile: int, payload: Any, shared: dict) -> torch.Tensor:
    """(m_t,) float64: this tile's rows of one column M'[:, j] of the current posterior.

    Args:
        shard, tile, payload, shared: a tile task's arguments (:class:`~entk_al.executor.base.Executor`).
    """
    la = shard.state(tile)["lookahead"]
    return _m_block(shard, la, slice(None), shared)[:, 0].cpu()


def la_columns(shard: Shard, tile: int, payload: Any, shared: dict) -> torch.Tensor:
    """(m_t, c) float64: this tile's rows of the columns M'[:, pos] of the current posterior.

    Args:
        shard, tile, payload, shared: a tile task's arguments (:class:`~entk_al.executor.base.Executor`).
    """
    la = shard.state(tile)["lookahead"]
    return _m_block(shard, la, slice(None), shared).cpu()


def la_gram(shard: Shard, tile: int, payload: Any, shared: dict) -> torch.Tensor:
    """(P, P) float64: this tile's part of CᵀC, C the coefficients M'_ij / (M'_jj + λ) of P columns.

    Args:
        shard, tile, payload, shared: a tile task's arguments (:class:`~entk_al.executor.base.Executor`).
    """
    la = shard.state(tile)["lookahead"]
    coef = _m_block(shard, la, slice(None), shared).div_(shared["den"].to(shard.device))
    return (coef.T @ coef).cpu()
