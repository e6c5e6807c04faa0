"""The tile plan: scattered tiles and shuffled completion give bit-identical results (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from entk_al.executor import LocalExecutor, TilePlan
from entk_al.executor.base import Executor
from entk_al.executor.shard import Shard
from entk_al.scans.diversity import badge_kmeanspp, k_center
from entk_al.scans.outputs import outputs_on_shards, top_scores

TILE = 16


class ScatteredExecutor(Executor):
    """Tiles on random shards, each shard's jobs run in shuffled order, shards answer in
    shuffled order: what a cluster may do. Every shard holds the whole pool (id_start 0)."""

    name = "scattered"

    def __init__(self, x: torch.Tensor, shards: int, seed: int):
        self.plan = TilePlan(len(x), 1, TILE)
        self.rng = np.random.default_rng(seed)
        self.shards = [Shard(x, 0, TILE) for _ in range(shards)]
        self.owner = self.rng.integers(shards, size=self.plan.num_tiles)

    def begin_round(self, round_idx, seed, model):
        for s in self.shards:
            s.begin_round(round_idx, seed, model)

    def map(self, task, jobs, shared=None):
        out = {}
        for s in self.rng.permutation(len(self.shards)):
            mine = [(t, p) for t, p in jobs.items() if self.owner[t] == s]
            for i in self.rng.permutation(len(mine)):
                out.update(self.shards[s].run(task, [mine[i]], shared))
        return dict(sorted(out.items(), key=lambda kv: self.rng.random()))


@pytest.fixture(scope="module")
def pool():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 12, generator=gen)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 5))
    torch.manual_seed(1)
    for p in model.parameters():
        nn.init.normal_(p, std=0.5)
    return x, model.eval()


def _executors(x, model):
    local = LocalExecutor(x, tile_size=TILE)
    local.begin_round(2, 7, model)
    out = [local]
    for seed, shards in ((0, 2), (1, 3), (2, 5)):
        ex = ScatteredExecutor(x, shards, seed)
        ex.begin_round(2, 7, model)
        out.append(ex)
    return out


def test_tile_plan_shards_are_contiguous_and_cover_the_pool():
    plan = TilePlan(1000, 3, 64)
    assert plan.num_tiles == 16
    ranges = [plan.shard_ids(s) for s in range(3)]
    assert ranges == [(0, 384), (384, 704), (704, 1000)]
    assert [plan.owner(t) for t in (0, 5, 6, 10, 11, 15)] == [0, 0, 1, 1, 2, 2]
    ids = np.array([999, 3, 64, 5, 130])
    split = plan.split(ids)
    assert list(split) == [0, 1, 2, 15]
    assert [ids[p].tolist() for p in split.values()] == [[3, 5], [64], [130], [999]]
    assert TilePlan(10, 4, 8).shard_ids(3) == (0, 0)  # more shards than tiles: some own nothing
    with pytest.raises(ValueError):
        plan.split(np.array([1000]))


def test_scattered_tiles_give_bit_identical_scans(pool):
    x, model = pool
    ids = np.sort(np.random.default_rng(3).choice(len(x), 200, replace=False))
    results = []
    for ex in _executors(x, model):
        logits, feats = outputs_on_shards(ex, ids[::-1].copy())
        scores = {kind: top_scores(ex, kind, ids, 25) for kind in ("entropy", "margin", "least_confidence")}
        scores["bald"] = top_scores(ex, "bald", ids, 25, samples=6, dropout=0.4, model_dropout=False)
        results.append((logits, feats, scores))
    ref = results[0]
    for logits, feats, scores in results[1:]:
        assert torch.equal(logits, ref[0]) and torch.equal(feats, ref[1])
        for kind, got in scores.items():
            assert got["ids"].tolist() == ref[2][kind]["ids"].tolist()
            assert np.array_equal(got["scores"], ref[2][kind]["scores"])
            assert got["mean"] == ref[2][kind]["mean"]


def test_scattered_tiles_give_identical_badge_and_coreset(pool):
    x, model = pool
    ids = np.sort(np.random.default_rng(4).choice(len(x), 150, replace=False))
    labeled = np.setdiff1d(np.arange(len(x)), ids)[:20]
    picks = []
    for ex in _executors(x, model):
        centers = outputs_on_shards(ex, labeled)[1]
        picks.append((badge_kmeanspp(ex, ids, 12, np.random.default_rng(5)).tolist(),
                      k_center(ex, ids, centers, 12).tolist(),
                      k_center(ex, ids, centers[:0], 5).tolist()))
    assert all(p == picks[0] for p in picks[1:])


def test_tiled_badge_and_coreset_match_the_explicit_algorithms(pool):
    # The tiled draws walk per-tile running sums; the explicit reference one running sum.
    # Same picks (a boundary falling between the two roundings has probability ~1e-16).
    from brute_force import k_center_explicit, kmeanspp_explicit

    x, model = pool
    ids = np.sort(np.random.default_rng(6).choice(len(x), 120, replace=False))
    labeled = np.setdiff1d(np.arange(len(x)), ids)[:10]
    ex = _executors(x, model)[2]
    logits, feats = outputs_on_shards(ex, ids)
    p = torch.softmax(logits, dim=1).double()
    a = (p - torch.nn.functional.one_hot(p.argmax(1), p.shape[1]).double()).numpy()
    g = np.einsum("no,nh->noh", a, feats.double().numpy()).reshape(len(ids), -1)
    ref = ids[kmeanspp_explicit(g, 15, np.random.default_rng(8))]
    assert badge_kmeanspp(ex, ids, 15, np.random.default_rng(8)).tolist() == ref.tolist()
    centers = outputs_on_shards(ex, labeled)[1]
    want = k_center_explicit(feats.double().numpy(), centers.double().numpy(), 15)
    assert k_center(ex, ids, centers, 15).tolist() == ids[want].tolist()


def test_scattered_tiles_give_bit_identical_kernel_rows(pool):
    from entk_al.ntk import pntk
    from entk_al.scans.kernel_rows import kernel_rows

    x, model = pool
    rows = np.random.default_rng(9).choice(len(x), 70, replace=False)
    cols = x[torch.from_numpy(np.arange(0, 300, 7))]
    got = [kernel_rows(ex, pntk, rows, cols) for ex in _executors(x, model)]
    assert all(torch.equal(g, got[0]) for g in got[1:])
    ref = pntk(model, x[torch.from_numpy(rows)], cols)
    assert torch.allclose(got[0], ref, rtol=1e-5, atol=1e-6)


def test_badge_and_kcenter_refuse_bad_k(pool):
    x, model = pool
    ex = _executors(x, model)[0]
    with pytest.raises(ValueError, match="k must be"):
        badge_kmeanspp(ex, np.arange(5), 6, np.random.default_rng(0))
    with pytest.raises(ValueError, match="k must be"):
        k_center(ex, np.arange(5), torch.zeros(0, 32), 0)


def _numerics():
    b = torch.backends
    return (torch.get_num_threads(), b.cudnn.deterministic, b.cudnn.benchmark, b.cuda.matmul.allow_tf32,
            b.cudnn.allow_tf32)


def _numerics_task(shard, tile, payload, shared):
    return _numerics()


def test_local_executor_pins_the_actors_numerics_only_while_its_tasks_run(pool):
    """The Ray actor's settings (tile_numerics) hold in every local task and nowhere else."""
    x, model = pool
    before = _numerics()
    pinned = LocalExecutor(x, tile_size=TILE, threads=1)
    pinned.begin_round(0, 0, model)
    assert set(pinned.map(_numerics_task, {0: None, 3: None}).values()) == {(1, True, False, False, False)}
    assert _numerics() == before
    default = LocalExecutor(x, tile_size=TILE)
    default.begin_round(0, 0, model)
    assert default.map(_numerics_task, {0: None}) == {0: (before[0], True, False, False, False)}
    with pytest.raises(ValueError, match="threads"):
        LocalExecutor(x, threads=0)


