"""Kernel rows on the tile plan: each shard computes k(x_rows, x_cols) for its tiles' rows.

The pNTK blocks a strategy asks the round context for (the look-ahead's K = k(L, L),
A = k(U, L), B = k(U, U) on its dense path) are assembled on the driver from row tiles
computed where the rows' inputs live; the column inputs are sent once per call.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from .shard import Shard, task


@task("kernel_rows")
def _kernel_rows(shard: Shard, tile: int, ids: np.ndarray, shared: dict) -> torch.Tensor:
    x_cols = shared["x_cols"].to(shard.device)
    return shared["fn"](shard.model, shard.inputs(ids), x_cols).cpu()


def kernel_rows(executor: Any, kernel_fn: Callable[..., torch.Tensor], row_ids: np.ndarray,
                x_cols: torch.Tensor) -> torch.Tensor:
    """k(x[row_ids], x_cols) computed by row tiles on the shards.

    Args:
        executor: the run's executor (round begun).
        kernel_fn: ``kernel_fn(model, x1, x2) -> (N1, N2)``, e.g. :func:`entk_al.ntk.pntk`
            (sent to the shards: a module-level function for the ray executor).
        row_ids: (R,) int64 global pool ids of the rows (any order).
        x_cols: (C, *input_shape) CPU inputs of the columns.

    Returns:
        (R, C) CPU tensor in the kernel's dtype, rows in ``row_ids`` order.
    """
    row_ids = np.asarray(row_ids, dtype=np.int64)
    groups = executor.plan.split(row_ids)
    got = executor.map("kernel_rows", {t: row_ids[pos] for t, pos in groups.items()},
                       {"fn": kernel_fn, "x_cols": x_cols})
    out = None
    for t, pos in groups.items():
        if out is None:
            out = got[t].new_empty((len(row_ids), got[t].shape[1]))
        out[torch.from_numpy(pos)] = got[t]
    return out
