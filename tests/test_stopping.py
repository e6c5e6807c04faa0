"""Stop rules: κ against scikit-learn, the rules' windows on known sequences, the posterior's
predicted change against a direct float64 kernel-regression refit, and runs whose answer is
known: a pool the model fits at once stops after the window, digits does not, and a resumed
run ends with the log of an uninterrupted one."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from clitools import cli
from kernel_problems import brute_pntk
from sklearn.metrics import cohen_kappa_score

from entk_al.errors import ConfigError
from entk_al.run.config import RunConfig
from entk_al.run.loop import ActiveLearningLoop, run_experiment
from entk_al.run.stopping import (
    PredictedChange,
    StabilizingPredictions,
    cohen_kappa,
    draw_stop_set,
    parse_stop_rules,
    predicted_change,
)

from fakes import digits_round


@pytest.mark.parametrize("seed", range(5))
def test_kappa_matches_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 4, 300)
    b = np.where(rng.random(300) < 0.7, a, rng.integers(0, 4, 300))
    assert cohen_kappa(a, b, 4) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)


def test_kappa_degenerate_cases():
    assert cohen_kappa(np.zeros(5, int), np.zeros(5, int), 3) == 1.0  # one class everywhere, agreeing
    assert cohen_kappa(np.array([0, 1, 0, 1]), np.array([1, 0, 1, 0]), 2) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        cohen_kappa(np.zeros(3, int), np.zeros(4, int), 2)


def test_stabilizing_predictions_window_and_state():
    rule = StabilizingPredictions(threshold=0.9, window=2)
    a, b = np.array([0, 1, 2, 0, 1, 2]), np.array([0, 1, 2, 0, 1, 1])
    first = rule.update(predictions=a, num_classes=3)
    assert first["value"] is None and first["mean"] is None and not first["stop"]
    second = rule.update(predictions=b, num_classes=3)  # κ(a, b) < 0.9
    assert second["value"] == pytest.approx(cohen_kappa_score(a, b)) and second["mean"] is None
    third = rule.update(predictions=b, num_classes=3)  # κ = 1; mean of the last two
    assert third["mean"] == pytest.approx((cohen_kappa_score(a, b) + 1) / 2) and not third["stop"]
    clone = StabilizingPredictions(threshold=0.9, window=2)
    clone.load_state_dict(json.loads(json.dumps(rule.state_dict())))
    assert rule.update(predictions=b)["stop"] and clone.update(predictions=b)["stop"]  # 1, 1


def test_predicted_change_window_ignores_missing_values():
    rule = PredictedChange(threshold=0.01, window=2)
    assert [rule.update(effect=e)["stop"] for e in (0.005, None, 0.005, 0.02, 0.001, 0.0)] == \
        [False, False, False, False, False, True]


def test_parse_stop_rules():
    rules = parse_stop_rules("kappa, change:0.02:1")
    assert [(r.name, r.threshold, r.window) for r in rules] == [("kappa", 0.99, 3), ("change", 0.02, 1)]
    assert parse_stop_rules("none") == [] and parse_stop_rules(None) == []
    assert parse_stop_rules("kappa::5")[0].window == 5
    for spec, match in [("patience", "unknown rule"), ("kappa,kappa", "twice"), ("kappa:high", "must be a number"),
                        ("kappa:0.9:3:1", "more than"), ("kappa:1.5", "threshold must be"),
                        ("change:0", "threshold must be"), ("change:0.1:0", "window must be")]:
        with pytest.raises(ConfigError, match=match):
            parse_stop_rules(spec)


def test_stop_set_is_seeded_and_avoids_the_initial_set():
    a = draw_stop_set(100, np.arange(10), 30, seed=3)
    assert len(a) == 30 and a.min() >= 10 and np.array_equal(a, draw_stop_set(100, np.arange(10), 30, seed=3))
    assert not np.array_equal(a, draw_stop_set(100, np.arange(10), 30, seed=4))
    assert len(draw_stop_set(20, np.arange(10), 30, seed=0)) == 10


def test_predicted_change_equals_a_direct_refit_with_the_batch():
    setup = digits_round()
    ctx = setup.context()
    lab, cand = setup.labeled_ids, setup.candidate_ids
    batch = cand[[3, 17, 40, 41, 90]]
    stop = np.setdiff1d(np.arange(60, 400), lab)[:120]
    got = predicted_change(ctx, stop, batch)
    # reference: the linearized network refit on L and on L ∪ Q (pseudo-labels), float64
    u = np.concatenate([stop[~np.isin(stop, lab)], batch[~np.isin(batch, stop)]])
    ids = np.concatenate([lab, batch, u])
    k = brute_pntk(setup.model, setup.x_pool[torch.from_numpy(ids)])
    n, q = len(lab), len(batch)
    with torch.no_grad():
        f = copy.deepcopy(setup.model).double().eval()(setup.x_pool[torch.from_numpy(ids)].double())
    y_l = torch.nn.functional.one_hot(setup.y_pool[torch.from_numpy(lab)], setup.num_classes).double()
    y_q = torch.nn.functional.one_hot(f[n:n + q].argmax(dim=1), setup.num_classes).double()
    lam = 1e-3 * float(k[:n, :n].diagonal().sum()) / n
    f_u, k_u = f[n + q:], k[n + q:]

    def refit(m, y):
        sol = torch.linalg.solve(k[:m, :m] + lam * torch.eye(m, dtype=torch.float64), y - f[:m])
        return f_u + k_u[:, :m] @ sol

    base, new = refit(n, y_l), refit(n + q, torch.cat([y_l, y_q]))
    in_stop = torch.from_numpy(np.isin(u, stop))
    flips = (new.argmax(1) != base.argmax(1))[in_stop].double().mean()
    out = (new - base)[in_stop].norm(dim=1).mean()
    assert got["size"] == int(in_stop.sum())
    assert got["output_change"] == pytest.approx(float(out), rel=1e-3)
    assert abs(got["change"] - float(flips)) <= 1.0 / got["size"] + 1e-12  # a near-tie may round differently
    assert got["change"] > 0


# -- runs with a known answer ----------------------------------------------------------------

@pytest.fixture(scope="module")
def separable(tmp_path_factory):
    """Two far-apart Gaussian blobs: an MLP fits them from the first labels on."""
    rng = np.random.default_rng(0)
    centers = np.array([[-4.0, 0.0], [4.0, 0.0]], dtype=np.float32)

    def blobs(n):
        y = np.arange(n) % 2
        return (centers[y] + 0.3 * rng.standard_normal((n, 2))).astype(np.float32), y

    x_tr, y_tr = blobs(300)
    x_te, y_te = blobs(60)
    path = tmp_path_factory.mktemp("sep") / "blobs.npz"
    np.savez(path, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    return f"numpy:{path}"


def _cfg(dataset, stop, rounds=8, **kw):
    base = dict(strategy="margin", dataset=dataset, width=8, initial=6, query=4, rounds=rounds, subset=200,
                epochs=1, min_steps=40, lr=0.05, device="cpu", stop=stop)
    return RunConfig(**{**base, **kw})


def _log(path):
    strip = lambda rec: {k: v for k, v in rec.items() if not k.endswith("seconds")}  # noqa: E731
    return [strip(json.loads(line)) for line in (path / "rounds.jsonl").read_text().splitlines()]


def test_kappa_stops_a_fitted_pool_right_after_its_window(separable, tmp_path):
    records = run_experiment(_cfg(separable, "kappa"), tmp_path / "run")
    assert [r["test_accuracy"] for r in records] == [1.0] * len(records)  # the model fits at once
    assert len(records) == 4  # rounds 0–3: κ of rounds 1, 2, 3 is 1, mean over the window of 3
    assert [r["stop"]["kappa"]["value"] for r in records] == [None, 1.0, 1.0, 1.0]
    assert [len(r["queried"]) for r in records] == [4, 4, 4, 0]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stop"]["stopped"]["round"] == 3 and summary["stop"]["stopped"]["rule"] == "kappa"
    assert summary["stop"]["stopped"]["n_labeled"] == 6 + 3 * 4 == summary["final_n_labeled"]
    assert "kappa 1.0000 over the last 3 rounds" in summary["stop"]["stopped"]["reason"]


def test_change_stops_a_fitted_pool_and_leaves_that_batch_unlabeled(separable, tmp_path):
    records = run_experiment(_cfg(separable, "change:0.005:2"), tmp_path / "run")
    assert len(records) == 2 and [r["stop"]["change"]["value"] for r in records] == [0.0, 0.0]
    assert [len(r["queried"]) for r in records] == [4, 0]
    assert records[-1]["stop"]["change"]["stop"] and records[-1]["n_labeled"] == 10


def test_digits_does_not_stop_and_log_mode_runs_to_the_end(tmp_path):
    cfg = _cfg("digits", "kappa,change", rounds=3, width=16, initial=20, query=10, subset=400)
    records = run_experiment(cfg, tmp_path / "run")
    assert len(records) == 4 and all(len(r["queried"]) == 10 for r in records[:-1])
    assert all(not e["stop"] for r in records for e in r["stop"].values())
    assert all(r["stop"]["change"]["value"] > 0.005 for r in records[:-1])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stop"]["stopped"] is None and summary["stop"]["would_stop"] == {"kappa": None, "change": None}


def test_log_action_keeps_going_and_says_when_it_would_have_stopped(separable, tmp_path):
    records = run_experiment(_cfg(separable, "kappa:0.99:2", rounds=4, stop_action="log"), tmp_path / "run")
    assert len(records) == 5 and all(len(r["queried"]) == 4 for r in records[:-1])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stop"]["stopped"] is None and summary["stop"]["would_stop"] == {"kappa": 2}


def test_resumed_runs_stop_where_an_uninterrupted_one_does(separable, tmp_path):
    spec = "kappa,change:0.0001:4"
    whole = run_experiment(_cfg(separable, spec), tmp_path / "whole")
    run_experiment(_cfg(separable, spec, rounds=2), tmp_path / "split")  # finishes before the window
    resumed = ActiveLearningLoop(_cfg(separable, spec), tmp_path / "split").run(resume=True)
    assert len(resumed) == len(whole) == 4
    assert _log(tmp_path / "split") == _log(tmp_path / "whole")
    # resuming a stopped run (even with more rounds) changes nothing
    again = ActiveLearningLoop(_cfg(separable, spec, rounds=10), tmp_path / "split").run(resume=True)
    assert len(again) == 4 and _log(tmp_path / "split") == _log(tmp_path / "whole")


def test_cli_reports_the_stop_and_refuses_bad_rules(separable, capsys, tmp_path):
    code, out, _ = cli(capsys, "run", "--dataset", separable, "--strategy", "random", "--width", "8", "--initial", "6",
                       "--query", "4", "--rounds", "8", "--epochs", "1", "--min-steps", "40", "--stop", "kappa:0.99:2",
                       "-q", "--out", tmp_path / "r")
    assert code in (0, None) and "stopped at round 2 (14 labels) by the kappa rule" in out, out
    code, _, err = cli(capsys, "run", "--stop", "patience:3", "-q", "--out", tmp_path / "bad")
    assert code == 2 and "unknown rule 'patience'" in err and err.count("\n") == 1, err
    code, _, err = cli(capsys, "run", "--stop-action", "halt", "-q", "--out", tmp_path / "bad")
    assert code == 2 and "--stop-action must be" in err, err


def test_resume_with_other_stop_options_is_refused(separable, tmp_path):
    from entk_al.errors import CheckpointError

    run_experiment(_cfg(separable, "kappa", rounds=1), tmp_path / "run")
    with pytest.raises(CheckpointError, match="stop_set"):
        ActiveLearningLoop(_cfg(separable, "kappa", rounds=3, stop_set=50), tmp_path / "run").run(resume=True)
    with pytest.raises(CheckpointError, match="stop"):
        ActiveLearningLoop(_cfg(separable, None, rounds=3), tmp_path / "run").run(resume=True)


def test_grids_only_log_stop_rules_and_plot_refuses_a_stopped_run(separable, tmp_path):
    from entk_al.report.bench import Protocol
    from entk_al.report.plot import load_runs

    proto = tmp_path / "p.toml"
    proto.write_text('strategies = ["random"]\nseeds = 1\n[run]\ndataset = "digits"\nstop = "kappa"\n')
    with pytest.raises(ConfigError, match='stop_action = "log"'):
        Protocol.from_file(proto)
    proto.write_text('strategies = ["random"]\nseeds = 1\n[run]\ndataset = "digits"\nstop = "kappa"\n'
                     'stop_action = "log"\n')
    assert Protocol.from_file(proto).run["stop_action"] == "log"
    proto.write_text('strategies = ["random"]\nseeds = 1\n[run]\ndataset = "digits"\nstop = "kapa"\n'
                     'stop_action = "log"\n')
    with pytest.raises(ConfigError, match="unknown rule 'kapa'"):
        Protocol.from_file(proto)
    run_experiment(_cfg(separable, "kappa"), tmp_path / "grid" / "run")  # stops after 4 of 9 rounds
    with pytest.raises(ConfigError, match="ended after 4 of 9 rounds"):
        load_runs(tmp_path / "grid")
