"""The round's rule for non-finite values, for the whole kind: a pool id with a non-finite
output, embedding, kernel entry or score is left out of this round's candidates and evaluation
sets, with its reason, and listed in the round's ``strategy_info``.

The functions work on the round's ``excluded`` map (pool id -> reason: "outputs",
"embeddings", "kernel", "score"); :class:`~entk_al.round.context.RoundContext` holds it.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import StrategyError
from ..scans.kernel_rows import nonfinite_blame


def keep_mask(excluded: dict[int, str], ids: np.ndarray) -> np.ndarray:
    """(len(ids),) bool: True where the id has not been left out.

    Args:
        excluded: pool id -> reason.
        ids: (n,) int64 pool ids.
    """
    if not excluded:
        return np.ones(len(ids), dtype=bool)
    return ~np.isin(np.asarray(ids, dtype=np.int64), np.fromiter(excluded, dtype=np.int64))


def exclude(excluded: dict[int, str], ids: np.ndarray, reason: str) -> None:
    """Leave ``ids`` out for ``reason``; an id keeps its first reason.

    Args:
        excluded: pool id -> reason (updated).
        ids: (n,) int64 pool ids.
        reason: "outputs", "embeddings", "kernel" or "score".
    """
    for i in np.asarray(ids, dtype=np.int64).tolist():
        excluded.setdefault(int(i), reason)


def blame_kernel(excluded: dict[int, str], k: torch.Tensor, ids1: np.ndarray, ids2: np.ndarray) -> bool:
    """Leave out the ids whose rows or columns of the kernel block ``k`` hold the non-finite
    entries (the fewest ids that cover them: :func:`entk_al.scans.kernel_rows.nonfinite_blame`).

    Args:
        excluded: pool id -> reason (updated with reason "kernel").
        k: (len(ids1), len(ids2)) kernel block.
        ids1: (N1,) int64 the rows' pool ids.
        ids2: (N2,) int64 the columns' pool ids (``ids1`` for a symmetric block).

    Returns:
        True when some entry was non-finite.
    """
    bad = ~torch.isfinite(k)
    if not bool(bad.any()):
        return False
    symmetric = ids1 is ids2 or (len(ids1) == len(ids2) and np.array_equal(ids1, ids2))
    rows, cols = nonfinite_blame(bad.cpu().numpy(), symmetric)
    exclude(excluded, np.concatenate([ids1[rows], ids2[cols]]), "kernel")
    return True


def summary(excluded: dict[int, str], cap: int = 20) -> dict:
    """What the round's ``strategy_info`` records: how many ids were left out, and the first
    ``cap`` with their reasons (empty when none was).

    Args:
        excluded: pool id -> reason.
        cap: how many ids are listed.
    """
    if not excluded:
        return {}
    return {"nonfinite_excluded": len(excluded),
            "nonfinite_ids": {str(i): why for i, why in list(sorted(excluded.items()))[:cap]}}


def check_enough(kept: np.ndarray, num_candidates: int, k: int, round_idx: int) -> None:
    """Raise when fewer than ``k`` of the round's candidates survived the rule.

    Args:
        kept: the candidates left.
        num_candidates: how many there were.
        k: the ids to query.
        round_idx: the round (0-based), named in the message.

    Raises:
        StrategyError: fewer than ``k`` candidates with finite outputs and embeddings remain.
    """
    if len(kept) < k:
        raise StrategyError(f"round {round_idx}: only {len(kept)} of {num_candidates} candidates "
                            f"have finite model outputs and embeddings, fewer than the {k} to query "
                            f"(check the inputs for huge or non-finite values, and that training did not diverge: "
                            f"the round's train_loss, --lr)")
