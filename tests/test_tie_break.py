"""Ties decide queries by the round's seeded stream, not by id (issue 19, item 10).

On a pool of identical points every score, distance and gradient norm ties, so each
strategy's pick is decided by its tie rule alone: it must be the round's seeded order of the
candidate ids (:func:`entk_al.seeding.tie_keys`), the same on any layout of tiles and shards,
and not the lowest ids (which on a class-sorted pool are one class).
"""

import numpy as np
import pytest
import torch
from test_executor import TILE, ScatteredExecutor
from torch import nn

from entk_al.executor import LocalExecutor
from entk_al.lookahead.batch import kmeanspp_seeding, top_k_positions
from entk_al.ntk import pntk
from entk_al.round.context import RoundContext
from entk_al.run.plugins import load_strategy
from entk_al.scans.diversity import badge_kmeanspp, k_center
from entk_al.scans.outputs import top_scores
from entk_al.seeding import numpy_rng, rank_descending, tie_keys, torch_generator

SEED, ROUND, K = 3, 2, 6


def seeded_order(ids):
    ids = np.asarray(ids)
    return ids[np.lexsort((ids, tie_keys(SEED, ROUND, ids)))]


def identical_pool(n=80, dim=6):
    torch.manual_seed(0)
    x = torch.randn(1, dim).repeat(n, 1)
    model = nn.Sequential(nn.Linear(dim, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    return x, model


def context(x, model, labeled):
    y = np.arange(len(x)) % 4
    unl = np.setdiff1d(np.arange(len(x)), labeled)
    return RoundContext(round=ROUND, seed=SEED, model=model, device=torch.device("cpu"), pool=x, num_classes=4,
                        labeled_ids=labeled, labeled_targets=y[labeled], unlabeled_ids=unl, candidate_ids=unl,
                        rng=numpy_rng(SEED, ROUND, "strategy"),
                        torch_generator=torch_generator(SEED, ROUND, "strategy"),
                        oracle=lambda ids: y[np.asarray(ids)], kernel_fn=lambda m, a, b=None: pntk(m, a, b))


def test_tie_keys_are_a_seeded_order_of_ids():
    ids = np.arange(1000)
    keys = tie_keys(SEED, ROUND, ids)
    assert keys.dtype == np.uint64 and len(np.unique(keys)) == len(ids)
    assert np.array_equal(keys[[7, 3]], tie_keys(SEED, ROUND, np.array([7, 3])))  # a function of the id
    assert not np.array_equal(np.argsort(keys), np.argsort(tie_keys(SEED, ROUND + 1, ids)))
    assert not np.array_equal(np.argsort(keys), np.argsort(tie_keys(SEED + 1, ROUND, ids)))
    # Each of 10 ids comes first about equally often over seeds (a fair order, not id order).
    first = np.bincount([np.argmin(tie_keys(s, 0, np.arange(10))) for s in range(4000)], minlength=10)
    assert first.min() > 320 and first.max() < 480, first
    # Ranking: score first, then key, NaN last.
    s = np.array([1.0, np.nan, 2.0, 1.0, 1.0])
    order = rank_descending(s, tie_keys(0, 0, np.arange(5)))
    assert order[0] == 2 and order[-1] == 1
    assert list(order[1:4]) == list(seeded_order_of([0, 3, 4], 0, 0))


def seeded_order_of(ids, seed, rnd):
    ids = np.asarray(ids)
    return ids[np.argsort(tie_keys(seed, rnd, ids))]


@pytest.mark.parametrize("name, options", [("margin", {}), ("entropy", {}), ("least_confidence", {}),
                                           ("coreset", {}), ("badge", {}), ("lookahead", {"acquisition": "flip"}),
                                           ("lookahead", {"acquisition": "flip", "mode": "sequential"}),
                                           ("lookahead", {"acquisition": "flip", "selection": "kmeanspp"})])
def test_every_strategy_breaks_ties_in_the_seeded_order(name, options):
    x, model = identical_pool()
    labeled = np.arange(0, 80, 10)
    ctx = context(x, model, labeled)
    picked = load_strategy(name, options).select(ctx, K)
    cand = ctx.candidate_ids
    if name == "lookahead":
        assert ctx.info["score_max"] == ctx.info["score_mean"]  # every candidate tied
    assert sorted(picked.tolist()) == sorted(seeded_order(cand)[:K].tolist())
    assert sorted(picked.tolist()) != cand[:K].tolist()  # not the lowest ids


def test_ties_do_not_depend_on_tiles_or_shards():
    x, model = identical_pool(200)
    ids = np.arange(3, 200, 2)
    picks = []
    executors = [LocalExecutor(x, tile_size=TILE), *(ScatteredExecutor(x, s, s) for s in (2, 3, 5))]
    for ex in executors:
        ex.begin_round(ROUND, SEED, model)
        picks.append((top_scores(ex, "margin", ids, K)["ids"].tolist(),
                      badge_kmeanspp(ex, ids, K, np.random.default_rng(1)).tolist(),
                      k_center(ex, ids, torch.zeros(0, 16), K).tolist()))
    assert all(p == picks[0] for p in picks[1:])
    assert picks[0][0] == seeded_order(ids)[:K].tolist()
    assert picks[0][2] == seeded_order(ids)[:K].tolist()


def test_lookahead_batch_rules_take_keys():
    scores = np.array([0.5, 0.2, 0.5, 0.5, 0.1])
    keys = tie_keys(SEED, ROUND, np.array([40, 41, 42, 43, 44]))
    tied = np.array([0, 2, 3])
    assert top_k_positions(scores, 2).tolist() == [0, 2]  # no keys: positions (the library's default)
    assert top_k_positions(scores, 3, keys).tolist() == tied[np.argsort(keys[tied])].tolist()
    gram = np.zeros((4, 4))  # every point at distance 0: after the first, the lowest key
    got = kmeanspp_seeding(gram, 3, 0, np.random.default_rng(0), keys[:4])
    rest = np.array([1, 2, 3])
    assert got.tolist() == [0, *rest[np.argsort(keys[rest])][:2].tolist()]
