"""Core-set: greedy k-center on penultimate features.

Source: Sener & Savarese, "Active Learning for Convolutional Neural Networks: A Core-Set
Approach", ICLR 2018, Algorithm 1 (k-Center-Greedy): repeatedly add the candidate u that
maximizes min_{c ∈ labeled ∪ chosen} ‖h_u − h_c‖₂.

Memory: one running minimum-distance vector (S,) over the S candidates. The initial
distances to the n labeled points are computed in (chunk × chunk) tiles, and each greedy
step updates the vector against one new center, so no S × S or S × n matrix exists.
"""

from __future__ import annotations

import numpy as np

from entk_al.round.context import RoundContext
from entk_al.scans.diversity import k_center


class CoresetSampling:
    """k-center greedy over the candidate subset, with the labeled set as initial centers, run
    tile by tile on the round's executor (:func:`entk_al.scans.diversity.k_center`).

    Args:
        chunk_size: rows per distance tile (memory, not results).
    """

    name = "coreset"
    description = "greedy k-center on penultimate features (Core-Set, Sener & Savarese 2018)"

    def __init__(self, chunk_size: int = 4096):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = int(chunk_size)

    def select(self, ctx: RoundContext, k: int) -> np.ndarray:
        return k_center(ctx.executor, ctx.candidate_ids, ctx.embeddings(ctx.labeled_ids), k, self.chunk_size)

    def __repr__(self) -> str:
        return f"CoresetSampling(chunk_size={self.chunk_size})"
