"""A dataset without a test split (the normal case for a pool people label themselves): runs
record ``test_accuracy`` null and say "no test split" everywhere a test accuracy would be."""

import csv
import json

import numpy as np
import pytest
from clitools import cli

from entk_al.data import load_dataset
from entk_al.fileio import read_jsonl
from entk_al.run.metrics import aubc

FAST = ["--initial", "10", "--query", "5", "--rounds", "2", "--epochs", "1", "--min-steps", "5", "--subset", "200",
        "--strategy", "margin", "-q"]


def _npz(tmp_path, x_test, y_test, unlabeled=False):
    digits = load_dataset("digits")
    x = digits.x_train[:120].numpy()
    y = digits.y_train[:120].numpy()
    extra = dict(classes=np.array(digits.classes)) if unlabeled else {}
    path = tmp_path / "pool.npz"
    np.savez(path, x_train=x, y_train=np.full_like(y, -1) if unlabeled else y, x_test=x_test, y_test=y_test, **extra)
    return path, y


def _assert_no_test_results(run_dir, n_records):
    records = read_jsonl(run_dir / "rounds.jsonl")
    assert len(records) == n_records and all(r["test_accuracy"] is None for r in records)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["aubc"] is None and summary["final_test_accuracy"] is None and summary["test_size"] == 0
    assert (run_dir / "curve.png").stat().st_size > 0


@pytest.mark.parametrize("shape", ["rows", "flat"])
def test_numpy_archive_with_empty_test_split_runs_and_records_null(tmp_path, capsys, shape):
    x_test = np.zeros((0, 1, 8, 8), np.float32) if shape == "rows" else np.zeros(0)
    path, _ = _npz(tmp_path, x_test, np.zeros(0, np.int64))
    run_dir = tmp_path / "run"
    code, out, err = cli(capsys, "run", "--dataset", f"numpy:{path}", "--out", run_dir, *FAST)
    assert code == 0, err
    assert "no test split" in out and "%" not in out
    _assert_no_test_results(run_dir, 3)


def test_human_labeled_pool_without_test_split_runs_end_to_end(tmp_path, capsys):
    """--oracle files on a pool nobody has labeled and no test set: label, resume, repeat."""
    path, truth = _npz(tmp_path, np.zeros((0, 1, 8, 8), np.float32), np.zeros(0, np.int64), unlabeled=True)
    run_dir = tmp_path / "run"
    code, out, err = cli(capsys, "run", "--dataset", f"numpy:{path}", "--oracle", "files", "--out", run_dir, *FAST)
    assert code == 0 and "waiting for labels" in out, err
    for name in ("initial", "round_000", "round_001"):
        queries = run_dir / "queries" / f"{name}.csv"
        with open(queries, newline="") as fh:
            ids = [int(row["id"]) for row in csv.DictReader(fh)]
        answers = tmp_path / f"{name}.csv"
        answers.write_text("id,label\n" + "".join(f"{i},{truth[i]}\n" for i in ids))
        code, out, err = cli(capsys, "label", run_dir, "--from", answers)
        assert code == 0, err
        code, out, err = cli(capsys, "run", "--resume", run_dir, "-q")
        assert code == 0, err
    assert "done: 20 labels (no test split" in out
    _assert_no_test_results(run_dir, 3)


def test_folder_with_train_but_no_test_folder_runs(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        for i in range(12):
            path = tmp_path / "imgs" / "train" / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8)).save(path)
    data = load_dataset(f"folder:{tmp_path / 'imgs'}")
    assert data.classes == ["a", "b"] and data.pool_size == 24
    assert not data.has_test_split and data.x_test.shape == (0, 1, 4, 4)
    run_dir = tmp_path / "run"
    code, out, err = cli(capsys, "run", "--dataset", f"folder:{tmp_path / 'imgs'}", "--out", run_dir,
                         "--initial", "4", "--query", "2", "--rounds", "1", "--min-steps", "3", "--subset", "20", "-q")
    assert code == 0, err
    _assert_no_test_results(run_dir, 2)


def test_plot_and_bench_say_no_test_split_in_one_line(tmp_path, capsys):
    path, _ = _npz(tmp_path, np.zeros((0, 1, 8, 8), np.float32), np.zeros(0, np.int64))
    run_dir = tmp_path / "grid" / "run"
    assert cli(capsys, "run", "--dataset", f"numpy:{path}", "--out", run_dir, *FAST)[0] == 0
    code, out, err = cli(capsys, "plot", tmp_path / "grid")
    assert code == 2 and err.count("\n") == 1 and "no test split" in err, err
    protocol = tmp_path / "p.toml"
    protocol.write_text(f'strategies = ["random"]\nseeds = 1\n[run]\ndataset = "numpy:{path}"\ninitial = 10\n'
                        f'query = 5\nrounds = 1\n')
    code, out, err = cli(capsys, "bench", "--protocol", protocol, "--out", tmp_path / "bench")
    assert code == 2 and err.count("\n") == 1 and "no test split" in err, err
    assert not (tmp_path / "bench").exists()  # refused before any run


def test_approx_refuses_a_dataset_without_test_split_in_one_line(tmp_path, capsys):
    path, _ = _npz(tmp_path, np.zeros((0, 1, 8, 8), np.float32), np.zeros(0, np.int64))
    code, out, err = cli(capsys, "approx", "--dataset", f"numpy:{path}", "--out", tmp_path / "a", "-q")
    assert code == 2 and err.count("\n") == 1 and "has none (0 test points)" in err, err


def test_aubc_of_a_run_without_test_split_is_none():
    assert aubc([None, None]) is None
    assert aubc([0.5, 1.0]) == 0.75
    assert np.isnan(aubc([]))
