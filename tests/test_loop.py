"""Loop invariants, determinism and warm/scratch retraining on digits with tiny budgets."""

import json

import numpy as np
import pytest

from entk_al.errors import ConfigError, StrategyError
from entk_al.run.config import RunConfig
from entk_al.run.labeled import PoolState, validate_selection
from entk_al.run.loop import ActiveLearningLoop


def tiny(**kw):
    base = dict(strategy="entropy", initial=10, query=5, rounds=3, subset=200, min_steps=20, epochs=1, seed=0)
    base.update(kw)
    return RunConfig(**base)


def read(out):
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


def test_invariants_and_outputs(tmp_path):
    from entk_al.report.curve import plot_curve

    loop = ActiveLearningLoop(tiny(), tmp_path, curve_writer=plot_curve)
    records = loop.run()
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    assert [r["n_labeled"] for r in records] == [10, 15, 20, 25]
    queried = [i for r in records for i in r["queried"]]
    assert len(queried) == 15 and len(set(queried)) == 15
    assert all(len(r["queried"]) == 5 for r in records[:-1]) and records[-1]["queried"] == []
    ckpt_pool = loop.load_state().pool
    assert set(queried).isdisjoint(np.flatnonzero(ckpt_pool.labeled_round == PoolState.INITIAL))
    for r in records[:-1]:
        assert (ckpt_pool.labeled_round[r["queried"]] == r["round"]).all()
    # labels recorded are the oracle's (ground truth)
    lab = ckpt_pool.labeled_ids()
    assert (ckpt_pool.labels[lab] == loop.data.y_train.numpy()[lab]).all()
    for name in ("config.json", "rounds.jsonl", "curve.png", "summary.json", "checkpoint.pt"):
        assert (tmp_path / name).is_file()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["strategy"] == "entropy"
    # the local executor runs no Ray workers, so none are recorded
    assert config["executor"] == "local" and config["workers"] is None and config["cpus_per_worker"] is None
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["evaluations"] == 4  # --rounds 3: round 0 + 3 query rounds
    assert summary["aubc"] == pytest.approx(np.mean([r["test_accuracy"] for r in records]))
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


@pytest.mark.parametrize("strategy", ["random", "lookahead"])
def test_same_seed_same_queries(tmp_path, strategy):
    a = ActiveLearningLoop(tiny(strategy=strategy, seed=3), tmp_path / "a").run()
    b = ActiveLearningLoop(tiny(strategy=strategy, seed=3), tmp_path / "b").run()
    c = ActiveLearningLoop(tiny(strategy=strategy, seed=4), tmp_path / "c").run()
    assert [r["queried"] for r in a] == [r["queried"] for r in b]
    assert [r["test_accuracy"] for r in a] == [r["test_accuracy"] for r in b]
    assert [r["queried"] for r in a] != [r["queried"] for r in c]


def test_candidates_come_from_subset_and_scratch_retrain(tmp_path):
    records = ActiveLearningLoop(tiny(strategy="random", subset=30, retrain="scratch"), tmp_path).run()
    assert all(len(r["queried"]) == 5 for r in records[:-1])


def test_budget_larger_than_pool_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="exceeds the pool"):
        ActiveLearningLoop(tiny(initial=1000, query=100, rounds=10), tmp_path)


class Bad:
    name = "bad"

    def __init__(self, mode):
        self.mode = mode

    def select(self, ctx, k):
        if self.mode == "dup":
            return np.repeat(ctx.candidate_ids[:1], k)
        if self.mode == "labeled":
            return ctx.labeled_ids[:k]
        if self.mode == "count":
            return ctx.candidate_ids[:k + 1]
        if self.mode == "ask-other":
            ctx.oracle(ctx.candidate_ids[k:k + 1])
            return ctx.candidate_ids[:k]
        return ctx.candidate_ids[:k].astype(float) + 0.5


@pytest.mark.parametrize("mode,match", [("dup", "duplicate"), ("labeled", "already-labeled"), ("count", "returned 6"),
                                        ("ask-other", "did not select"), ("float", "integer")])
def test_bad_strategy_answers_name_the_strategy(tmp_path, mode, match):
    loop = ActiveLearningLoop(tiny(), tmp_path, strategy=Bad(mode))
    with pytest.raises(StrategyError, match=match) as err:
        loop.run()
    assert "'bad'" in str(err.value)


def test_validate_selection_accepts_good_ids():
    pool = PoolState(10)
    pool.add(np.array([0, 1]), np.array([1, 1]), PoolState.INITIAL)
    assert validate_selection("s", [5, 2], 2, pool).tolist() == [5, 2]
    with pytest.raises(AssertionError):
        pool.add(np.array([1]), np.array([0]), 0)  # invariant: no id labeled twice


def test_oracle_answers_mid_selection_are_reused(tmp_path):
    calls = []

    class Seq:
        name = "seq"

        def select(self, ctx, k):
            got = ctx.oracle(ctx.candidate_ids[:1])
            calls.append(int(got[0]))
            return ctx.candidate_ids[:k]

    loop = ActiveLearningLoop(tiny(rounds=1), tmp_path, strategy=Seq())
    records = loop.run()
    first = records[0]["queried"][0]
    assert calls == [int(loop.data.y_train[first])]
