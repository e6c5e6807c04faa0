"""BALD, BADGE and Core-Set: known answers on constructed pools, brute-force references,
tile-size invariance, and no side effects on the model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from brute_force import k_center_explicit, kmeanspp_explicit
from torch import nn

from strategies import REGISTRY
from strategies.badge import BadgeSampling
from strategies.bald import BALDSampling, bald_from_samples
from strategies.coreset import CoresetSampling


class _Table(nn.Module):
    """Pool row = [features | logits]: the last Linear (all zeros) reads the features, the
    logits pass through, so a real RoundContext sees exactly the given probs and features."""

    def __init__(self, h: int, o: int):
        super().__init__()
        self.h = h
        self.head = nn.Linear(h, o)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        return self.head(x[:, :self.h]) + x[:, self.h:]


def fake_ctx(ids, *, probs=None, feats=None, labeled_ids=(), model=None, inputs=None, seed=0, tile_size=512):
    """A real RoundContext on a tiny pool (rows addressed by global id), with a local executor
    of ``tile_size``. Without ``model``, the pool holds ``feats`` and log ``probs``."""
    from entk_al.executor import LocalExecutor
    from entk_al.round.context import RoundContext

    ids = np.asarray(ids, dtype=np.int64)
    if model is None:
        f = torch.as_tensor(np.asarray(feats), dtype=torch.float32)
        n = len(f)
        p = torch.full((n, 2), 0.5, dtype=torch.float64) if probs is None else torch.as_tensor(probs).double()
        x = torch.cat([f, p.log().float()], dim=1)
        model = _Table(f.shape[1], p.shape[1])
    else:
        x = torch.as_tensor(np.asarray(inputs if inputs is not None else feats), dtype=torch.float32)
    o = model(x[:1]).shape[1]
    lab = np.asarray(labeled_ids, dtype=np.int64)
    ex = LocalExecutor(x, tile_size=tile_size)
    ex.begin_round(0, seed, model)
    return RoundContext(round=0, seed=seed, model=model, device=torch.device("cpu"), pool=x, num_classes=o,
                        labeled_ids=lab, labeled_targets=np.zeros(len(lab), dtype=np.int64), unlabeled_ids=ids,
                        candidate_ids=ids, rng=np.random.default_rng(seed),
                        torch_generator=torch.Generator().manual_seed(seed), oracle=lambda i: None,
                        kernel_fn=lambda *a, **k: None, executor=ex)


def _bald_scores(ctx, samples, dropout):
    """Every candidate's BALD score (feature dropout), by id, from the executor's tiles."""
    from entk_al.scans.outputs import top_scores

    got = top_scores(ctx.executor, "bald", ctx.candidate_ids, len(ctx.candidate_ids), samples=samples,
                     dropout=dropout, model_dropout=False)
    return torch.from_numpy(got["scores"][np.argsort(got["ids"])])


def test_registered():
    assert {"bald", "badge", "coreset"} <= set(REGISTRY)


# -- BADGE ----------------------------------------------------------------------------------
def test_badge_known_answer_duplicates_then_the_odd_one():
    # Rows 0-2 are the same gradient embedding and the largest; row 3 differs. k-means++ must
    # take the first of the largest (row 0), then row 3: every other row has D² = 0.
    probs = [[0.2, 0.8], [0.2, 0.8], [0.2, 0.8], [0.9, 0.1]]
    feats = [[3.0, 0.0], [3.0, 0.0], [3.0, 0.0], [0.0, 1.0]]
    ctx = fake_ctx([0, 1, 2, 3], probs=probs, feats=feats)
    assert BadgeSampling().select(ctx, 2).tolist() == [0, 3]


def test_ignored_chunk_size_options_warn_and_change_nothing():
    """badge's and bald's chunk_size are accepted for old configs, ignored, and slated for removal."""
    probs = [[0.2, 0.8], [0.2, 0.8], [0.2, 0.8], [0.9, 0.1]]
    feats = [[3.0, 0.0], [3.0, 0.0], [3.0, 0.0], [0.0, 1.0]]
    with pytest.warns(FutureWarning, match="badge option 'chunk_size'.*removed in 0.3"):
        badge = BadgeSampling(chunk_size=7)
    assert badge.select(fake_ctx([0, 1, 2, 3], probs=probs, feats=feats), 2).tolist() == [0, 3]
    with pytest.warns(FutureWarning, match="bald option 'chunk_size'.*removed in 0.3"):
        bald = BALDSampling(samples=5, chunk_size=7)
    assert vars(bald) == vars(BALDSampling(samples=5))


def test_badge_gradient_embedding_norm_picks_first():
    # ‖g‖ = ‖p − e_ŷ‖·‖h‖: row 1 is the least confident with the same h, so it comes first.
    probs = [[0.99, 0.01], [0.55, 0.45], [0.8, 0.2]]
    feats = [[1.0, 1.0]] * 3
    assert BadgeSampling().select(fake_ctx([0, 1, 2], probs=probs, feats=feats), 1).tolist() == [1]


@pytest.mark.parametrize("tile", [1, 7, 512])
def test_badge_on_any_tiles_matches_explicit_embeddings(tile):
    """The tiled seeding (one tile, tiles of 7, tiles of 1) against k-means++ on the explicit
    gradient embeddings g = (p − e_ŷ) ⊗ h, with the same generator."""
    gen = np.random.default_rng(3)
    n, o, h = 120, 5, 6
    p = gen.dirichlet(np.ones(o), size=n)
    feats = gen.normal(size=(n, h)).astype(np.float32)
    ctx = fake_ctx(np.arange(n), probs=p, feats=feats, seed=9, tile_size=tile)
    p32 = torch.softmax(torch.from_numpy(p).log().float(), dim=1).double().numpy()  # what the model outputs
    a = p32 - np.eye(o)[p32.argmax(1)]
    g = np.einsum("no,nh->noh", a, feats.astype(np.float64)).reshape(n, o * h)
    got = BadgeSampling().select(ctx, 12)
    assert got.tolist() == kmeanspp_explicit(g, 12, np.random.default_rng(9))
    assert len(set(got.tolist())) == 12


def test_kmeanspp_d2_sampling_frequencies():
    # Points 4, 3, 2, 1 on a line, the first center row 0: D² to it is 1, 4, 9 for rows 1..3,
    # so the second pick is row j with probability D²_j / 14 (the seeding BADGE's tiles share).
    from entk_al.lookahead.batch import kmeanspp_seeding

    x = np.array([[4.0], [3.0], [2.0], [1.0]])
    rng = np.random.default_rng(0)
    picks = [int(kmeanspp_seeding(x @ x.T, 2, 0, rng)[1]) for _ in range(4000)]
    freq = np.bincount(picks, minlength=4) / len(picks)
    assert freq[0] == 0
    assert np.allclose(freq[1:], [1 / 14, 4 / 14, 9 / 14], atol=0.025)


# -- Core-Set ---------------------------------------------------------------------------------
def test_coreset_known_answer_on_a_line():
    # Labeled at 0; candidates at 1, 2, 10, 11. Farthest from {0} is 11; then distances to
    # {0, 11} are 1, 2, 1 -> 2.
    feats = [[0.0], [1.0], [2.0], [10.0], [11.0]]
    ctx = fake_ctx([1, 2, 3, 4], feats=feats, labeled_ids=[0])
    assert CoresetSampling().select(ctx, 2).tolist() == [4, 2]


@pytest.mark.parametrize("chunk,tile", [(1, 512), (13, 7), (100_000, 16)])
def test_coreset_on_any_tiles_matches_explicit_distance_matrix(chunk, tile):
    gen = np.random.default_rng(5)
    pool = gen.normal(size=(180, 8)).astype(np.float32)  # rows 0..29: the labeled centers
    ctx = fake_ctx(np.arange(30, 180), feats=pool, labeled_ids=np.arange(30), tile_size=tile)
    got = CoresetSampling(chunk_size=chunk).select(ctx, 20)
    pool = pool.astype(np.float64)
    assert (got - 30).tolist() == k_center_explicit(pool[30:], pool[:30], 20)


def test_coreset_without_labeled_set_starts_far_from_mean():
    from entk_al.scans.diversity import k_center

    ctx = fake_ctx([0, 1, 2, 3], feats=[[0.0], [0.1], [-0.1], [5.0]])
    assert k_center(ctx.executor, ctx.candidate_ids, torch.empty(0, 1), 1).tolist() == [3]


# -- BALD ---------------------------------------------------------------------------------------
def test_bald_hand_values():
    # Two confident samples that disagree: H[mean] = ln 2, mean H = 0 -> ln 2.
    probs = torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.5, 0.5]]])
    got = bald_from_samples(probs)
    assert got[0].item() == pytest.approx(math.log(2))
    assert got[1].item() == pytest.approx(0.0, abs=1e-12)  # agreeing samples: no information


def test_bald_hand_value_partial_disagreement():
    p1, p2 = np.array([0.9, 0.1]), np.array([0.3, 0.7])
    ent = lambda p: -(p * np.log(p)).sum()
    expected = ent((p1 + p2) / 2) - (ent(p1) + ent(p2)) / 2
    got = bald_from_samples(torch.tensor(np.stack([[p1], [p2]])))
    assert got[0].item() == pytest.approx(expected, rel=1e-12)


def _readout_model(w, b):
    model = nn.Sequential(nn.Identity(), nn.Linear(w.shape[1], w.shape[0]))
    with torch.no_grad():
        model[1].weight.copy_(torch.as_tensor(w))
        model[1].bias.copy_(torch.as_tensor(b))
    return model


def test_bald_picks_the_point_dropout_can_flip():
    # Readout logits = h (identity weights). Row 0: h = 0, dropout cannot change anything ->
    # BALD 0. Row 1: strongly one class in every sample -> ≈ 0. Row 2: two balanced features,
    # dropping either flips the prediction -> highest BALD.
    model = _readout_model(np.eye(2, dtype=np.float32), np.zeros(2, dtype=np.float32))
    feats = [[0.0, 0.0], [30.0, 0.0], [4.0, 4.0]]
    ctx = fake_ctx([0, 1, 2], feats=feats, model=model)
    assert BALDSampling(samples=50, dropout=0.5).select(ctx, 1).tolist() == [2]
    assert ctx.info["dropout_site"] == "penultimate"


def test_bald_zero_dropout_scores_zero():
    gen = np.random.default_rng(0)
    model = _readout_model(gen.normal(size=(3, 4)).astype(np.float32), np.zeros(3, dtype=np.float32))
    ctx = fake_ctx(np.arange(10), feats=gen.normal(size=(10, 4)), model=model)
    scores = _bald_scores(ctx, 5, 0.0)
    assert torch.allclose(scores, torch.zeros(10, dtype=torch.float64), atol=1e-12)


def test_bald_masks_come_from_each_tiles_own_stream():
    # Ids 0-5 in tile 0 and 6-11 in tile 1 (tile size 6): the scores of ids 6-11 must equal
    # those of a pool holding only them, scored with tile 1's stream.
    gen = np.random.default_rng(1)
    model = _readout_model(gen.normal(size=(4, 6)).astype(np.float32), gen.normal(size=4).astype(np.float32))
    feats = gen.normal(size=(12, 6))
    both = _bald_scores(fake_ctx(np.arange(12), feats=feats, model=model, seed=4, tile_size=6), 8, 0.5)
    second = _bald_scores(fake_ctx(np.arange(6, 12), feats=feats, model=model, seed=4, tile_size=6), 8, 0.5)
    assert torch.equal(both[6:], second)
    first = _bald_scores(fake_ctx(np.arange(6), feats=feats, model=model, seed=4, tile_size=6), 8, 0.5)
    assert torch.equal(both[:6], first)
    assert not torch.equal(both[:6], both[6:])  # different tiles, different masks


def test_bald_feature_dropout_matches_manual_mc_reference():
    from entk_al.seeding import torch_generator

    gen = np.random.default_rng(2)
    w, b = gen.normal(size=(3, 5)).astype(np.float32), gen.normal(size=3).astype(np.float32)
    feats = torch.tensor(gen.normal(size=(6, 5)), dtype=torch.float32)
    ctx = fake_ctx(np.arange(6), feats=feats, model=_readout_model(w, b), seed=11)
    got = _bald_scores(ctx, 4, 0.3)
    # Reference: one sample at a time, with the documented (N, T, H) mask layout of tile 0's stream.
    u = torch.rand((6, 4, 5), generator=torch_generator(11, 0, "bald-masks-tile0"))
    ref = []
    for i in range(6):
        ps = [F.softmax(torch.tensor(w) @ (feats[i] * (u[i, t] < 0.7) / 0.7) + torch.tensor(b), 0)
              for t in range(4)]
        ref.append(bald_from_samples(torch.stack(ps)[:, None, :])[0])
    assert torch.allclose(got, torch.stack(ref), atol=1e-6)


def test_bald_model_dropout_keeps_weights_and_modes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(20, 4)
    global_state = torch.get_rng_state()
    pick1 = BALDSampling(samples=6).select(fake_ctx(np.arange(20), model=model, inputs=x, seed=3), 5)
    assert torch.equal(torch.get_rng_state(), global_state)  # global RNG untouched
    assert all(not m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    pick2 = BALDSampling(samples=6).select(fake_ctx(np.arange(20), model=model, inputs=x, seed=3), 5)
    assert pick1.tolist() == pick2.tolist()  # seeded by the strategy's generator


@pytest.mark.parametrize("name", ["bald", "badge", "coreset"])
def test_strategies_in_a_real_loop_are_reproducible(tmp_path, name):
    from entk_al.run.config import RunConfig
    from entk_al.run.loop import run_experiment

    cfg = RunConfig(strategy=name, dataset="digits", width=16, initial=10, query=5, rounds=2, epochs=1,
                    min_steps=5, device="cpu")
    a = run_experiment(cfg, tmp_path / "a")
    b = run_experiment(cfg, tmp_path / "b")
    assert [r["queried"] for r in a] == [r["queried"] for r in b]
    assert all(len(set(r["queried"])) == 5 for r in a[:-1])
