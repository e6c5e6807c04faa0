"""Uniform random sampling, the baseline every method must beat."""

from __future__ import annotations

import numpy as np

from entk_al.round.context import RoundContext


class RandomSampling:
    """Pick ``k`` candidates uniformly without replacement, from the (seed, round) stream."""

    name = "random"
    description = "uniform random sampling from the candidate subset"

    def select(self, ctx: RoundContext, k: int) -> np.ndarray:
        return ctx.rng.choice(ctx.candidate_ids, size=k, replace=False)
