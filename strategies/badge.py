"""BADGE: k-means++ seeding on last-layer gradient embeddings.

Source: Ash et al., "Deep Batch Active Learning by Diverse, Uncertain Gradient Lower Bounds",
ICLR 2020, Sec. 3. For a candidate x with penultimate features h (H,), softmax p (O,) and
pseudo-label ŷ = argmax p, the gradient of the cross-entropy w.r.t. the readout weights is

    g(x) = (p − e_ŷ) ⊗ h          (O·H,)

and the batch is the k-means++ seeding (Arthur & Vassilvitskii 2007) of {g(x)}: the first
center is the largest ‖g‖ (as in BADGE's code), each next one is drawn with probability
∝ D(x)², D the distance to the nearest chosen center.

g is never materialized: with a = p − e_ŷ, the factorization used by BADGE's code gives
    ‖g_i‖² = ‖a_i‖²‖h_i‖²,   ⟨g_i, g_j⟩ = ⟨a_i, a_j⟩⟨h_i, h_j⟩,
so updating D² for one new center costs O(N·(O + H)), tile by tile on the round's executor
(:func:`entk_al.scans.diversity.badge_kmeanspp`), and the memory is the (N, O + H) inputs
plus one (N,) running-minimum vector.
"""

from __future__ import annotations

import warnings

import numpy as np

from entk_al.round.context import RoundContext
from entk_al.scans.diversity import badge_kmeanspp


class BadgeSampling:
    """BADGE batch selection over the candidate subset, run tile by tile on the round's
    executor (:func:`entk_al.scans.diversity.badge_kmeanspp`; the seeding itself is
    :func:`entk_al.lookahead.batch.kmeanspp_centers`, with the D² draw walking per-tile running sums).

    Args:
        chunk_size: deprecated and ignored (removed in 0.3; a FutureWarning when given): the
            executor's tiles bound the memory.
    """

    name = "badge"
    description = "k-means++ on last-layer gradient embeddings (BADGE, Ash et al. 2020)"

    def __init__(self, chunk_size: int | None = None):
        if chunk_size is not None:
            warnings.warn("badge option 'chunk_size' is ignored (the executor's tiles bound the memory) and will "
                          "be removed in 0.3", FutureWarning, stacklevel=2)

    def select(self, ctx: RoundContext, k: int) -> np.ndarray:
        return badge_kmeanspp(ctx.executor, ctx.candidate_ids, k, ctx.rng)

    def __repr__(self) -> str:
        return "BadgeSampling()"
