"""Where pool scans run: in this process (``local``) or on Ray shard actors (``ray``).

Everything that scans the pool (forward passes, cheap scores, BADGE / Core-Set steps, the
look-ahead's kernel rows and score partials) runs as per-tile tasks on a fixed
:class:`~entk_al.executor.plan.TilePlan`; the driver keeps the loop, the oracle and the
checkpoints and reduces tile results in tile order. Both executors therefore select the same
ids. Layering: this package uses models, kernels and the look-ahead algebra; strategies reach
it through :attr:`entk_al.round.context.RoundContext.executor`; the loop creates it
(:func:`make_executor`).
"""

from __future__ import annotations

from .base import Executor
from .factory import EXECUTORS, make_executor
from .local import LocalExecutor
from .plan import TILE_SIZE, TilePlan

__all__ = ["Executor", "LocalExecutor", "TilePlan", "TILE_SIZE", "EXECUTORS", "make_executor"]
