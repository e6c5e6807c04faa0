"""Shared base for strategies that score candidates and take the top k."""

from __future__ import annotations

import numpy as np
import torch

from entk_al.context import RoundContext


def top_k(ids: np.ndarray, scores: np.ndarray | torch.Tensor, k: int) -> np.ndarray:
    """The ``k`` ids with the highest scores; ties go to the earlier position (stable).

    Args:
        ids: (S,) int64 global ids.
        scores: (S,) scores, higher = more informative.

    Raises:
        ValueError: ``k`` exceeds the number of ids, or shapes differ.
    """
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().double().numpy()
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != ids.shape:
        raise ValueError(f"scores shape {scores.shape} does not match ids shape {ids.shape}")
    if k > len(ids):
        raise ValueError(f"cannot select {k} from {len(ids)} candidates")
    # NaN scores rank last rather than poisoning the sort.
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")
    return ids[order[:k]]


class ScoreStrategy:
    """Select the top-k candidates under ``score(ctx, ids)``; subclasses define ``score``."""

    name = "score"
    description = ""

    def score(self, ctx: RoundContext, ids: np.ndarray) -> torch.Tensor | np.ndarray:
        raise NotImplementedError

    def select(self, ctx: RoundContext, k: int) -> np.ndarray:
        ids = ctx.candidate_ids
        return top_k(ids, self.score(ctx, ids), k)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
