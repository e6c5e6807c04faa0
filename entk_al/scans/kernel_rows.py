"""Kernel rows on the tile plan: each shard computes k(x_rows, x_cols) for its tiles' rows.

The pNTK blocks a strategy asks the round context for (the look-ahead's K = k(L, L), the
example plugin's k(U ∪ L, U ∪ L), ...) are assembled on the driver from row tiles computed
where the rows' inputs live; the column inputs are sent once per call.

With a feature kernel (:class:`~entk_al.ntk.features.FeatureKernel`, the default pNTK) each
shard computes every id's features once per round, in canonical batches
(:mod:`entk_al.scans.feature_store`): the columns' once per shard, each row tile's once,
and a symmetric k(ids, ids) only for column tiles at or after the row tile (the driver mirrors
the rest), so a call costs about one :func:`entk_al.ntk.pntk` call on the same inputs, and
every entry is computed the same way whatever the number of workers. Any other kernel function
is called per row tile with all the column inputs.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ..executor.shard import Shard, per_shard
from .feature_store import FeatureStore, is_feature_kernel


def _kernel_rows(shard: Shard, tile: int, ids: np.ndarray, shared: dict) -> torch.Tensor:
    x_cols = shared["x_cols"].to(shard.device)
    with torch.enable_grad():
        return shared["fn"](shard.model, shard.inputs(ids), x_cols).detach().cpu()


@per_shard
def _kernel_blocks(shard: Shard, jobs: list[tuple[int, np.ndarray]], shared: dict) -> list[tuple[int, torch.Tensor]]:
    """Per row tile: k(rows, cols) with cols in canonical order (all of them, or for a
    symmetric call those from the row tile's own tile on)."""
    store = FeatureStore.of(shard, shared["fn"], shared["probe"])
    cols = store.id_set(shared["col_ids"])
    rows = {t: store.id_set(ids) for t, ids in jobs}
    start = None
    if shared["sym"]:
        col_tiles = cols.sorted // shard.tile_size
        start = {t: int(np.searchsorted(col_tiles, t)) for t in rows}
    got = store.blocks(rows, cols, shared["x_cols"], start)
    return [(t, got[t].cpu()) for t, _ in jobs]


def kernel_rows(executor: Any, kernel_fn: Callable[..., torch.Tensor], row_ids: np.ndarray,
                x_cols: torch.Tensor, col_ids: np.ndarray | None = None,
                probe: torch.Tensor | None = None) -> torch.Tensor:
    """k(x[row_ids], x_cols) computed by row tiles on the shards.

    Args:
        executor: the run's executor (round begun).
        kernel_fn: ``kernel_fn(model, x1, x2) -> (N1, N2)``, e.g. :func:`entk_al.ntk.pntk`
            (sent to the shards: a module-level function or a
            :class:`~entk_al.ntk.features.FeatureKernel` for the ray executor).
        row_ids: (R,) int64 global pool ids of the rows (any order).
        x_cols: (C, *input_shape) CPU inputs of the columns.
        col_ids: (C,) int64 global pool ids of the columns (needed, with ``probe``, for the
            feature path; ``None`` for ``row_ids`` itself makes the call symmetric).
        probe: (4, *input_shape) inputs every shard traces the kernel's layer plan on (the
            feature path); the same in every call of a run keeps entries identical across calls.

    Returns:
        (R, C) CPU tensor in the kernel's dtype, rows in ``row_ids`` order. A symmetric call's
        result is exactly symmetric.
    """
    row_ids = np.asarray(row_ids, dtype=np.int64)
    n_cols = len(row_ids) if col_ids is None else len(x_cols)
    if len(row_ids) == 0 or n_cols == 0:  # e.g. the kernel of an empty labeled set
        dtype = x_cols.dtype if x_cols.is_floating_point() else torch.get_default_dtype()
        return torch.zeros(len(row_ids), n_cols, dtype=dtype)
    if not is_feature_kernel(kernel_fn) or probe is None:
        groups = executor.plan.split(row_ids)
        got = executor.map(_kernel_rows, {t: row_ids[pos] for t, pos in groups.items()},
                           {"fn": kernel_fn, "x_cols": x_cols})
        return _assemble_rows(got, groups, len(row_ids))
    sym = col_ids is None
    col_ids = row_ids if sym else np.asarray(col_ids, dtype=np.int64)
    if sym:
        # rows in canonical (sorted) order: their tiles' blocks are mirrored on the driver
        order = np.argsort(row_ids, kind="stable")
        canon = row_ids[order]
        groups = executor.plan.split(canon)
        shared = {"fn": kernel_fn, "probe": probe, "col_ids": canon, "x_cols": x_cols[torch.from_numpy(order)],
                  "sym": True}
        got = executor.map(_kernel_blocks, {t: canon[pos] for t, pos in groups.items()}, shared)
        n = len(canon)
        out = None
        for t, pos in groups.items():
            blk = got[t]
            if out is None:
                out = blk.new_empty((n, n))
            s, e = int(pos[0]), int(pos[-1]) + 1  # a tile's rows are contiguous in canonical order
            own = blk[:, :e - s]
            out[s:e, s:e] = 0.5 * (own + own.T)  # Theta(x', x) = Theta(x, x')^T: exactly symmetric
            out[s:e, e:] = blk[:, e - s:]
            out[e:, s:e] = blk[:, e - s:].T
        inv = torch.from_numpy(np.argsort(order, kind="stable"))
        return out[inv][:, inv]
    groups = executor.plan.split(row_ids)
    got = executor.map(_kernel_blocks, {t: row_ids[pos] for t, pos in groups.items()},
                       {"fn": kernel_fn, "probe": probe, "col_ids": col_ids, "x_cols": x_cols, "sym": False})
    out = _assemble_rows(got, groups, len(row_ids))
    canon_of = np.empty(len(col_ids), dtype=np.int64)
    canon_of[np.argsort(col_ids, kind="stable")] = np.arange(len(col_ids))
    return out[:, torch.from_numpy(canon_of)]


def _assemble_rows(got: dict, groups: dict, n_rows: int) -> torch.Tensor:
    out = None
    for t, pos in groups.items():
        if out is None:
            out = got[t].new_empty((n_rows, got[t].shape[1]))
        out[torch.from_numpy(pos)] = got[t]
    return out


def nonfinite_blame(bad: np.ndarray, symmetric: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Which rows and columns of a kernel block its non-finite entries are blamed on: the one
    rule for every kernel a round computes (:meth:`entk_al.round.context.RoundContext.kernel` and the
    look-ahead's B[U, cand] on the shards, :func:`entk_al.scans.sharded_posterior.fit_on_shards`).

    A symmetric block k(ids, ids) blames the ids whose diagonal entry is bad; otherwise a row
    (column) bad in every entry blames its row (column) id. Bad entries left without a blamed
    row or column blame their row. The ids blamed are left out of the round.

    Args:
        bad: (R, C) bool, True where the kernel entry is not finite.
        symmetric: the block is k(ids, ids) (rows and columns the same ids in the same order).

    Returns:
        (rows (R,) bool, columns (C,) bool) to leave out; all False when nothing is bad.
    """
    bad = np.asarray(bad, dtype=bool)
    if not bad.any():
        return np.zeros(bad.shape[0], dtype=bool), np.zeros(bad.shape[1], dtype=bool)
    if symmetric:
        rows = cols = bad.diagonal().copy()
    else:
        rows, cols = bad.all(1), bad.all(0)
    rest = bad & ~rows[:, None] & ~cols[None, :]
    return rows | rest.any(1), cols
