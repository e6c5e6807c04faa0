"""The CLI end to end on digits with a tiny budget, and its one-line errors."""

import json
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "entk_al.cli"]
FAST = ["--initial", "10", "--query", "5", "--rounds", "2", "--min-steps", "10", "--epochs", "1", "-q"]


def cli(*args, cwd=None):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_run_lookahead_on_digits(tmp_path):
    res = cli("run", "--strategy", "lookahead", "--out", str(tmp_path / "run"), *FAST)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(x) for x in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    assert [r["n_labeled"] for r in rows] == [10, 15, 20]
    for key in ("round", "test_accuracy", "queried", "select_seconds", "train_seconds"):
        assert key in rows[0]
    assert 0.0 <= rows[-1]["test_accuracy"] <= 1.0
    assert (tmp_path / "run" / "curve.png").read_bytes()[:4] == b"\x89PNG"
    # rerunning into the same directory refuses rather than clobbering
    again = cli("run", "--out", str(tmp_path / "run"), *FAST)
    assert again.returncode == 2 and "--resume" in again.stderr


def test_strategies_lists_builtins():
    res = cli("strategies")
    assert res.returncode == 0
    for name in ("random", "entropy", "margin", "least_confidence", "lookahead"):
        assert name in res.stdout


@pytest.mark.parametrize("args,needle", [
    (["--strategy", "nope"], "unknown strategy"),
    (["--dataset", "nope"], "unknown dataset"),
    (["--initial", "1000", "--query", "500"], "exceeds the pool"),
    (["--dataset", "fashion-mnist", "--data-dir", "/nonexistent/dir"], "does not exist"),
    (["--query", "0"], "--query must be >= 1"),
])
def test_bad_input_one_line_exit_2(tmp_path, args, needle):
    res = cli("run", "--out", str(tmp_path / "r"), *FAST, *args)
    assert res.returncode == 2
    assert needle in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not (tmp_path / "r" / "rounds.jsonl").exists()