def test_cpus_per_worker_is_the_local_executors_threads_only_when_given(pool):
    from entk_al.errors import ConfigError
    from entk_al.executor import make_executor
    from entk_al.run.config import RunConfig

    x, _ = pool
    assert make_executor("local", x, torch.device("cpu")).shard.threads is None  # the default run: unchanged
    assert make_executor("local", x, torch.device("cpu"), cpus_per_worker=2.7).shard.threads == 2
    assert make_executor("local", x, torch.device("cpu"), cpus_per_worker=0.5).shard.threads == 1  # as an actor
    assert RunConfig().cpus_per_worker is None and RunConfig(cpus_per_worker=3).cpus_per_worker == 3
    assert RunConfig(workers=4).workers is None  # the other Ray options stay unused under local
    with pytest.raises(ConfigError, match="--cpus-per-worker"):
        RunConfig(cpus_per_worker=0).validate()


def test_local_shards_hold_a_copy_of_the_model_as_ray_actors_do(pool):
    x, model = pool
    ex = LocalExecutor(x, tile_size=TILE)
    ex.begin_round(0, 0, model)
    assert ex.shard.model is not model
    assert all(torch.equal(a, b) for a, b in zip(ex.shard.model.state_dict().values(), model.state_dict().values()))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_gpu_shard_without_cuda_fails_instead_of_falling_back_to_the_cpu(pool):
    from entk_al.errors import ConfigError
    from entk_al.executor.ray_actor import ShardHost

    host = ShardHost(pool[0], TILE, 1, use_gpu=True)
    with pytest.raises(ConfigError, match="--gpus-per-worker: CUDA is not available"):
        host.ping()
    assert ShardHost(pool[0], TILE, 1, use_gpu=False).ping() == len(pool[0])
