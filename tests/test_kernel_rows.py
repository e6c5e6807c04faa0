"""Kernel blocks through the round context: each input's features once per round and shard.

References: the float64 torch.func per-sample-gradient pNTK (``pntk(..., method="jacobian")``)
for the values; counted feature passes (no timing) for the cost: a call's feature work must be
that of one ``pntk`` call on the same inputs, not one pass over the columns per row tile (the
regression of issue 23: 68x on the CNN protocol).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_executor import ScatteredExecutor
from torch import nn

from entk_al.executor import LocalExecutor
from entk_al.ntk import PNTK, FeatureKernel, pntk
from entk_al.ntk.features import PreparedKernel
from entk_al.round.context import RoundContext
from entk_al.scans.kernel_rows import kernel_rows
from entk_al.seeding import numpy_rng, torch_generator

TILE = 16


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 5)).double().eval()


def _mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 5)).double().eval()


@pytest.fixture(params=["mlp", "cnn"])
def setting(request):
    model = _mlp() if request.param == "mlp" else _cnn()
    for m in model.modules():  # non-trivial running statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(400, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return model, x


class Counter:
    """Counts the samples whose features the prepared kernels compute (monkeypatched)."""

    def __init__(self, monkeypatch):
        self.samples = 0
        orig = PreparedKernel.features

        def counted(prep, x):
            self.samples += len(x)
            return orig(prep, x)

        monkeypatch.setattr(PreparedKernel, "features", counted)


def _ctx(model, x, executor, labeled, cand) -> RoundContext:
    unl = np.setdiff1d(np.arange(len(x)), labeled)
    y = np.arange(len(x)) % 5
    return RoundContext(round=1, seed=3, model=model, device=torch.device("cpu"), pool=x, num_classes=5,
                        labeled_ids=labeled, labeled_targets=y[labeled], unlabeled_ids=unl, candidate_ids=cand,
                        rng=numpy_rng(3, 1, "strategy"), torch_generator=torch_generator(3, 1, "strategy"),
                        oracle=lambda ids: y[ids], executor=executor)


def _local(x, model):
    ex = LocalExecutor(x, tile_size=TILE)
    ex.begin_round(1, 3, model)
    return ex


def test_context_kernel_equals_brute_force_and_mirrors_symmetric_calls(setting):
    model, x = setting
    rng = np.random.default_rng(0)
    ids = rng.choice(len(x), 90, replace=False)  # unsorted, spread over many tiles
    cols = rng.choice(len(x), 37, replace=False)
    ctx = _ctx(model, x, _local(x, model), np.sort(ids[:10]), np.sort(ids[10:]))
    ref = pntk(model, x[ids], method="jacobian")
    k = ctx.kernel(ids)
    assert torch.allclose(k, ref, rtol=1e-10, atol=1e-10 * ref.abs().max())
    assert torch.equal(k, k.T)  # mirrored, not recomputed: exactly symmetric
    k2 = ctx.kernel(ids, cols)
    ref2 = pntk(model, x[ids], x[cols], method="jacobian")
    assert torch.allclose(k2, ref2, rtol=1e-10, atol=1e-10 * ref2.abs().max())


def test_columns_are_featurized_once_per_call_not_once_per_row_tile(setting, monkeypatch):
    model, x = setting
    count = Counter(monkeypatch)
    rng = np.random.default_rng(1)
    ids = rng.choice(len(x), 120, replace=False)  # ~25 row tiles
    cols = rng.choice(len(x), 60, replace=False)
    ctx = _ctx(model, x, _local(x, model), np.sort(ids[:10]), np.sort(ids[10:]))
    ctx.kernel(ids)
    assert count.samples == len(ids)  # a symmetric call: each id once
    count.samples = 0
    ctx.kernel(ids[:50], cols)
    # rows once each, columns once (a row tile's pieces equal a column piece only when both
    # hold the same ids of that tile); the old path featurized the 60 columns ~25 times
    assert count.samples <= 50 + 60
    count.samples = 0
    ctx.kernel(ids[:50], cols)  # cached for the round
    assert count.samples == 0


def test_kernel_blocks_do_not_depend_on_where_tiles_run(setting):
    model, x = setting
    rng = np.random.default_rng(4)
    ids = rng.choice(len(x), 70, replace=False)
    cols = rng.choice(len(x), 33, replace=False)
    probe = x[:4]
    got = []
    for ex in [_local(x, model)] + [ScatteredExecutor(x, s, seed) for seed, s in ((0, 2), (1, 3))]:
        ex.begin_round(1, 3, model)
        got.append((kernel_rows(ex, PNTK, ids, x[ids], probe=probe),
                    kernel_rows(ex, PNTK, ids, x[torch.from_numpy(cols)], col_ids=cols, probe=probe)))
    for sym, cross in got[1:]:
        assert torch.equal(sym, got[0][0]) and torch.equal(cross, got[0][1])


def test_scattered_shards_featurize_columns_once_each(setting, monkeypatch):
    model, x = setting
    count = Counter(monkeypatch)
    rng = np.random.default_rng(5)
    ids = rng.choice(len(x), 100, replace=False)
    cols = rng.choice(len(x), 40, replace=False)
    ex = ScatteredExecutor(x, 3, 0)
    ex.begin_round(1, 3, model)
    kernel_rows(ex, PNTK, ids, x[torch.from_numpy(cols)], col_ids=cols, probe=x[:4])
    # the scattered executor hands each shard one tile per call, so a shard's store must keep
    # the columns between calls: each shard featurizes them at most once
    assert count.samples <= 100 + 3 * 40


def test_lookahead_select_featurizes_each_input_once_and_matches_the_per_tile_path(monkeypatch):
    from strategies.lookahead import LookaheadSampling

    from fakes import digits_round

    r = digits_round(n_labeled=30, n_candidates=150)
    count = Counter(monkeypatch)
    picks, samples = [], []
    # the per-tile path recomputes the columns in each of its tiles: keep them few there
    for fn, tile in ((PNTK, TILE), (lambda m, a, b=None: pntk(m, a, b), 512)):
        ctx = r.context(kernel_fn=fn, executor=LocalExecutor(r.x_pool, tile_size=tile))
        count.samples = 0
        picks.append(LookaheadSampling().select(ctx, 10))
        samples.append(count.samples)
    assert np.array_equal(picks[0], picks[1])
    # K = k(L, L), A = k(U, L), B = k(U, cand) with U = cand: each labeled id and each candidate once
    assert samples[0] == 30 + 150


def test_feature_kernel_refuses_kinds_without_one_matrix():
    with pytest.raises(ValueError, match="pntk or first_logit"):
        FeatureKernel("entk")
    with pytest.raises(ValueError, match="unknown method"):
        FeatureKernel("pntk", "fast")


def test_feature_kernel_works_inside_no_grad(setting):
    model, x = setting
    prep = PNTK.prepare(model, x[:4])
    with torch.no_grad():
        f = prep.features(x[:20])
        k = prep.block(f, f)
    assert not k.requires_grad
    assert torch.allclose(k, pntk(model, x[:20], method="jacobian"), rtol=1e-10, atol=1e-10)


def test_nonfinite_blame_rule_on_known_blocks():
    """The one rule of the context's kernels and the look-ahead's B on the shards."""
    from entk_al.scans.kernel_rows import nonfinite_blame

    sym = np.zeros((3, 3), dtype=bool)
    sym[1, :] = sym[:, 1] = True  # id 1's features overflow: its row, column and diagonal
    sym[0, 2] = True  # one stray entry, diagonal fine: its row is blamed
    rows, cols = nonfinite_blame(sym, symmetric=True)
    assert rows.tolist() == [True, True, False] and cols.tolist() == [False, True, False]
    block = np.zeros((3, 4), dtype=bool)
    block[:, 2] = True  # a column bad in every row: the column's id
    block[0, 0] = True  # a stray entry: the row's id
    rows, cols = nonfinite_blame(block)
    assert rows.tolist() == [True, False, False] and cols.tolist() == [False, False, True, False]
    rows, cols = nonfinite_blame(np.ones((2, 3), dtype=bool))
    assert rows.all() and cols.all()
    rows, cols = nonfinite_blame(np.zeros((2, 0), dtype=bool))
    assert rows.tolist() == [False, False] and cols.size == 0
