"""Human-in-the-loop labeling: --oracle files, `entk-al label`, resume."""

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from clitools import cli

from entk_al.cli import main
from entk_al.data import load_dataset
from entk_al.errors import ConfigError, LabelError
from entk_al.run.config import RunConfig
from entk_al.run.loop import ActiveLearningLoop
from entk_al.run.oracle import label_path, parse_answers, query_path

FAST = dict(initial=10, query=5, rounds=2, epochs=1, min_steps=5, subset=200, strategy="margin")
FAST_ARGS = ["--initial", "10", "--query", "5", "--rounds", "2", "--epochs", "1", "--min-steps", "5",
             "--subset", "200", "--strategy", "margin", "-q"]


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def write_answers(path, ids, labels, header=("id", "label")):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(zip(ids, labels))
    return path


def strip_timing(records):
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in records]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_files_oracle_never_reads_ground_truth_and_matches_simulated(tmp_path, digits):
    """Labels typed in by a 'person' (the true ones) reproduce the simulated run exactly,
    while the loop only ever sees a pool whose labels are unknown (-1)."""
    truth = digits.y_train.numpy()
    hidden = replace(digits, y_train=torch.full_like(digits.y_train, -1))
    sim = ActiveLearningLoop(RunConfig(**FAST), tmp_path / "sim", dataset=digits).run()

    cfg = RunConfig(**FAST, oracle="files")
    run_dir = tmp_path / "human"
    loop = ActiveLearningLoop(cfg, run_dir, dataset=hidden)
    assert loop.run() == []
    stops = 0
    while loop.waiting_for is not None:
        stops += 1
        rows = read_rows(loop.waiting_for)
        ids = [int(r["id"]) for r in rows]
        assert [r["source"] for r in rows] == [digits.source_of(i) for i in ids]
        assert all(r["label"] == "" for r in rows)
        ck = torch.load(run_dir / "checkpoint.pt", weights_only=True)
        assert ck["pending"]["ids"] == ids
        if loop.waiting_for.name != "initial.csv":
            # the guess is the model's argmax, stored as a class name
            assert all(r["guess"] in digits.classes for r in rows)
        # the person writes class names for even rows and indices for odd ones
        labels = [digits.classes[truth[i]] if j % 2 == 0 else str(truth[i]) for j, i in enumerate(ids)]
        code, out, err = cli_plain("label", run_dir, "--from", write_answers(tmp_path / "a.csv", ids, labels))
        assert code == 0, err
        loop = ActiveLearningLoop(cfg, run_dir, dataset=hidden)
        loop.run(resume=True)
    assert stops == 3  # initial set, round 0, round 1
    human = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert strip_timing(human) == strip_timing(sim)
    assert json.loads((run_dir / "summary.json").read_text())["final_n_labeled"] == 20


def cli_plain(*args):
    """`main` without capsys (used inside a loop that also checks files)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return exc.value.code, out.getvalue(), err.getvalue()


@pytest.fixture
def waiting_run(tmp_path, capsys):
    """A CLI run with --oracle files, stopped at round 0's queries (initial set answered)."""
    run_dir = tmp_path / "run"
    code, out, err = cli(capsys, "run", "--oracle", "files", "--out", run_dir, *FAST_ARGS)
    assert code == 0 and "waiting for labels" in out and "entk-al label" in out, (out, err)
    assert not (run_dir / "rounds.jsonl").exists()
    y = load_dataset("digits").y_train.numpy()
    ids = [int(r["id"]) for r in read_rows(query_path(run_dir, -2))]
    assert cli(capsys, "label", run_dir, "--from", write_answers(tmp_path / "init.csv", ids, y[ids]))[0] == 0
    code, out, err = cli(capsys, "run", "--resume", run_dir, "-q")
    assert code == 0 and "round_000.csv" in out, (out, err)
    ids = [int(r["id"]) for r in read_rows(query_path(run_dir, 0))]
    return run_dir, ids, y[ids]


@pytest.mark.parametrize("case,needle", [
    ("stray_id", "was not queried"),
    ("unknown_class", "unknown class"),
    ("missing_row", "have no label"),
    ("duplicate", "labeled twice"),
    ("bad_header", "header row"),
    ("bad_id", "not an integer"),
    ("empty_label", "empty label"),
    ("extra_field", "more fields"),
    ("no_file", "does not exist"),
])
def test_bad_answers_are_rejected_and_nothing_is_recorded(waiting_run, tmp_path, capsys, case, needle):
    run_dir, ids, y = waiting_run
    path = tmp_path / "answers.csv"
    rows = [[i, int(c)] for i, c in zip(ids, y)]
    header = "id,label"
    if case == "stray_id":
        labeled = set(ids)
        rows[2][0] = next(i for i in range(10_000) if i not in labeled)
    elif case == "unknown_class":
        rows[1][1] = "cat"
    elif case == "missing_row":
        rows = rows[:-1]
    elif case == "duplicate":
        rows.append(rows[0])
    elif case == "bad_header":
        header = "pool_id,answer"
    elif case == "bad_id":
        rows[0][0] = "seven"
    elif case == "empty_label":
        rows[0][1] = ""
    elif case == "extra_field":
        rows[0].append("oops")
    if case != "no_file":
        path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    code, out, err = cli(capsys, "label", run_dir, "--from", path)
    assert code == 2
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err
    assert not label_path(run_dir, 0).exists()
    assert not list((run_dir / "labels").glob(".*"))  # no temp file left behind
    # resuming without recorded labels is a clear error, not a silent restart
    code, out, err = cli(capsys, "run", "--resume", run_dir, "-q")
    assert code == 2 and "entk-al label" in err


