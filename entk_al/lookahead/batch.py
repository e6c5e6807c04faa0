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

from typing import Any, Callable

import numpy as np
import torch

from ..seeding import rank_descending

#: Batch rules of :func:`entk_al.lookahead.posterior.select_lookahead`.
SELECTIONS = ("topk", "gumbel", "kmeanspp")


def top_k_positions(scores: np.ndarray, k: int, keys: np.ndarray | None = None) -> np.ndarray:
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
            :class:`entk_al.lookahead.posterior.Posterior`), or one with ``coef_gram(pos)`` returning
            CᵀC itself (:class:`entk_al.scans.lookahead_tiles.ShardedPosterior`).
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


def inverse_cdf(w: np.ndarray, residual: float) -> int:
    """The position where the running sum of the weights ``w`` first exceeds ``residual``: a
    draw with probability w_i / Σw for residual = u·Σw, u ~ U[0, 1). At the top of the running
    sum (rounding), the last position with weight.

    Args:
        w: (n,) float64 non-negative weights, not all 0.
        residual: where the draw falls, in [0, Σw).
    """
    pick = int(np.searchsorted(np.cumsum(w), residual, side="right"))
    if pick >= len(w) or w[pick] == 0.0:
        pick = int(np.flatnonzero(w)[-1])
    return pick


def kmeanspp_centers(first: Any, k: int, rng: np.random.Generator,
                     update: Callable[[Any], dict[int, tuple[float, tuple[int, int] | None]]],
                     draw: Callable[[int, float], Any], take: Callable[[int, int], Any]) -> list:
    """k-means++ seeding (Arthur & Vassilvitskii, SODA 2007; BADGE, Ash et al., ICLR 2020) over
    points held in parts: the one k-means++ of entk-al, for one array (:func:`kmeanspp_seeding`)
    and for the tiles of an executor (:func:`entk_al.scans.diversity.badge_kmeanspp`).

    Each part keeps D², its points' squared distance to the nearest center chosen so far, and
    the running sum of D² over its unchosen points. Per center after the first: ``u =
    rng.random()``; the part whose share of the total (summed in part order) holds u·total
    draws the point where its running sum passes the rest (:func:`inverse_cdf`), so a point is
    drawn with probability D²/total. When every remaining D² is 0 (duplicates), the unchosen
    point with the lowest (tie-break key, id) is taken.

    Args:
        first: the first center (the caller's choice: BADGE the largest gradient norm, the
            look-ahead's rule the top score).
        k: number of centers (a list of ``first`` alone when k <= 1).
        rng: generator; one ``rng.random()`` per center after the first.
        update: ``update(center) -> {part: (mass, fallback)}``: every part folds the new center
            into its D² and returns the running sum of D² over its unchosen points, and the
            (key, id) of its unchosen point with the lowest key (then id), or None when none is left.
        draw: ``draw(part, residual) -> center``: the part's point where its running sum first
            exceeds ``residual``.
        take: ``take(part, id) -> center``: the part's point ``id`` (the zero-D² fallback).

    Returns:
        the centers in pick order, ``first`` first.
    """
    centers = [first]
    while len(centers) < k:
        res = update(centers[-1])
        parts = sorted(res)
        total = 0.0
        for t in parts:  # in part order, so the total does not depend on where parts ran
            total += res[t][0]
        u = rng.random()
        if not np.isfinite(total) or total <= 0.0:
            t = min((t for t in parts if res[t][1] is not None), key=lambda t: res[t][1])
            centers.append(take(t, res[t][1][1]))
            continue
        target, before, part = u * total, 0.0, None
        for t in parts:
            if res[t][0] > 0.0:
                part = t
                if before + res[t][0] > target:
                    break
                before += res[t][0]
        centers.append(draw(part, target - before))
    return centers


def kmeanspp_seeding(gram: np.ndarray, k: int, first: int, rng: np.random.Generator,
                     keys: np.ndarray | None = None) -> np.ndarray:
    """k-means++ seeding from a Gram matrix (Arthur & Vassilvitskii 2007; BADGE, Ash et al. 2020),
    by :func:`kmeanspp_centers` with the whole array as one part.

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
        raise ValueError(f"first must be in [0, {p})")
    sq = np.diag(gram).copy()
    key_of = np.zeros(p, dtype=np.uint64) if keys is None else np.asarray(keys)
    d2 = np.full(p, np.inf)
    taken = np.zeros(p, dtype=bool)
    weights: list[np.ndarray] = []

    def update(c: int) -> dict[int, tuple[float, tuple[int, int] | None]]:
        taken[c] = True
        # Squared distance to the nearest center; clamped at 0 against round-off.
        np.minimum(d2, np.maximum(sq + sq[c] - 2.0 * gram[:, c], 0.0), out=d2)
        weights[:] = [np.where(taken, 0.0, d2)]
        free = np.flatnonzero(~taken)
        if not free.size:
            return {0: (float(weights[0].sum()), None)}
        low = int(free[np.lexsort((free, key_of[free]))[0]])
        return {0: (float(weights[0].sum()), (int(key_of[low]), low))}

    centers = kmeanspp_centers(int(first), k, rng, update, lambda _, residual: inverse_cdf(weights[0], residual),
                               lambda _, i: i)
    return np.asarray(centers, dtype=np.int64)
