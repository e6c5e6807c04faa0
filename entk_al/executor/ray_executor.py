"""The ``ray`` executor: long-lived shard actors, each owning a contiguous range of pool ids.

Ray is imported here only, and this module only when ``--executor ray`` is asked for
(:func:`entk_al.executor.factory.make_executor`). Each actor receives its id range's inputs
once, at start; each round the model is put in the object store once (``ray.put``) and every
actor takes it from there; a task's shared arguments are put once per call. Only per-tile
results come back.

Fault tolerance: every call an actor served this round is journaled (the round's model
first). When an actor dies (``RayActorError``), a new one is created for the same id range,
the journal is replayed into it (every tile task is deterministic), and the failed call is
retried, so the round's result is unchanged.
"""

from __future__ import annotations

import copy
import math
import os
import socket
from typing import Any, Callable

import torch
from torch import nn

from ..data.pool import Pool, as_pool
from ..errors import ConfigError
from .base import Executor
from .plan import TILE_SIZE, TilePlan
from .ray_actor import ShardHost
from .shard import worker_threads

#: Seconds the shard actors may take to start before the run stops with an error (a cluster
#: whose CPUs or GPUs are all taken would otherwise keep them pending forever).
ACTOR_START_S = 180.0
#: Seconds to wait for a TCP connection to an explicit ``--address HOST:PORT``.
PROBE_S = 5.0


def _probe(address: str) -> None:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_S).close()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--address {address}: cannot reach a Ray cluster there "
                          f"({type(exc).__name__}: {exc}); start one with `ray start --head`") from None


def _check_resources(have: dict, workers: int, cpus_per_worker: float, gpus_per_worker: float, where: str) -> None:
    need = {"CPU": workers * cpus_per_worker, "GPU": workers * gpus_per_worker}
    for kind, amount in need.items():
        if amount > have.get(kind, 0.0) + 1e-9:
            flag = "--cpus-per-worker" if kind == "CPU" else "--gpus-per-worker"
            raise ConfigError(f"--workers {workers} × {flag} {cpus_per_worker if kind == 'CPU' else gpus_per_worker:g} "
                              f"needs {amount:g} {kind}s, but {where} has {have.get(kind, 0.0):g}")


