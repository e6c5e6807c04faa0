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
so updating D² for one new center costs O(N·(O + H)) in chunks, and the memory is the
(N, O + H) inputs plus one (N,) running-minimum vector.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from entk_al.context import RoundContext
from entk_al.executor.diversity import badge_kmeanspp


def kmeanspp_factorized(a: torch.Tensor, h: torch.Tensor, k: int, rng: np.random.Generator,
                        chunk_size: int = 8192) -> np.ndarray:
    """k-means++ seeding on the implicit rows g_i = a_i ⊗ h_i.

    Args:
        a: (N, O) float, the output-side factor (p − e_ŷ for BADGE).
        h: (N, H) float, the feature-side factor.
        k: number of centers, 1 ≤ k ≤ N.
        rng: NumPy generator for the D²-weighted draws (one ``rng.random()`` per center
            after the first).
        chunk_size: rows per chunk in the D² update.

    Returns:
        (k,) int64 row positions in selection order, distinct. When every remaining D² is 0
        (duplicates), the next center is the lowest unchosen position.

    Raises:
        ValueError: k out of range or mismatched shapes.
    """
    n = a.shape[0]
    if h.shape[0] != n:
        raise ValueError(f"a has {n} rows, h has {h.shape[0]}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    a, h = a.double(), h.double()
    sq = (a * a).sum(1) * (h * h).sum(1)  # ‖g_i‖²
    chosen = [int(torch.argmax(sq))]
    d2 = torch.full((n,), float("inf"), dtype=torch.float64, device=a.device)
    taken = torch.zeros(n, dtype=torch.bool, device=a.device)
    for _ in range(1, k):
        c = chosen[-1]
        taken[c] = True
        for s in range(0, n, chunk_size):
            dot = (a[s:s + chunk_size] @ a[c]) * (h[s:s + chunk_size] @ h[c])
            dist = (sq[s:s + chunk_size] + sq[c] - 2.0 * dot).clamp_min(0.0)
            d2[s:s + chunk_size] = torch.minimum(d2[s:s + chunk_size], dist)
        w = torch.where(taken, torch.zeros_like(d2), d2).cpu().numpy()
        total = w.sum()
        u = rng.random()
        if not np.isfinite(total) or total <= 0.0:
            chosen.append(int(np.flatnonzero(~taken.cpu().numpy())[0]))
            continue
        # Inverse-CDF draw; searchsorted on the running sum picks i with probability w_i / total.
        pick = int(np.searchsorted(np.cumsum(w), u * total, side="right"))
        if pick >= n or w[pick] == 0.0:  # rounding at the top of the running sum
            pick = int(np.flatnonzero(w)[-1])
        chosen.append(pick)
    return np.asarray(chosen, dtype=np.int64)


class BadgeSampling:
    """BADGE batch selection over the candidate subset, run tile by tile on the round's
    executor (:func:`entk_al.executor.diversity.badge_kmeanspp`, the same seeding as
    :func:`kmeanspp_factorized` with the D² draw walking per-tile running sums).

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
