"""Shared base for strategies that score candidates and take the top k."""

from __future__ import annotations

import numpy as np
import torch

from entk_al.context import RoundContext
from entk_al.errors import StrategyError


def top_k(ids: np.ndarray, scores: np.ndarray | torch.Tensor, k: int,
          ctx: RoundContext | None = None) -> np.ndarray:
    """The ``k`` ids with the highest finite scores; ties go to the earlier position (stable).

    Ids with a non-finite score (NaN, ±inf) are left out, never ranked: with ``ctx`` they are
    recorded in ``ctx.info`` as excluded (:meth:`RoundContext.exclude`).

    Args:
        ids: (S,) int64 global ids.
        scores: (S,) scores, higher = more informative.
        ctx: the round context, to record excluded ids (optional).

    Raises:
        ValueError: ``k`` exceeds the number of ids, or shapes differ.
        StrategyError: fewer than ``k`` ids have a finite score.
    """
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().double().numpy()
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != ids.shape:
        raise ValueError(f"scores shape {scores.shape} does not match ids shape {ids.shape}")
    if k > len(ids):
        raise ValueError(f"cannot select {k} from {len(ids)} candidates")
    finite = np.isfinite(scores)
    if not finite.all():
        if ctx is not None:
            ctx.exclude(ids[~finite], "score")
        if finite.sum() < k:
            raise StrategyError(f"only {int(finite.sum())} of {len(ids)} candidates have a finite score, "
                                f"fewer than the {k} to query")
        ids, scores = ids[finite], scores[finite]
    order = np.argsort(-scores, kind="stable")
    return ids[order[:k]]


class ScoreStrategy:
    """Select the top-k candidates under ``score(ctx, ids)``; subclasses define ``score``."""

    name = "score"
    description = ""

    def score(self, ctx: RoundContext, ids: np.ndarray) -> torch.Tensor | np.ndarray:
        raise NotImplementedError

    def select(self, ctx: RoundContext, k: int) -> np.ndarray:
        ids = ctx.candidate_ids
        return top_k(ids, self.score(ctx, ids), k, ctx)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
