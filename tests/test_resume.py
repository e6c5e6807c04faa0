"""Checkpoint/resume and TOML config: an interrupted run resumes to identical results."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from clitools import cli

from entk_al.cli import main
from entk_al.run.loop import ActiveLearningLoop

ARGS = ["--initial", "10", "--query", "5", "--rounds", "3", "--epochs", "1", "--min-steps", "5",
        "--subset", "150", "-q"]


def records(run_dir):
    rows = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]


class Killed(KeyboardInterrupt):
    """Stands in for SIGINT/SIGKILL at a chosen point of the loop."""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (default strategy: look-ahead, so kernels are on the path)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    with pytest.raises(SystemExit) as exc:
        main(["run", "--out", str(out), *ARGS])
    assert exc.value.code == 0
    return out


def _kill_at(monkeypatch, method, round_idx, before=True):
    """Make ``ActiveLearningLoop.method`` raise Killed when the loop reaches ``round_idx``."""
    orig = getattr(ActiveLearningLoop, method)

    def wrapped(self, *a, **kw):
        r = a[0] if method in ("train_and_evaluate", "select") else a[0].next_round - 1
        if r == round_idx and before:
            raise Killed
        out = orig(self, *a, **kw)
        if r == round_idx:
            raise Killed
        return out

    monkeypatch.setattr(ActiveLearningLoop, method, wrapped)


@pytest.mark.parametrize("method,round_idx,before", [
    ("save_state", 0, False),   # right after round 0's checkpoint
    ("save_state", 1, True),    # results of round 1 written, its checkpoint not yet
    ("select", 2, True),        # in the middle of round 2 (trained, not yet queried)
    ("train_and_evaluate", 3, True),  # before the last round starts
])
def test_killed_run_resumes_to_identical_results(reference, tmp_path, capsys, monkeypatch, method, round_idx,
                                                 before):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _kill_at(m, method, round_idx, before)
        code, _, err = cli(capsys, "run", "--out", out, *ARGS)
    assert code == 130 and "interrupted" in err
    assert not (out / "summary.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no half-written temp file
    # a plain rerun refuses to clobber the interrupted run
    code, _, err = cli(capsys, "run", "--out", out, *ARGS)
    assert code == 2 and "--resume" in err
    code, out_text, err = cli(capsys, "run", "--resume", out, "-q")
    assert code == 0, err
    assert records(out) == records(reference)
    ref_sum = json.loads((reference / "summary.json").read_text())
    got_sum = json.loads((out / "summary.json").read_text())
    assert got_sum["aubc"] == ref_sum["aubc"] and got_sum["final_test_accuracy"] == ref_sum["final_test_accuracy"]


def test_checkpoint_holds_model_pool_and_records(reference):
    ck = torch.load(reference / "checkpoint.pt", weights_only=True)  # plain types only
    assert ck["next_round"] == 4 and len(ck["records"]) == 4
    labeled_round = np.asarray(ck["pool"]["labeled_round"])
    assert (labeled_round != -1).sum() == 10 + 3 * 5
    for rec in ck["records"][:-1]:
        assert (labeled_round[rec["queried"]] == rec["round"]).all()
    assert all(isinstance(v, torch.Tensor) for v in ck["model"].values())


def test_resume_with_more_rounds_equals_a_longer_run(reference, tmp_path, capsys):
    out = tmp_path / "short"
    short = [a if a != "3" or ARGS[i - 1] != "--rounds" else "1" for i, a in enumerate(ARGS)]
    assert cli(capsys, "run", "--out", out, *short)[0] == 0
    assert len(records(out)) == 2 and records(out)[-1]["queried"] == []
    assert cli(capsys, "run", "--resume", out, "--rounds", "3", "-q")[0] == 0
    assert records(out) == records(reference)


def test_corrupted_and_mismatched_checkpoints_are_errors(reference, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(reference, run)
    code, _, err = cli(capsys, "run", "--resume", run, "--seed", "1", "-q")
    assert code == 2 and "different options" in err and "seed" in err
    code, _, err = cli(capsys, "run", "--resume", run, "--strategy", "random", "-q")
    assert code == 2 and "strategy" in err
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    before = (run / "rounds.jsonl").read_text()
    code, _, err = cli(capsys, "run", "--resume", run, "-q")
    assert code == 2 and "corrupted" in err and err.count("\n") == 1
    assert (run / "rounds.jsonl").read_text() == before  # never a silent restart
    (run / "checkpoint.pt").unlink()
    code, _, err = cli(capsys, "run", "--resume", run, "-q")
    assert code == 2 and "nothing to resume" in err
    code, _, err = cli(capsys, "run", "--resume", tmp_path / "nowhere", "-q")
    assert code == 2 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    code, _, err = cli(capsys, "run", "--resume", tmp_path / "empty", "-q")
    assert code == 2 and "no config.json" in err


def test_toml_config_with_cli_override_is_saved_resolved(tmp_path, capsys):
    toml = tmp_path / "run.toml"
    out = tmp_path / "from-toml"
    toml.write_text(f'strategy = "entropy"\ninitial = 12\nquery = 4\nrounds = 1\nepochs = 1\nmin-steps = 5\n'
                    f'seed = 3\nout = "{out}"\nquiet = true\n[strategy_options]\n')
    code, _, err = cli(capsys, "run", "--config", toml, "--seed", "4")
    assert code == 0, err
    saved = json.loads((out / "config.json").read_text())
    assert (saved["strategy"], saved["initial"], saved["query"], saved["min_steps"]) == ("entropy", 12, 4, 5)
    assert saved["seed"] == 4  # CLI flag beats the file
    assert [r["n_labeled"] for r in records(out)] == [12, 16]
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = 1\nbogus = 2\n")
    code, _, err = cli(capsys, "run", "--config", bad, "--out", tmp_path / "x")
    assert code == 2 and "bogus" in err
    bad.write_text("rounds = [\n")
    code, _, err = cli(capsys, "run", "--config", bad, "--out", tmp_path / "x")
    assert code == 2 and "not valid TOML" in err


@pytest.mark.slow
def test_sigkilled_subprocess_resumes_to_identical_results(reference, tmp_path):
    """A real SIGKILL of the CLI process as soon as the first checkpoint exists."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "entk_al.cli", "run", "--out", str(out), *ARGS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    res = subprocess.run([sys.executable, "-m", "entk_al.cli", "run", "--resume", str(out), "-q"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert records(out) == records(reference)


