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
import torch

from entk_al.context import RoundContext
from entk_al.executor.diversity import k_center
from entk_al.executor.diversity import sq_dists as _sq_dists


def k_center_greedy(cand: torch.Tensor, centers: torch.Tensor, k: int, chunk_size: int = 4096) -> np.ndarray:
    """Greedy k-center (Sener & Savarese 2018, Alg. 1) with a running minimum distance.

    Args:
        cand: (S, H) float candidate features.
        centers: (n, H) float features of the existing centers (the labeled set); n may be 0.
        k: points to choose, 1 ≤ k ≤ S.
        chunk_size: rows (and columns) per distance tile.

    Returns:
        (k,) int64 positions into ``cand`` in selection order. Ties go to the lowest position;
        with no centers the first pick is the candidate farthest from the candidates' mean.

    Raises:
        ValueError: k out of range or feature sizes differ.
    """
    s = cand.shape[0]
    if not 1 <= k <= s:
        raise ValueError(f"k must be in [1, {s}], got {k}")
    if centers.shape[0] and centers.shape[1] != cand.shape[1]:
        raise ValueError(f"feature sizes differ: {cand.shape[1]} vs {centers.shape[1]}")
    cand = cand.double()
    if centers.shape[0] == 0:
        centers = cand.mean(0, keepdim=True)
    centers = centers.to(cand)
    mind = torch.full((s,), float("inf"), dtype=torch.float64, device=cand.device)
    for i in range(0, s, chunk_size):
        block = cand[i:i + chunk_size]
        for j in range(0, centers.shape[0], chunk_size):
            tile = _sq_dists(block, centers[j:j + chunk_size]).min(dim=1).values
            mind[i:i + chunk_size] = torch.minimum(mind[i:i + chunk_size], tile)
    chosen: list[int] = []
    for _ in range(k):
        c = int(torch.argmax(mind))  # first maximal position on ties
        chosen.append(c)
        for i in range(0, s, chunk_size):
            d = _sq_dists(cand[i:i + chunk_size], cand[c:c + 1]).squeeze(1)
            mind[i:i + chunk_size] = torch.minimum(mind[i:i + chunk_size], d)
        mind[c] = -1.0  # never pick a chosen point again, even among exact duplicates
    return np.asarray(chosen, dtype=np.int64)


class CoresetSampling:
    """k-center greedy over the candidate subset, with the labeled set as initial centers, run
    tile by tile on the round's executor (:func:`entk_al.executor.diversity.k_center`).

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
