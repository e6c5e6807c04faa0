"""Build the executor a run configuration names."""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from ..data.pool import Pool
from ..errors import ConfigError
from .base import Executor
from .local import LocalExecutor
from .shard import worker_threads

#: Executor names of ``--executor``.
EXECUTORS = ("local", "ray")
#: Defaults of the Ray executor's options (:class:`entk_al.run.config.RunConfig` holds None
#: under ``--executor local``).
RAY_DEFAULTS: dict[str, Any] = {"workers": 2, "gpus_per_worker": 0.0, "cpus_per_worker": 1.0}
RAY_MISSING = "--executor ray needs Ray, which is not installed: pip install entk-al[ray]"


def make_executor(name: str, pool: Pool | torch.Tensor, device: torch.device, *, address: str | None = None,
                  workers: int = 2, gpus_per_worker: float = 0.0, cpus_per_worker: float | None = None) -> Executor:
    """The executor for ``--executor name`` over ``pool``: the one place executors are made (the
    loop, :func:`entk_al.query` and :class:`~entk_al.round.context.RoundContext`'s default).

    Args:
        name: ``local`` (in process, on ``device``) or ``ray`` (shard actors).
        pool: the pool (:class:`~entk_al.data.pool.Pool`, or an (N, *input_shape) CPU tensor).
        device: the driver's device (the local executor's).
        address: Ray cluster (``auto`` or ``HOST:PORT``); None starts a private local cluster
            that :meth:`Executor.close` shuts down.
        workers: shard actors (ray).
        gpus_per_worker: GPUs reserved per actor (ray; > 0 runs the shard on its GPU).
        cpus_per_worker: CPUs per worker: a Ray actor's reservation and its torch threads (None:
            1), the local executor's torch threads during tile tasks (None: the process's
            setting); :func:`~entk_al.executor.shard.worker_threads`.

    Raises:
        ConfigError: unknown name, or ``ray`` without Ray installed or its cluster unreachable.
    """
    if name == "local":
        return LocalExecutor(pool, device, threads=None if cpus_per_worker is None else worker_threads(cpus_per_worker))
    if name == "ray":
        if importlib.util.find_spec("ray") is None:
            raise ConfigError(RAY_MISSING)
        from .ray_executor import RayExecutor

        return RayExecutor(pool, address=address, workers=workers, gpus_per_worker=gpus_per_worker,
                           cpus_per_worker=RAY_DEFAULTS["cpus_per_worker"] if cpus_per_worker is None
                           else cpus_per_worker)
    raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
