"""BADGE's k-means++ seeding and Core-Set's greedy k-center on the tile plan.

Shards keep each tile's embeddings and running minimum distances for the round; per step the
driver broadcasts the new center's vectors, every tile updates its minima and returns one
number or one (value, key, id) triple, and the driver takes the global argmax or the
D²-weighted draw over the per-tile sums, in tile order. Equal values go to the lowest seeded
tie-break key of the global id (:func:`entk_al.seeding.tie_keys`, the same on every shard),
not to the lowest id. Only the chosen centers' vectors travel.

Sources: Ash et al., ICLR 2020, Sec. 3 (BADGE: k-means++ seeding, Arthur & Vassilvitskii 2007,
on g = (p − e_ŷ) ⊗ h with ‖g‖² = ‖a‖²‖h‖², ⟨g_i, g_j⟩ = ⟨a_i, a_j⟩⟨h_i, h_j⟩); Sener & Savarese,
ICLR 2018, Alg. 1 (k-Center-Greedy).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..executor.shard import Shard
from ..lookahead.batch import inverse_cdf, kmeanspp_centers
from ..seeding import tie_keys


def _split_for_k(executor, ids, k: int):
    """(ids as int64, the plan's tile groups) after checking 1 <= k <= len(ids) (ValueError)."""
    ids = np.asarray(ids, dtype=np.int64)
    if not 1 <= k <= len(ids):
        raise ValueError(f"k must be in [1, {len(ids)}], got {k}")
    return ids, executor.plan.split(ids)


def _best(values: torch.Tensor, keys: np.ndarray, ids: np.ndarray) -> int:
    """Position of the largest value; equal values by the lowest tie-break key, then the lowest id."""
    v = values.detach().cpu().numpy().astype(np.float64)
    top = np.flatnonzero(v == v.max())
    return int(top[np.lexsort((ids[top], keys[top]))[0]])


def _better(a: tuple, b: tuple | None) -> bool:
    """Whether candidate ``a`` = (value, key, id, ...) beats ``b``: larger value, then lower key, then lower id."""
    return b is None or a[0] > b[0] or (a[0] == b[0] and (a[1], a[2]) < (b[1], b[2]))


def sq_dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (len(x), len(y)), clamped at 0, in x's dtype."""
    d = (x * x).sum(1, keepdim=True) + (y * y).sum(1) - 2.0 * (x @ y.T)
    return d.clamp_min_(0.0)


# -- BADGE ------------------------------------------------------------------------------
@torch.no_grad()
def _badge_init(shard: Shard, tile: int, ids: np.ndarray, shared: Any) -> tuple[float, int, int]:
    logits, feats = shard.outputs(tile, ids)
    p = F.softmax(logits, dim=1).double()
    a = p - F.one_hot(p.argmax(dim=1), p.shape[1]).double()
    h = feats.double()
    sq = (a * a).sum(1) * (h * h).sum(1)
    keys = tie_keys(shard.seed, shard.round, ids)
    shard.state(tile)["badge"] = {"ids": ids, "keys": keys, "a": a, "h": h, "sq": sq, "w": None,
                                  "d2": torch.full_like(sq, float("inf")),
                                  "taken": torch.zeros(len(ids), dtype=torch.bool, device=sq.device)}
    j = _best(sq, keys, ids)
    return float(sq[j]), int(keys[j]), int(ids[j])


def _badge_vector(st: dict, pos: int) -> dict:
    return {"id": int(st["ids"][pos]), "a": st["a"][pos].cpu(), "h": st["h"][pos].cpu(), "sq": float(st["sq"][pos])}


def _badge_vector_task(shard: Shard, tile: int, gid: int, shared: Any) -> dict:
    st = shard.state(tile)["badge"]
    return _badge_vector(st, int(np.flatnonzero(st["ids"] == gid)[0]))


@torch.no_grad()
def _badge_update(shard: Shard, tile: int, payload: Any, c: dict) -> tuple[float, tuple[int, int] | None]:
    st = shard.state(tile)["badge"]
    own = np.flatnonzero(st["ids"] == c["id"])
    if own.size:
        st["taken"][int(own[0])] = True
    a_c, h_c = c["a"].to(st["a"]), c["h"].to(st["h"])
    dist = (st["sq"] + c["sq"] - 2.0 * ((st["a"] @ a_c) * (st["h"] @ h_c))).clamp_min(0.0)
    st["d2"] = torch.minimum(st["d2"], dist)
    w = torch.where(st["taken"], torch.zeros_like(st["d2"]), st["d2"]).cpu().numpy()
    st["w"] = w
    free = np.flatnonzero(~st["taken"].cpu().numpy())
    # The running sum, not a pairwise sum: the driver's draw walks the same partial sums.
    total = float(np.cumsum(w)[-1]) if len(w) else 0.0
    if not free.size:
        return total, None
    first = free[np.lexsort((st["ids"][free], st["keys"][free]))[0]]  # for when every D² is 0
    return total, (int(st["keys"][first]), int(st["ids"][first]))


def _badge_pick(shard: Shard, tile: int, residual: float, shared: Any) -> dict:
    st = shard.state(tile)["badge"]
    return _badge_vector(st, inverse_cdf(st["w"], residual))


def badge_kmeanspp(executor: Any, ids: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """BADGE's k-means++ seeding of the candidates ``ids`` on the shards.

    The first center is the largest ‖g‖ (equal norms: the lowest seeded tie-break key,
    :func:`entk_al.seeding.tie_keys`); each next one is drawn with probability ∝ D² (one
    ``rng.random()`` per center) by :func:`entk_al.lookahead.batch.kmeanspp_centers` with the
    tiles as parts: the driver finds the tile whose running sum passes u·total, that tile the
    id. When every remaining D² is 0 the unchosen id with the lowest key is taken.

    Args:
        executor: the run's executor (round begun).
        ids: (S,) int64 increasing candidate ids.
        k: centers, 1 ≤ k ≤ S.
        rng: generator of the draws.

    Returns:
        (k,) int64 global ids in selection order.

    Raises:
        ValueError: k out of range.
    """
    ids, groups = _split_for_k(executor, ids, k)
    init = executor.map(_badge_init, {t: ids[pos] for t, pos in groups.items()})
    best = None
    for t in sorted(init):
        if _better(init[t], None if best is None else init[best]):
            best = t
    jobs = {t: None for t in groups}
    centers = kmeanspp_centers(
        executor.map(_badge_vector_task, {best: init[best][2]})[best], k, rng,
        update=lambda center: executor.map(_badge_update, jobs, center),
        draw=lambda t, residual: executor.map(_badge_pick, {t: residual})[t],
        take=lambda t, gid: executor.map(_badge_vector_task, {t: gid})[t])
    return np.asarray([c["id"] for c in centers], dtype=np.int64)


# -- Core-Set -------------------------------------------------------------------------------
def _argmax_entry(st: dict) -> tuple[float, int, int, torch.Tensor]:
    j = _best(st["mind"], st["keys"], st["ids"])  # equal distances: the lowest tie-break key
    return float(st["mind"][j]), int(st["keys"][j]), int(st["ids"][j]), st["x"][j].cpu()


@torch.no_grad()
def _kcenter_sum(shard: Shard, tile: int, ids: np.ndarray, shared: Any) -> torch.Tensor:
    return shard.outputs(tile, ids)[1].double().sum(0).cpu()


@torch.no_grad()
def _kcenter_init(shard: Shard, tile: int, ids: np.ndarray, centers: dict) -> tuple[float, int, int, torch.Tensor]:
    x = shard.outputs(tile, ids)[1].double()
    cen = centers["x"].to(x)
    chunk = centers["chunk"]
    mind = torch.full((len(x),), float("inf"), dtype=torch.float64, device=x.device)
    for j in range(0, cen.shape[0], chunk):
        mind = torch.minimum(mind, sq_dists(x, cen[j:j + chunk]).min(dim=1).values)
    st = {"ids": ids, "keys": tie_keys(shard.seed, shard.round, ids), "x": x, "mind": mind}
    shard.state(tile)["kcenter"] = st
    return _argmax_entry(st)


@torch.no_grad()
def _kcenter_step(shard: Shard, tile: int, payload: Any, c: dict) -> tuple[float, int, int, torch.Tensor]:
    st = shard.state(tile)["kcenter"]
    st["mind"] = torch.minimum(st["mind"], sq_dists(st["x"], c["x"].to(st["x"]).unsqueeze(0)).squeeze(1))
    own = np.flatnonzero(st["ids"] == c["id"])
    if own.size:
        st["mind"][int(own[0])] = -1.0  # never picked again, even among exact duplicates
    return _argmax_entry(st)


def k_center(executor: Any, ids: np.ndarray, centers: torch.Tensor, k: int, chunk_size: int = 4096) -> np.ndarray:
    """Greedy k-center (Sener & Savarese 2018, Alg. 1) of the candidates ``ids`` on the shards.

    Args:
        executor: the run's executor (round begun).
        ids: (S,) int64 increasing candidate ids (their penultimate features are the points).
        centers: (n, H) features of the existing centers (the labeled set); n may be 0, then
            the first pick is the candidate farthest from the candidates' mean (a float64 sum
            over tiles in tile order).
        k: points to choose, 1 ≤ k ≤ S.
        chunk_size: centers per distance tile (memory, not results).

    Returns:
        (k,) int64 global ids in selection order; equal distances go to the lowest seeded
        tie-break key (:func:`entk_al.seeding.tie_keys`).

    Raises:
        ValueError: k out of range.
    """
    ids, groups = _split_for_k(executor, ids, k)
    jobs = {t: ids[pos] for t, pos in groups.items()}
    centers = centers.detach().double().cpu()
    if centers.shape[0] == 0:
        sums = executor.map(_kcenter_sum, jobs)
        total = torch.zeros_like(sums[min(sums)])
        for t in sorted(sums):
            total += sums[t]
        centers = (total / len(ids)).unsqueeze(0)
    res = executor.map(_kcenter_init, jobs, {"x": centers, "chunk": int(chunk_size)})
    chosen: list[int] = []
    step_jobs = {t: None for t in groups}
    while True:
        best = None
        for t in sorted(res):
            if _better(res[t], None if best is None else res[best]):
                best = t
        _, _, cid, cx = res[best]
        chosen.append(cid)
        if len(chosen) == k:
            return np.asarray(chosen, dtype=np.int64)
        res = executor.map(_kcenter_step, step_jobs, {"id": cid, "x": cx})
