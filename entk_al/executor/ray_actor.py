"""The body of one Ray shard actor (a plain class; :mod:`.ray_executor` wraps it with ``ray.remote``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import diversity, kernel_rows, knn_tiles, lookahead_tiles, scan  # noqa: F401  (registers the tile tasks in this worker)
from .shard import Shard


class ShardHost:
    """Holds the :class:`~entk_al.executor.shard.Shard` of one contiguous id range.

    Numerics are pinned here, once per worker: ``threads`` torch intra-op threads,
    deterministic cuDNN without autotuning, and no TF32.

    Args:
        pool: what the shard reads its ids from (:meth:`entk_al.data.pool.Pool.shard`).
        tile_size: the plan's tile size.
        threads: torch intra-op threads (>= 1).
        use_gpu: run the shard on this actor's GPU.
    """

    def __init__(self, pool: Any, tile_size: int, threads: int, use_gpu: bool):
        torch.set_num_threads(max(1, int(threads)))
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.shard = Shard(pool, 0, tile_size, device)

    def begin_round(self, round_idx: int, seed: int, model: nn.Module) -> None:
        self.shard.begin_round(round_idx, seed, model)

    def run(self, task: str, jobs: list[tuple[int, Any]], shared: Any = None) -> list[tuple[int, Any]]:
        return self.shard.run(task, jobs, shared)

    def ping(self) -> int:
        return len(self.shard.pool)