def test_resume_before_round0_checkpoint_starts_over_and_fewer_rounds_refused(tmp_path, capsys):
    """Killed before any round was checkpointed (only config.json written): --resume runs
    from round 0; asking a finished run for fewer rounds than it already ran is an error."""
    import json

    run = tmp_path / "early"
    run.mkdir()
    ref = tmp_path / "ref"
    args = ["--initial", "10", "--query", "5", "--rounds", "1", "--min-steps", "5", "--epochs", "1", "-q"]
    assert cli(capsys, "run", "--out", ref, *args)[0] == 0
    (run / "config.json").write_text((ref / "config.json").read_text())
    code, _, err = cli(capsys, "run", "--resume", run, "-q")
    assert code == 0, err
    assert records(run) == records(ref)
    code, _, err = cli(capsys, "run", "--resume", ref, "--rounds", "0", "-q")
    assert code == 2 and "already ran 1 query rounds" in err
    assert json.loads((ref / "config.json").read_text())["rounds"] == 1


BOUNDARY_ARGS = ["--strategy", "random", "--initial", "10", "--query", "5", "--rounds", "2", "--epochs", "1",
                 "--min-steps", "3", "--subset", "100", "-q"]


def _count_writes(monkeypatch, kill_at=None):
    """Wrap every atomic file write (checkpoint, log, curve, config, summary); with ``kill_at``
    raise Killed instead of the kill_at-th write (0-based). Returns the list of written names."""
    import entk_al.fileio
    import entk_al.report.curve
    import entk_al.run.checkpoint

    orig = entk_al.fileio.atomic_write
    written = []

    def wrapped(path, write):
        if kill_at is not None and len(written) == kill_at:
            raise Killed
        written.append(Path(path).name)
        return orig(path, write)

    for mod in (entk_al.fileio, entk_al.run.checkpoint, entk_al.report.curve):
        monkeypatch.setattr(mod, "atomic_write", wrapped)
    return written


def test_kill_at_every_write_boundary_resumes_to_the_same_log(tmp_path, capsys, monkeypatch):
    """A kill before any one of a run's file writes (every boundary between the checkpoint,
    rounds.jsonl, curve.png, config.json and summary.json), then --resume: the log, curve and
    summary are those of an uninterrupted run; a killed run never has summary.json."""
    ref = tmp_path / "ref"
    with monkeypatch.context() as m:
        names = _count_writes(m)
        assert cli(capsys, "run", "--out", ref, *BOUNDARY_ARGS)[0] == 0
    assert names.count("checkpoint.pt") == 3 and names.count("rounds.jsonl") == 3 and names[-1] == "summary.json"
    ref_summary = json.loads((ref / "summary.json").read_text())
    for k in range(len(names)):
        out = tmp_path / f"kill{k}"
        with monkeypatch.context() as m:
            _count_writes(m, kill_at=k)
            code, _, err = cli(capsys, "run", "--out", out, *BOUNDARY_ARGS)
        assert code == 130 and "interrupted" in err, (k, names[k])
        assert not (out / "summary.json").exists()
        if not (out / "config.json").exists():
            continue  # killed before anything was written: nothing to resume
        code, _, err = cli(capsys, "run", "--resume", out, "-q")
        assert code == 0, (k, names[k], err)
        assert records(out) == records(ref), (k, names[k])
        assert (out / "curve.png").is_file()
        got = json.loads((out / "summary.json").read_text())
        assert {key: v for key, v in got.items() if not key.endswith("_seconds")} == \
            {key: v for key, v in ref_summary.items() if not key.endswith("_seconds")}, (k, names[k])
