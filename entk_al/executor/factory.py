"""Build the executor a run configuration names."""

from __future__ import annotations

import importlib.util

import torch

from ..data.pool import Pool
from ..errors import ConfigError
from .base import Executor
from .local import LocalExecutor

#: Executor names of ``--executor``.
EXECUTORS = ("local", "ray")
RAY_MISSING = "--executor ray needs Ray, which is not installed: pip install entk-al[ray]"


def make_executor(name: str, pool: Pool | torch.Tensor, device: torch.device, *, address: str | None = None,
                  workers: int = 2, gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0) -> Executor:
    """The executor for ``--executor name`` over ``pool``.

    Args:
        name: ``local`` (in process, on ``device``) or ``ray`` (shard actors).
        pool: the pool (:class:`~entk_al.data.pool.Pool`, or an (N, *input_shape) CPU tensor).
        device: the driver's device (the local executor's).
        address: Ray cluster (``auto`` or ``HOST:PORT``); None starts a private local cluster
            that :meth:`Executor.close` shuts down.
        workers: shard actors (ray).
        gpus_per_worker: GPUs reserved per actor (ray; > 0 runs the shard on its GPU).
        cpus_per_worker: CPUs reserved per actor (ray; also its torch thread count, at least 1).

    Raises:
        ConfigError: unknown name, or ``ray`` without Ray installed or its cluster unreachable.
    """
    if name == "local":
        return LocalExecutor(pool, device)
    if name == "ray":
        if importlib.util.find_spec("ray") is None:
            raise ConfigError(RAY_MISSING)
        from .ray_executor import RayExecutor

        return RayExecutor(pool, address=address, workers=workers, gpus_per_worker=gpus_per_worker,
                           cpus_per_worker=cpus_per_worker)
    raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