def test_label_then_resume_and_relabel(waiting_run, tmp_path, capsys):
    run_dir, ids, y = waiting_run
    wrong = write_answers(tmp_path / "w.csv", ids, [(int(c) + 1) % 10 for c in y])
    assert cli(capsys, "label", run_dir, "--from", wrong)[0] == 0
    # a second `label` before resuming replaces the first answers
    code, out, _ = cli(capsys, "label", run_dir, "--from", write_answers(tmp_path / "r.csv", ids, y))
    assert code == 0 and "replacing" in out
    code, out, _ = cli(capsys, "run", "--resume", run_dir, "-q")
    assert code == 0 and "round_001.csv" in out
    ck = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    np.testing.assert_array_equal(np.asarray(ck["pool"]["labels"])[ids], y)
    assert (np.asarray(ck["pool"]["labeled_round"])[ids] == 0).all()
    # labels for round 0 no longer apply to the round-1 queries
    code, _, err = cli(capsys, "label", run_dir, "--from", tmp_path / "r.csv")
    assert code == 2 and "was not queried in round 1" in err


def test_label_command_errors(tmp_path, capsys):
    code, _, err = cli(capsys, "label", tmp_path, "--from", tmp_path / "x.csv")
    assert code == 2 and "no run" in err
    sim = tmp_path / "sim"
    assert cli(capsys, "run", "--out", sim, *FAST_ARGS)[0] == 0
    code, _, err = cli(capsys, "label", sim, "--from", tmp_path / "x.csv")
    assert code == 2 and "not waiting for labels" in err


def test_parse_answers_accepts_names_indices_and_extra_columns(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("\ufeffID,source,guess,Label,notes\n5,a.png,cat,dog,x\n\n3,b.png,dog,0,y\n")
    got = parse_answers(p, [3, 5], ["cat", "dog"], 4)
    np.testing.assert_array_equal(got, [0, 1])


def test_sequential_selection_cannot_use_files_oracle(tmp_path, digits):
    class AsksMidSelection:
        name = "asks"

        def select(self, ctx, k):
            ctx.oracle(ctx.candidate_ids[:1])
            return ctx.candidate_ids[:k]

    cfg = RunConfig(**FAST, oracle="files")
    loop = ActiveLearningLoop(cfg, tmp_path / "r", dataset=digits, strategy=AsksMidSelection())
    loop.run()
    rows = read_rows(loop.waiting_for)
    write_answers(tmp_path / "a.csv", [r["id"] for r in rows], [int(digits.y_train[int(r["id"])]) for r in rows])
    assert cli_plain("label", tmp_path / "r", "--from", tmp_path / "a.csv")[0] == 0
    with pytest.raises(ConfigError, match="sequential"):
        ActiveLearningLoop(cfg, tmp_path / "r", dataset=digits, strategy=AsksMidSelection()).run(resume=True)


@pytest.mark.parametrize("mode", ["sequential", "hybrid"])
def test_sequential_lookahead_with_files_oracle_fails_before_training(tmp_path, capsys, mode):
    code, out, err = cli(capsys, "run", "--oracle", "files", "--out", tmp_path / "r", *FAST_ARGS,
                         "--strategy", "lookahead", "-o", f"mode={mode}")
    assert code == 2 and "--oracle files" in err and mode in err and "Traceback" not in err
    assert not (tmp_path / "r" / "queries").exists()


def test_overwrite_clears_human_files(waiting_run, capsys):
    run_dir, _, _ = waiting_run
    code, out, _ = cli(capsys, "run", "--oracle", "files", "--out", run_dir, *FAST_ARGS, "--overwrite")
    assert code == 0 and "initial.csv" in out
    assert not (run_dir / "labels").exists() and [p.name for p in (run_dir / "queries").iterdir()] == ["initial.csv"]


def test_simulated_oracle_refuses_unknown_labels(tmp_path, digits):
    hidden = replace(digits, y_train=torch.full_like(digits.y_train, -1))
    with pytest.raises(ConfigError, match="--oracle files"):
        ActiveLearningLoop(RunConfig(**FAST), tmp_path / "r", dataset=hidden).run()


def test_one_unknown_label_is_refused_before_any_training(tmp_path, digits):
    """A single -1 among known labels stops the simulated run at once, naming the id, whether
    or not a query would ever reach it (it used to fail rounds later, or never)."""
    y = digits.y_train.clone()
    y[37] = -1
    with pytest.raises(ConfigError, match=r"1 pool item\(s\) without a label \(label -1, e.g. id 37\)"):
        ActiveLearningLoop(RunConfig(**FAST), tmp_path / "r", dataset=replace(digits, y_train=y))
    assert not (tmp_path / "r" / "rounds.jsonl").exists()


def test_recorded_labels_tampered_with_are_rejected(waiting_run, tmp_path, capsys):
    run_dir, ids, y = waiting_run
    assert cli(capsys, "label", run_dir, "--from", write_answers(tmp_path / "a.csv", ids, y))[0] == 0
    lp = label_path(run_dir, 0)
    lp.write_text(lp.read_text().replace(f"\n{ids[0]},", "\n99999,", 1))
    code, _, err = cli(capsys, "run", "--resume", run_dir, "-q")
    assert code == 2 and "was not queried" in err
    with pytest.raises(LabelError):
        ActiveLearningLoop(RunConfig(**FAST, oracle="files"), run_dir).run(resume=True)
