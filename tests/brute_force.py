"""Brute-force references of the diversity strategies: explicit embeddings, explicit distances.

They hold what entk-al's one implementation of each algorithm (k-means++:
:func:`entk_al.lookahead.batch.kmeanspp_centers`; k-center: :func:`entk_al.scans.diversity.k_center`)
must give, written the plain way, for tests only.
"""

from __future__ import annotations

import numpy as np


def kmeanspp_explicit(g: np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    """k-means++ on explicit rows ``g`` (N, D): first the largest norm, then inverse-CDF D² draws."""
    chosen = [int(np.argmax((g * g).sum(1)))]
    d2 = np.full(len(g), np.inf)
    for _ in range(1, k):
        d2 = np.minimum(d2, ((g - g[chosen[-1]]) ** 2).sum(1))
        w = d2.copy()
        w[chosen] = 0.0
        u = rng.random()
        chosen.append(int(np.searchsorted(np.cumsum(w), u * w.sum(), side="right")))
    return chosen


def k_center_explicit(cand: np.ndarray, centers: np.ndarray, k: int) -> list[int]:
    """Greedy k-center (Sener & Savarese 2018, Alg. 1) from the full distance matrix; no
    centers: the first pick is the candidate farthest from the candidates' mean."""
    centers = cand.mean(0, keepdims=True) if len(centers) == 0 else centers
    d = np.sqrt(((cand[:, None] - centers[None]) ** 2).sum(-1)).min(1)
    chosen = []
    for _ in range(k):
        c = int(np.argmax(d))
        chosen.append(c)
        d = np.minimum(d, np.sqrt(((cand - cand[c]) ** 2).sum(-1)))
        d[chosen] = -1
    return chosen
