"""The ray executor selects exactly the ids the local executor does, survives a killed shard
actor, and a run resumed under the other executor ends with the same rounds.jsonl.

One local Ray cluster (``ray.init(num_cpus=2)``) serves the whole module.
"""

from __future__ import annotations

import json

import pytest

ray = pytest.importorskip("ray")

from entk_al.config import RunConfig  # noqa: E402
from entk_al.loop import ActiveLearningLoop, run_experiment  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _cfg(strategy: str, executor: str, rounds: int = 2, **options) -> RunConfig:
    return RunConfig(strategy=strategy, strategy_options=options, dataset="digits", width=16, initial=10, query=5,
                     rounds=rounds, subset=800, epochs=1, min_steps=5, device="cpu", executor=executor, workers=2)


def _queried(records):
    return [r["queried"] for r in records]


@pytest.mark.parametrize("strategy,options", [
    ("entropy", {}), ("margin", {}), ("least_confidence", {}), ("badge", {}), ("coreset", {}), ("bald", {}),
    ("lookahead", {}),
    ("lookahead", {"mode": "sequential", "dense_max": 100}),  # streamed B columns, folds
    ("lookahead", {"mode": "hybrid", "hybrid_size": 2, "acquisition": "flip"}),
    ("lookahead", {"prefilter": "knn", "num_candidates": 40, "eval_size": 200, "neighbours": 5}),
])
def test_ray_selects_what_local_selects(cluster, tmp_path, strategy, options):
    local = run_experiment(_cfg(strategy, "local", **options), tmp_path / "local")
    remote = run_experiment(_cfg(strategy, "ray", **options), tmp_path / "ray")
    assert _queried(remote) == _queried(local)
    assert all(len(q) == 5 for q in _queried(local)[:-1])


def test_killed_shard_actor_is_revived_and_the_round_is_unchanged(cluster, tmp_path):
    local = run_experiment(_cfg("badge", "local"), tmp_path / "local")
    loop = ActiveLearningLoop(_cfg("badge", "ray"), tmp_path / "ray")
    killed, executors = [], []
    original_select = loop.select

    def select(r, model, pool):
        ex = loop.executor
        executors.append(ex)

        def kill(n_maps: int) -> None:
            # Mid-round: after the outputs and BADGE's first steps, kill shard 0 once.
            if r == 1 and n_maps == 4 and not killed:
                killed.append(ex.actors[0])
                ray.kill(ex.actors[0])

        ex.before_map = kill
        return original_select(r, model, pool)

    loop.select = select
    remote = loop.run()
    assert killed, "the hook never fired"
    assert executors[-1].restarts == 1  # one new actor for shard 0, the journal replayed into it
    assert _queried(remote) == _queried(local)


def test_resume_under_another_executor_ends_with_the_same_log(cluster, tmp_path):
    whole = run_experiment(_cfg("coreset", "local", rounds=3), tmp_path / "whole")
    run_experiment(_cfg("coreset", "local", rounds=1), tmp_path / "split")
    resumed = ActiveLearningLoop(_cfg("coreset", "ray", rounds=3), tmp_path / "split").run(resume=True)
    assert _queried(resumed) == _queried(whole)
    strip = lambda rec: {k: v for k, v in rec.items() if not k.endswith("seconds")}  # noqa: E731
    logs = [[strip(json.loads(line)) for line in (tmp_path / d / "rounds.jsonl").read_text().splitlines()]
            for d in ("whole", "split")]
    assert logs[0] == logs[1]
