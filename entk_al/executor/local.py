"""The ``local`` executor: the tile plan with one shard, in the driver process."""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn

from ..data.pool import Pool, as_pool
from .base import Executor
from .plan import TILE_SIZE, TilePlan
from .shard import Shard


class LocalExecutor(Executor):
    """Every tile runs in this process, in increasing tile order, on ``device``.

    It behaves as a Ray shard actor does: its tasks run under the same numerics
    (:func:`~entk_al.executor.shard.tile_numerics`: deterministic cuDNN, no TF32, ``threads``
    torch threads), and each round's model is a private copy (:meth:`begin_round`), never the
    driver's own object. Threads: ``--cpus-per-worker`` given under ``--executor local`` pins
    that many (:func:`~entk_al.executor.shard.worker_threads`), as a Ray actor does; by default
    (None) the process's setting stays, so that the default ``--executor local`` computes what
    it always did. Tile results equal the actors' bit for bit when the BLAS kernels involved
    do not depend on the thread count (the case in ``tests/test_ray_executor.py`` on a 2-core
    CPU); the same ``--cpus-per-worker`` for both makes them equal by construction.

    Args:
        pool: the pool (:class:`~entk_al.data.pool.Pool`, or an (N, *input_shape) CPU tensor; not copied).
        device: where the model and tile work run.
        tile_size: ids per tile (the default is every executor's; tests pass small ones).
        threads: torch intra-op threads during tile tasks (>= 1), or None.

    Raises:
        ValueError: ``threads`` below 1.
    """

    name = "local"

    def __init__(self, pool: Pool | torch.Tensor, device: str | torch.device = "cpu", tile_size: int = TILE_SIZE,
                 threads: int | None = None):
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        pool = as_pool(pool)
        self.plan = TilePlan(len(pool), 1, tile_size)
        self.shard = Shard(pool, 0, tile_size, device, threads=threads)

    def begin_round(self, round_idx: int, seed: int, model: nn.Module) -> None:
        # A copy, as a Ray actor gets one: moving it to the shard's device or changing its
        # modes never touches the driver's model.
        # Copied outside inference mode: a copy made inside it (a caller's query() under
        # torch.inference_mode()) would hold inference tensors that no kernel can differentiate.
        with torch.inference_mode(False):
            copied = copy.deepcopy(model)
        self.shard.begin_round(round_idx, seed, copied)

    def map(self, task: Callable, jobs: dict[int, Any], shared: Any = None) -> dict[int, Any]:
        return dict(self.shard.run(task, sorted(jobs.items()), shared))
