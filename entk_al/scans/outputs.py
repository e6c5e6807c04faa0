"""Pool scans on the tile plan: forward passes and cheap scores, merged on the driver.

Per tile (on its shard): the model's outputs and penultimate features, or a score per id
(:data:`entk_al.lookahead.uncertainty.CHEAP_SCORES`, BALD). Back to the driver come outputs for the
ids asked, or only each tile's top k and a few sums; the driver merges tiles in tile order.
Equal scores are ordered by the round's seeded tie-break key of the global id
(:func:`entk_al.seeding.tie_keys`), then by id: a key depends on the id alone, so the merge
gives what one sort of all candidates gives (:func:`strategies.scoring.top_k` in one
process), whichever shard scored a tile.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..executor.shard import Shard
from ..lookahead.uncertainty import CHEAP_SCORES, bald_from_samples, cheap_score
from ..nets.models import last_linear
from ..seeding import (
    BALD_DROPOUT_TILE,
    BALD_MASKS_TILE,
    int_seed,
    rank_descending,
    tie_keys,
    tile_component,
    torch_generator,
)


def _predict(shard: Shard, tile: int, ids: np.ndarray, shared: Any) -> tuple[torch.Tensor, torch.Tensor]:
    logits, feats = shard.outputs(tile, ids)
    return logits.cpu(), feats.cpu()


def _bald_feature_dropout(shard: Shard, tile: int, ids: np.ndarray, samples: int, rate: float) -> torch.Tensor:
    head = last_linear(shard.model)
    w = head.weight.detach().double()
    b = None if head.bias is None else head.bias.detach().double()
    h = shard.outputs(tile, ids)[1].to(w.dtype)
    keep = 1.0 - rate
    # One stream per (seed, round, tile): the masks do not depend on how tiles are spread.
    gen = torch_generator(shard.seed, shard.round, tile_component(BALD_MASKS_TILE, tile))
    u = torch.rand((len(h), samples, h.shape[1]), generator=gen)
    mask = (u < keep).to(device=h.device, dtype=h.dtype) / keep
    logits = F.linear(h.unsqueeze(1) * mask, w, b)  # (n, T, O)
    return bald_from_samples(F.softmax(logits, dim=-1).transpose(0, 1))


def _bald_model_dropout(shard: Shard, tile: int, ids: np.ndarray, samples: int) -> torch.Tensor:
    model = shard.model
    modes = {m: m.training for m in model.modules()}
    devices = [shard.device] if shard.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int_seed(shard.seed, shard.round, tile_component(BALD_DROPOUT_TILE, tile)))
            model.eval()
            for m in model.modules():
                if isinstance(m, nn.modules.dropout._DropoutNd):
                    m.train()
            x = shard.inputs(ids)
            return bald_from_samples(torch.stack([F.softmax(model(x), dim=-1) for _ in range(samples)]))
    finally:
        for m, mode in modes.items():
            m.train(mode)


@torch.no_grad()
def _score(shard: Shard, tile: int, ids: np.ndarray, shared: dict) -> dict:
    kind = shared["kind"]
    if kind == "bald":
        if shared["model_dropout"]:
            s = _bald_model_dropout(shard, tile, ids, shared["samples"])
        else:
            s = _bald_feature_dropout(shard, tile, ids, shared["samples"], shared["dropout"])
    else:
        s = cheap_score(kind, F.softmax(shard.outputs(tile, ids)[0], dim=1))
    s = s.cpu().numpy().astype(np.float64)
    fin = np.isfinite(s)
    keys = tie_keys(shard.seed, shard.round, ids[fin])
    order = rank_descending(s[fin], keys, ids[fin])[:shared["k"]]
    return {"ids": ids[fin][order], "scores": s[fin][order], "keys": keys[order], "nonfinite": ids[~fin],
            "sum": float(s[fin].sum()), "count": int(fin.sum()), "all": (ids[fin], s[fin])}


def outputs_on_shards(executor: Any, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs and penultimate features at pool ``ids``, computed tile by tile on the shards.

    Args:
        executor: the run's executor (round begun).
        ids: (n,) int64 global pool ids (any order, no repeats).

    Returns:
        (logits (n, O), features (n, H)) CPU tensors in the model dtype, rows in ``ids`` order.
    """
    ids = np.asarray(ids, dtype=np.int64)
    groups = executor.plan.split(ids)
    got = executor.map(_predict, {t: ids[pos] for t, pos in groups.items()})
    logits = feats = None
    for t, pos in groups.items():
        lt, ft = got[t]
        if logits is None:
            logits = lt.new_empty((len(ids), lt.shape[1]))
            feats = ft.new_empty((len(ids), ft.shape[1]))
        idx = torch.from_numpy(pos)
        logits[idx], feats[idx] = lt, ft
    return logits, feats


def top_scores(executor: Any, kind: str, ids: np.ndarray, k: int, **options: Any) -> dict:
    """The ``k`` ids with the highest finite score, merged from per-tile top-k lists.

    Args:
        executor: the run's executor (round begun).
        kind: one of :data:`entk_al.lookahead.uncertainty.CHEAP_SCORES` or ``bald`` (options ``samples``,
            ``dropout``, ``model_dropout``: T MC samples, feature-dropout rate, whether the
            model's own dropout layers are used; masks from (seed, round, tile) streams).
        ids: (S,) int64 increasing global ids to score.
        k: how many to return.

    Returns:
        dict: ``ids`` (≤ k,) int64 by decreasing score, equal scores in the round's seeded
        tie-break order (:func:`entk_al.seeding.tie_keys` of (seed, round) as begun); ``scores``
        (float64) aligned; ``nonfinite`` ids whose score was NaN/±inf; ``mean`` of the finite
        scores; ``count`` of finite scores; ``all_ids`` and ``all_scores``: every finite score
        (in tile order).

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind not in (*CHEAP_SCORES, "bald"):
        raise ValueError(f"unknown score {kind!r}")
    ids = np.asarray(ids, dtype=np.int64)
    groups = executor.plan.split(ids)
    shared = dict(options, kind=kind, k=int(k))
    got = executor.map(_score, {t: ids[pos] for t, pos in groups.items()}, shared)
    tiles = sorted(got)
    top_ids = np.concatenate([got[t]["ids"] for t in tiles]) if tiles else np.zeros(0, np.int64)
    top_s = np.concatenate([got[t]["scores"] for t in tiles]) if tiles else np.zeros(0)
    top_keys = np.concatenate([got[t]["keys"] for t in tiles]) if tiles else np.zeros(0, np.uint64)
    order = rank_descending(top_s, top_keys, top_ids)[:k]
    total = 0.0
    for t in tiles:  # float64, in tile order
        total += got[t]["sum"]
    count = sum(got[t]["count"] for t in tiles)
    nonfinite = np.concatenate([got[t]["nonfinite"] for t in tiles]) if tiles else np.zeros(0, np.int64)
    all_ids = np.concatenate([got[t]["all"][0] for t in tiles]) if tiles else np.zeros(0, np.int64)
    all_s = np.concatenate([got[t]["all"][1] for t in tiles]) if tiles else np.zeros(0)
    return {"ids": top_ids[order], "scores": top_s[order], "nonfinite": nonfinite,
            "mean": total / count if count else float("nan"), "count": count, "all_ids": all_ids, "all_scores": all_s}
