"""The body of one Ray shard actor (a plain class; :mod:`.ray_executor` wraps it with ``ray.remote``)."""

from __future__ import annotations

import socket
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError
from .shard import Shard


class ShardHost:
    """Holds the :class:`~entk_al.executor.shard.Shard` of one contiguous id range.

    Its tasks run under the numerics of the local executor's
    (:func:`~entk_al.executor.shard.tile_numerics`: ``threads`` torch intra-op threads,
    deterministic cuDNN without autotuning, no TF32). An actor given a GPU on a node where
    torch has no CUDA does not fall back to the CPU: :meth:`ping` raises, as ``--device cuda``
    does on a machine without CUDA.

    Args:
        pool: what the shard reads its ids from (:meth:`entk_al.data.pool.Pool.shard`).
        tile_size: the plan's tile size.
        threads: torch intra-op threads (>= 1).
        use_gpu: run the shard on this actor's GPU.
    """

    def __init__(self, pool: Any, tile_size: int, threads: int, use_gpu: bool):
        self.device_error = None
        if use_gpu and not torch.cuda.is_available():
            self.device_error = (f"--gpus-per-worker: CUDA is not available to the shard actor on "
                                 f"{socket.gethostname()} (torch {torch.__version__}), which Ray gave a GPU")
        self.shard = Shard(pool, 0, tile_size, "cuda" if use_gpu and self.device_error is None else "cpu",
                           threads=threads)

    def begin_round(self, round_idx: int, seed: int, model: nn.Module) -> None:
        self.shard.begin_round(round_idx, seed, model)

    def run(self, task: Callable, jobs: list[tuple[int, Any]], shared: Any = None) -> list[tuple[int, Any]]:
        return self.shard.run(task, jobs, shared)

    def ping(self) -> int:
        """The number of ids the shard reads from (the actor is up).

        Raises:
            ConfigError: the actor was given a GPU but torch has no CUDA here.
        """
        if self.device_error is not None:
            raise ConfigError(self.device_error)
        return len(self.shard.pool)
