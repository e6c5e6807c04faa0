"""The ray executor selects exactly the ids the local executor does, survives a killed shard
actor, and a run resumed under the other executor ends with the same rounds.jsonl.

One local Ray cluster (``ray.init(num_cpus=2, num_gpus=1)``: the GPU is only a resource Ray
hands out, so an actor can be given one on a machine without CUDA) serves the whole module.
"""

from __future__ import annotations

import json

import pytest

ray = pytest.importorskip("ray")

from entk_al.run.config import RunConfig  # noqa: E402
from entk_al.run.loop import ActiveLearningLoop, run_experiment  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_impossible_requests_fail_fast_in_one_line(capsys, tmp_path):
    """More workers/CPUs/GPUs than there are, or an address with nothing listening, stop the run
    in one line instead of leaving actors pending (or Ray retrying) forever."""
    import socket
    import time

    from clitools import cli

    from entk_al.errors import ConfigError
    from entk_al.executor.ray_executor import _check_resources, _probe

    for flags, needle in ((["--workers", "1000000000"], "needs 1e+09 CPUs"),
                          (["--gpus-per-worker", "1000"], "needs 2000 GPUs"),
                          (["--cpus-per-worker", "100000"], "needs 200000 CPUs")):
        code, _, err = cli(capsys, "run", "--executor", "ray", "--rounds", "1", "-q", "--out", tmp_path / "r", *flags)
        assert code == 2 and needle in err and err.count("\n") == 1, err
        assert not (tmp_path / "r" / "rounds.jsonl").exists()
    with pytest.raises(ConfigError, match="needs 3 GPUs, but the Ray cluster has 2"):
        _check_resources({"CPU": 8.0, "GPU": 2.0}, 3, 1.0, 1.0, "the Ray cluster")
    _check_resources({"CPU": 4.0}, 2, 2.0, 0.0, "the Ray cluster")  # exactly enough
    with socket.socket() as free:  # a port with nothing listening on it
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=f"127.0.0.1:{port}: cannot reach a Ray cluster"):
        _probe(f"127.0.0.1:{port}")
    assert time.perf_counter() - t0 < 30  # the probe's timeout, not Ray's endless retries


def test_an_actor_given_a_gpu_without_cuda_stops_like_local(cluster):
    """No silent fallback to the CPU: the local executor's --device cuda fails on a machine
    without CUDA, and so does a Ray actor given a GPU where torch has no CUDA."""
    import torch

    from entk_al.errors import ConfigError
    from entk_al.executor.ray_executor import RayExecutor

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    with pytest.raises(ConfigError, match=r"^--gpus-per-worker: CUDA is not available to the shard actor"):
        RayExecutor(torch.zeros(40, 3), workers=1, gpus_per_worker=1.0)


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
    ("ntk_bald", {}),  # the GP posterior's diag on the shards, Monte Carlo on the driver
    ("ntk_zmargin", {"batch": "greedy"}),  # label-free conditioning: one streamed column per pick
    ("ntk_epig", {"num_targets": 20, "batch": "greedy", "samples": 8}),  # covariance blocks at the targets
    ("max_herding", {}), ("max_herding", {"kernel": "embedding"}),
    ("uncertainty_herding", {}), ("uncertainty_herding", {"kernel": "embedding", "memory_budget_mb": 1}),
])
def test_ray_selects_what_local_selects(cluster, tmp_path, strategy, options):
    local = run_experiment(_cfg(strategy, "local", **options), tmp_path / "local")
    remote = run_experiment(_cfg(strategy, "ray", **options), tmp_path / "ray")
    assert _queried(remote) == _queried(local)
    assert all(len(q) == 5 for q in _queried(local)[:-1])


def test_stop_rules_measure_the_same_on_ray(cluster, tmp_path):
    """The predicted change of each batch (the posterior on the shards) and κ log alike."""
    local = ActiveLearningLoop(_cfg("margin", "local"), tmp_path / "local")
    local.cfg.stop, local.cfg.stop_set = "kappa:0.999,change:0.0001:9", 300
    remote = ActiveLearningLoop(_cfg("margin", "ray"), tmp_path / "ray")
    remote.cfg.stop, remote.cfg.stop_set = local.cfg.stop, 300
    from entk_al.run.stopping import StopMonitor

    for loop in (local, remote):
        loop.stopper = StopMonitor.from_config(loop.cfg, loop.data.pool_size, loop.setup.initial_ids(), 10)
    a, b = local.run(), remote.run()
    assert _queried(a) == _queried(b)
    # the kernels agree to float round-off (thread counts differ), the decisions exactly
    out_a = [r["stop"]["change"].pop("output_change") for r in a[:-1]]
    out_b = [r["stop"]["change"].pop("output_change") for r in b[:-1]]
    assert out_a == pytest.approx(out_b, rel=1e-6)
    assert [r["stop"] for r in a] == [r["stop"] for r in b]
    assert a[0]["stop"]["change"]["value"] > 0


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
