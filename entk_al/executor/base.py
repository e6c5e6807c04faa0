"""The executor interface: run per-tile tasks where the tiles live, hand results back by tile."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

from torch import nn

from .plan import TilePlan


class Executor(ABC):
    """Runs per-tile task functions on the shards of a :class:`~entk_al.executor.plan.TilePlan`.

    The executor knows no task: the algorithms (:mod:`entk_al.scans`) hand it their module-level
    task functions, ``fn(shard, tile, payload, shared)`` or a
    :func:`~entk_al.executor.shard.per_shard` one.

    The driver calls :meth:`begin_round` once per round with the trained model, then any number
    of :meth:`map` calls; it reduces their results itself, in tile order. Results must not
    depend on which shard ran a tile or in what order tiles finished.

    Attributes:
        plan: the tile plan (tile size fixed; shards = workers).
        name: ``local`` or ``ray``.
    """

    plan: TilePlan
    name: str = "executor"

    @abstractmethod
    def begin_round(self, round_idx: int, seed: int, model: nn.Module) -> None:
        """Hand every shard a copy of this round's model (broadcast once) and clear last round's
        tile state; the driver's ``model`` is neither moved nor changed."""

    @abstractmethod
    def map(self, task: Callable, jobs: dict[int, Any], shared: Any = None) -> dict[int, Any]:
        """Run the task function ``task`` on each tile of ``jobs`` ({tile: payload}) with ``shared`` (sent once).

        Returns:
            {tile: result} for every tile of ``jobs``.
        """

    def close(self) -> None:
        """Release workers (nothing for in-process executors)."""
        return None

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
