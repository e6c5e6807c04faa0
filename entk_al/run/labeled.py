"""Pool bookkeeping in one global id space (row indices of the train split)."""

from __future__ import annotations

import numpy as np

from ..errors import StrategyError


class PoolState:
    """Which of ``pool_size`` pool ids are labeled, when, and with what label.

    Attributes:
        labeled_round: (N,) int64, the round at which each id was labeled: ``UNLABELED``
            (-1) if not labeled, ``INITIAL`` (-2) for the seeded initial set.
        labels: (N,) int64 label given by the oracle; -1 where unknown.
    """

    UNLABELED = -1
    INITIAL = -2  # labeled before round 0 (the seeded initial set)

    def __init__(self, pool_size: int):
        self.labeled_round = np.full(pool_size, self.UNLABELED, dtype=np.int64)
        self.labels = np.full(pool_size, -1, dtype=np.int64)

    @property
    def size(self) -> int:
        return len(self.labeled_round)

    @property
    def labeled_mask(self) -> np.ndarray:
        return self.labeled_round != self.UNLABELED

    def labeled_ids(self) -> np.ndarray:
        """Labeled ids in increasing order, (n,) int64."""
        return np.flatnonzero(self.labeled_mask)

    def unlabeled_ids(self) -> np.ndarray:
        """Unlabeled ids in increasing order, (N - n,) int64."""
        return np.flatnonzero(~self.labeled_mask)

    def add(self, ids: np.ndarray, labels: np.ndarray, round_idx: int) -> None:
        """Record labels for ``ids`` queried at ``round_idx`` (``INITIAL`` for the seed set).

        Asserts the invariants: ids are in range, distinct, and currently unlabeled.
        """
        ids = np.asarray(ids, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        # Explicit raises, not assert: the invariants must hold under python -O too.
        if ids.shape != labels.shape:
            raise AssertionError("ids and labels differ in shape")
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            raise AssertionError("id out of range")
        if len(np.unique(ids)) != len(ids):
            raise AssertionError("an id was queried twice in one round")
        if self.labeled_mask[ids].any():
            raise AssertionError("an already-labeled id was queried again")
        self.labeled_round[ids] = round_idx
        self.labels[ids] = labels

    def state_dict(self) -> dict:
        return {"labeled_round": self.labeled_round.copy(), "labels": self.labels.copy()}

    @classmethod
    def from_state_dict(cls, state: dict) -> "PoolState":
        pool = cls(len(state["labeled_round"]))
        pool.labeled_round = np.asarray(state["labeled_round"], dtype=np.int64).copy()
        pool.labels = np.asarray(state["labels"], dtype=np.int64).copy()
        return pool


def validate_selection(strategy_name: str, ids, k: int, pool: PoolState | np.ndarray) -> np.ndarray:
    """Check a strategy's answer ``ids``: exactly ``k`` distinct, unlabeled, in-range integer ids.

    Args:
        strategy_name: named in the error message.
        ids: what the strategy's ``select`` returned.
        k: the number of ids asked for.
        pool: the pool state the ids must be unlabeled in, or its (N,) bool labeled mask.

    Returns:
        The ids as a (k,) int64 array, in the strategy's order.

    Raises:
        StrategyError: naming the strategy and what is wrong.
    """
    try:
        arr = np.asarray(ids)
    except Exception as exc:  # an arbitrary user object
        raise StrategyError(f"strategy {strategy_name!r} returned something that is not an id array ({exc})") from None
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise StrategyError(f"strategy {strategy_name!r} must return a 1-D integer array of pool ids, "
                            f"got dtype {arr.dtype} shape {arr.shape}")
    arr = arr.astype(np.int64)
    labeled = pool.labeled_mask if isinstance(pool, PoolState) else np.asarray(pool, dtype=bool)
    size = len(labeled)
    if len(arr) != k:
        raise StrategyError(f"strategy {strategy_name!r} returned {len(arr)} ids, expected {k}")
    if arr.size and (arr.min() < 0 or arr.max() >= size):
        raise StrategyError(f"strategy {strategy_name!r} returned ids outside the pool [0, {size})")
    if len(np.unique(arr)) != len(arr):
        raise StrategyError(f"strategy {strategy_name!r} returned duplicate ids")
    if labeled[arr].any():
        bad = arr[labeled[arr]][:5].tolist()
        raise StrategyError(f"strategy {strategy_name!r} returned already-labeled ids, e.g. {bad}")
    return arr