class RayExecutor(Executor):
    """Shard actors on a Ray cluster.

    Args:
        pool: the pool (:class:`~entk_al.data.pool.Pool` or an (N, *input_shape) CPU tensor); each
            actor gets what it needs to read its id range once (:meth:`Pool.shard`: an in-memory
            pool's rows, or the source itself — a file path, a dataset — which the actor opens).
        address: ``auto``, ``HOST:PORT`` (an existing cluster), or None: start a private local
            cluster (``num_cpus`` = workers × cpus_per_worker) that :meth:`close` shuts down.
            When Ray is already initialized in this process, that cluster is used and left up.
        workers: shard actors (>= 1).
        gpus_per_worker: GPUs per actor (> 0: the shard runs on its GPU).
        cpus_per_worker: CPUs per actor; also its torch thread count
            (:func:`~entk_al.executor.shard.worker_threads`).
        tile_size: ids per tile (the same as the local executor's).

    Raises:
        ConfigError: the cluster cannot be reached (``HOST:PORT`` is probed first, so an address
            with nothing listening fails in seconds instead of Ray's endless retries); the
            workers need more CPUs or GPUs than this machine (private cluster) or the cluster
            has; the actors do not start within :data:`ACTOR_START_S` seconds; or an actor given
            a GPU finds no CUDA (no fallback to the CPU).
    """

    name = "ray"

    def __init__(self, pool: Pool | torch.Tensor, *, address: str | None = None, workers: int = 2,
                 gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0, tile_size: int = TILE_SIZE):
        import ray

        self._ray = ray
        self._own_cluster = False
        if not ray.is_initialized():
            if address is None:  # a private cluster on this machine: its CPUs and GPUs are the limit
                gpus = float(torch.cuda.device_count()) if torch.cuda.is_available() else 0.0
                _check_resources({"CPU": float(os.cpu_count() or 1), "GPU": gpus}, workers, cpus_per_worker,
                                 gpus_per_worker, "this machine")
            elif address != "auto":
                _probe(address)
            try:
                if address is None:
                    ray.init(num_cpus=max(1, math.ceil(workers * cpus_per_worker)), include_dashboard=False,
                             log_to_driver=False, configure_logging=False)
                    self._own_cluster = True
                else:
                    ray.init(address=address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"--address {address}: cannot reach a Ray cluster "
                                  f"({' '.join(str(exc).split())[:200]})") from None
        try:
            _check_resources(ray.cluster_resources(), workers, cpus_per_worker, gpus_per_worker,
                             "the Ray cluster" if address is not None else "the private Ray cluster")
        except ConfigError:
            if self._own_cluster:
                ray.shutdown()
            raise
        pool = as_pool(pool)
        self.plan = TilePlan(len(pool), workers, tile_size)
        self._remote = ray.remote(ShardHost).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                                                      max_restarts=0)
        self._threads = worker_threads(cpus_per_worker)
        self._use_gpu = gpus_per_worker > 0
        self._inputs: dict[int, Any] = {}
        self.actors: dict[int, Any] = {}
        for s in range(workers):
            start, stop = self.plan.shard_ids(s)
            if stop > start:
                self._inputs[s] = ray.put(pool.shard(start, stop))
                self.actors[s] = self._spawn(s)
        try:
            ray.get([a.ping.remote() for a in self.actors.values()], timeout=ACTOR_START_S)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise ConfigError(f"the {len(self.actors)} shard actors did not start within {ACTOR_START_S:g} s "
                              f"(are the cluster's CPUs/GPUs taken by other jobs?)") from None
        except ray.exceptions.RayTaskError as exc:
            self.close()
            cause = getattr(exc, "cause", None)
            if isinstance(cause, ConfigError):  # e.g. a GPU actor without CUDA: the local executor's failure
                raise ConfigError(str(cause)) from None
            raise
        self._journal: dict[int, list[tuple[str, tuple]]] = {s: [] for s in self.actors}
        #: test hook: called with the number of map calls made this round, before each one.
        self.before_map: Callable[[int], None] | None = None
        self._maps = 0
        #: actors re-created after a failure, over the executor's life.
        self.restarts = 0

    def _spawn(self, s: int) -> Any:
        return self._remote.remote(self._inputs[s], self.plan.tile_size, self._threads, self._use_gpu)

    def begin_round(self, round_idx: int, seed: int, model: nn.Module) -> None:
        if any(p.device.type != "cpu" for p in model.parameters()):
            with torch.inference_mode(False):  # inference tensors could not be differentiated
                model = copy.deepcopy(model).cpu()
        ref = self._ray.put(model)
        self._journal = {s: [("begin_round", (round_idx, seed, ref))] for s in self.actors}
        self._maps = 0
        self._gather({s: ("begin_round", (round_idx, seed, ref)) for s in self.actors}, journal=False)

    def map(self, task: Callable, jobs: dict[int, Any], shared: Any = None) -> dict[int, Any]:
        if self.before_map is not None:
            self.before_map(self._maps)
        self._maps += 1
        shared_ref = self._ray.put(shared)
        per_shard: dict[int, list] = {}
        for t in sorted(jobs):
            per_shard.setdefault(self.plan.owner(t), []).append((t, jobs[t]))
        got = self._gather({s: ("run", (task, tj, shared_ref)) for s, tj in per_shard.items()})
        out: dict[int, Any] = {}
        for pairs in got.values():
            out.update(pairs)
        return out

    def _gather(self, calls: dict[int, tuple[str, tuple]], journal: bool = True) -> dict[int, Any]:
        """Send every call, then collect; a dead actor is revived and its call retried."""
        exc_type = self._ray.exceptions.RayActorError
        refs = {s: getattr(self.actors[s], m).remote(*args) for s, (m, args) in calls.items()}
        out = {}
        for s, ref in refs.items():
            try:
                out[s] = self._ray.get(ref)
            except exc_type:
                self._revive(s)
                m, args = calls[s]
                out[s] = self._ray.get(getattr(self.actors[s], m).remote(*args))
            if journal:
                self._journal[s].append(calls[s])
        return out

    def _revive(self, s: int) -> None:
        """A new actor for shard ``s``'s id range, brought to where the dead one was this round."""
        self.restarts += 1
        self.actors[s] = self._spawn(s)
        for m, args in self._journal[s]:
            self._ray.get(getattr(self.actors[s], m).remote(*args))

    def close(self) -> None:
        for a in self.actors.values():
            try:
                self._ray.kill(a)
            except Exception:  # already gone
                pass
        self.actors = {}
        if self._own_cluster and self._ray.is_initialized():
            self._ray.shutdown()
