"""Uncertainty sampling on softmax probabilities: entropy, margin, least confidence.

Scores use the model's softmax probabilities, never min-max normalized outputs, and
margin sorts each row over classes (both were faults of the look-ahead authors' code).
Source: Settles, "Active Learning Literature Survey" (2009), Sec. 3.1.
"""

from __future__ import annotations

import numpy as np
import torch

from entk_al.lookahead.uncertainty import entropy
from entk_al.round.context import RoundContext

from .scoring import ScoreStrategy

__all__ = ["entropy", "EntropySampling", "MarginSampling", "LeastConfidence"]


class EntropySampling(ScoreStrategy):
    """Score = −Σ_k p_k log p_k (nats)."""

    name = "entropy"
    description = "highest predictive entropy of the softmax"
    tile_score = "entropy"

    def score(self, ctx: RoundContext, ids: np.ndarray) -> torch.Tensor:
        return entropy(ctx.probs(ids).double())


class MarginSampling(ScoreStrategy):
    """Score = −(p_(1) − p_(2)), the negated gap between the two most likely classes."""

    name = "margin"
    description = "smallest gap between the two most likely classes"
    tile_score = "margin"

    def score(self, ctx: RoundContext, ids: np.ndarray) -> torch.Tensor:
        top2 = ctx.probs(ids).double().topk(2, dim=1).values
        return -(top2[:, 0] - top2[:, 1])


class LeastConfidence(ScoreStrategy):
    """Score = 1 − max_k p_k."""

    name = "least_confidence"
    description = "lowest probability of the predicted class"
    tile_score = "least_confidence"

    def score(self, ctx: RoundContext, ids: np.ndarray) -> torch.Tensor:
        return 1.0 - ctx.probs(ids).double().max(dim=1).values
