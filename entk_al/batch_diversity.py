"""Batch rules for the look-ahead: which k of the scored candidates to query together.

Top-k of a look-ahead score takes k points whose predicted changes to the model overlap (the
paper's batch mode has no diversity term; Mohamadi, Bae & Sutherland 2022, Sec. 5). Two
alternatives, each seeded from the round's strategy RNG:

- ``gumbel`` (Kool, van Hoof & Welling, "Stochastic Beams and Where to Find Them", ICML 2019,
  Sec. 2–3): top-k of log(s_j)/τ + G_j with G_j ~ Gumbel(0, 1) i.i.d. is a sample of k
  candidates without replacement with probabilities ∝ s_j^{1/τ} (the Gumbel-top-k trick).
  Scores ≤ 0 get log = −inf and come last.
- ``kmeanspp`` (Ash, Zhang, Krishnamurthy, Langford & Agarwal, "Deep Batch Active Learning by
  Diverse, Uncertain Gradient Lower Bounds" (BADGE), ICLR 2020, Alg. 1, with the k-means++
  seeding of Arthur & Vassilvitskii, SODA 2007): among the ``pool`` top-scored candidates,
  seed k centers in the space of look-ahead change vectors Δ_j = f_{L+j}(U) − base ∈ R^{m×O},
  Δ_j[i] = c_ij δ_j (c_ij = M_ij/(M_jj+λ), δ_j = y_j − base_j). The first center is the
  top-scored candidate (BADGE takes the largest gradient norm, its analogue of the score);
  each further center is drawn with probability ∝ D(j)², the squared distance to the nearest
  center chosen so far. Candidates whose predicted changes coincide are not queried together.

Equal scores (``flip`` scores are fractions of |U| and tie often) are ordered by the round's
seeded tie-break keys of the candidates' pool ids (:func:`entk_al.seeding.tie_keys`), not by
position.

The change vectors are never formed: their Gram matrix is
⟨Δ_j, Δ_k⟩ = (Σ_i c_ij c_ik)(δ_j · δ_k), from one (m × P) block of M.
"""

from __future__ import annotations

import numpy as np
import torch

from .seeding import rank_descending

#: Batch rules of :func:`entk_al.sequential.select_lookahead`.
SELECTIONS = ("topk", "gumbel", "kmeanspp")


def top_k(scores: np.ndarray, k: int, keys: np.ndarray | None = None) -> np.ndarray:
    """Indices of the k largest scores, (k,) int64; NaN last.

    Args:
        scores: (C,) scores.
        k: how many.
        keys: (C,) uint64 tie-break keys (:func:`entk_al.seeding.tie_keys` of the candidates'
            pool ids): equal scores in increasing key order. None: the earlier index wins.
    """
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    if keys is None:
        return np.argsort(-s, kind="stable")[:k]
    return rank_descending(s, keys)[:k]


def gumbel_top_k(scores: np.ndarray, k: int, rng: np.random.Generator, temperature: float = 1.0) -> np.ndarray:
    """k indices sampled without replacement with probability ∝ score^(1/temperature).

    Gumbel-top-k (Kool et al., ICML 2019): the top k of log(s)/τ + Gumbel(0, 1) noise.

    Args:
        scores: (C,) nonnegative scores (NaN and ≤ 0 are never preferred over positive ones).
        k: number to draw (≤ C).
        rng: the draw's generator (one Gumbel variate per candidate is consumed).
        temperature: τ > 0; τ → 0 approaches top-k, τ → ∞ uniform sampling.

    Returns:
        (k,) int64 indices into ``scores``, in order of their perturbed keys.

    Raises:
        ValueError: temperature ≤ 0.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0)
    with np.errstate(divide="ignore"):
        logs = np.where(s > 0, np.log(np.where(s > 0, s, 1.0)), -np.inf)
    keys = logs / temperature + rng.gumbel(size=s.shape[0])
    return np.argsort(-keys, kind="stable")[:k]


def change_gram(post, pos: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gram matrix ⟨Δ_j, Δ_k⟩ of the look-ahead change vectors of candidates ``pos``.

    Args:
        post: the posterior (``base``, ``m_block``, ``denominators``; see
            :class:`entk_al.sequential.Posterior`), or one with ``coef_gram(pos)`` returning
            CᵀC itself (:class:`entk_al.executor.lookahead_tiles.ShardedPosterior`).
        pos: (P,) int64 candidate positions in U.
        y: (P, O) the labels assumed for them (pseudo-labels).

    Returns:
        (P, P) float64: (CᵀC) ∘ (δδᵀ), C the (m, P) coefficients c_ij, δ_j = y_j − base_j.
        A degenerate candidate (denominator +inf) has Δ = 0.
    """
    delta = y.to(post.base) - post.base[pos]
    if hasattr(post, "coef_gram"):  # a posterior spread over shards sums CᵀC tile by tile
        return post.coef_gram(pos) * (delta @ delta.T)
    coef = post.m_block(slice(None), pos).div_(post.denominators(pos))  # (m, P)
    return (coef.T @ coef) * (delta @ delta.T)


def kmeanspp_seeding(gram: np.ndarray, k: int, first: int, rng: np.random.Generator,
                     keys: np.ndarray | None = None) -> np.ndarray:
    """k-means++ seeding from a Gram matrix (Arthur & Vassilvitskii 2007; BADGE, Ash et al. 2020).

    Args:
        gram: (P, P) symmetric PSD Gram matrix of the points.
        k: number of centers (≤ P).
        first: index of the first center.
        rng: generator; one ``rng.random()`` per center after the first.
        keys: (P,) uint64 tie-break keys (:func:`entk_al.seeding.tie_keys`), or None.

    Returns:
        (k,) int64 distinct indices in pick order. When every remaining point is at distance 0
        from the centers (duplicates), the remaining index with the lowest key is taken (the
        lowest index without keys).

    Raises:
        ValueError: k > P or ``first`` out of range.
    """
    p = gram.shape[0]
    if k > p:
        raise ValueError(f"cannot seed {k} centers from {p} points")
    if not 0 <= first < p:
        raise ValueError(f"first must be in [0, {p}), got {first}")
    sq = np.diag(gram).copy()
    chosen = [int(first)]
    # Squared distance to the nearest center; clamped at 0 against round-off.
    d2 = np.maximum(sq + sq[first] - 2.0 * gram[:, first], 0.0)
    d2[first] = 0.0
    while len(chosen) < k:
        total = d2.sum()
        u = rng.random()
        if total > 0:
            nxt = int(np.searchsorted(np.cumsum(d2), u * total, side="right"))
            nxt = min(nxt, p - 1)
            while d2[nxt] == 0.0:  # u·total on a boundary: step to the next point with mass
                nxt -= 1
        else:
            free = np.setdiff1d(np.arange(p), chosen)
            nxt = int(free[0] if keys is None else free[np.lexsort((free, np.asarray(keys)[free]))[0]])
        chosen.append(nxt)
        d2 = np.minimum(d2, np.maximum(sq + sq[nxt] - 2.0 * gram[:, nxt], 0.0))
        d2[chosen] = 0.0
    return np.asarray(chosen, dtype=np.int64)
