"""Every user-facing error class through the CLI: one line on stderr, exit 2, no traceback,
and no half-written result file."""

import json
from pathlib import Path

import numpy as np
import pytest

import entk_al.errors as errors
from entk_al.cli import main

FAST = ["--initial", "10", "--query", "5", "--rounds", "1", "--epochs", "1", "--min-steps", "3", "-q"]
DOCS = Path(__file__).resolve().parents[1] / "README.md"


def user_error_classes():
    out, todo = [], [errors.EntkAlError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo += cls.__subclasses__()
    return {c.__name__ for c in out if c.__module__ == "entk_al.errors"}


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return (exc.value.code, *capsys.readouterr())


def assert_clean_failure(code, err, needle, run_dir=None):
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and needle in err, err
    if run_dir is not None and Path(run_dir).exists():
        leftovers = [p.name for p in Path(run_dir).rglob(".*")]
        assert not leftovers, leftovers  # atomic writes leave no temp files
        if (Path(run_dir) / "rounds.jsonl").exists():
            [json.loads(x) for x in (Path(run_dir) / "rounds.jsonl").read_text().splitlines()]
        for name in ("config.json", "summary.json"):
            if (Path(run_dir) / name).exists():
                json.loads((Path(run_dir) / name).read_text())


def _bad_strategy(tmp_path):
    path = tmp_path / "bad_strategy.py"
    path.write_text("class TwiceTheSame:\n    name = 'twice'\n"
                    "    def select(self, ctx, k):\n        return [int(ctx.candidate_ids[0])] * k\n")
    return f"{path}:TwiceTheSame"


def _npz_without_test(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=np.zeros((30, 4)), y_train=np.arange(30) % 2)
    return f"numpy:{tmp_path / 'd.npz'}"


CASES = {
    "ConfigError": lambda t: (["run", "--rounds", "-1"], "--rounds"),
    "ConfigError/oracle": lambda t: (["run", "--oracle", "mail"], "--oracle"),
    "ConfigError/ls-url": lambda t: (["run", "--oracle", "label-studio"], "needs --ls-url"),
    "ConfigError/executor": lambda t: (["run", "--executor", "spark"], "--executor"),
    "ConfigError/workers": lambda t: (["run", "--executor", "ray", "--workers", "0"], "--workers"),
    "ConfigError/ray-only": lambda t: (["run", "--workers", "4"], "error: --workers only applies to --executor ray"),
    "ConfigError/address": lambda t: (["run", "--executor", "ray", "--address", "nohost"], "HOST:PORT"),
    "ConfigError/cpus": lambda t: (["run", "--executor", "ray", "--cpus-per-worker", "0"], "--cpus-per-worker"),
    "ConfigError/budget": lambda t: (["run", "--initial", "2000"], "exceeds the pool"),
    "DataNotFoundError": lambda t: (["run", "--dataset", f"numpy:{t / 'none.npz'}"], "does not exist"),
    "DataNotFoundError/cifar": lambda t: (["run", "--dataset", "cifar10", "--data-dir", str(t)], "--download"),
    "DataFormatError": lambda t: (["run", "--dataset", _npz_without_test(t)], "lacks array"),
    "StrategyError/load": lambda t: (["run", "--strategy", "no_such_strategy"], "unknown strategy"),
    "StrategyError/select": lambda t: (["run", "--strategy", _bad_strategy(t)], "'twice' returned duplicate"),
    "TrainingDivergedError": lambda t: (["run", "--lr", "1e30"], "round 0 of model 'mlp': training diverged"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_run_errors(tmp_path, capsys, case):
    args, needle = CASES[case](tmp_path)
    run_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, "run", *FAST, "--out", run_dir, *args[1:])
    assert_clean_failure(code, err, needle, run_dir)


def test_executor_ray_without_ray_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a))
    run_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, "run", *FAST, "--out", run_dir, "--executor", "ray")
    assert_clean_failure(code, err, "pip install entk-al[ray]", run_dir)
    assert not run_dir.exists()  # refused before anything was written


def test_checkpoint_error(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run_cli(capsys, "run", "--strategy", "random", "--out", run_dir, *FAST)[0] == 0
    ckpt = run_dir / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # truncated, as by a full disk
    code, out, err = run_cli(capsys, "run", "--resume", run_dir, "--rounds", "2", "-q")
    assert_clean_failure(code, err, "corrupted", run_dir)
    assert len((run_dir / "rounds.jsonl").read_text().splitlines()) == 2  # untouched


def test_label_error(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, "run", "--oracle", "files", "--strategy", "random", "--out", run_dir, *FAST)
    assert code == 0, err
    first = (run_dir / "queries" / "initial.csv").read_text().splitlines()[1].split(",")[0]
    (tmp_path / "a.csv").write_text(f"id,label\n{first},giraffe\n")
    code, out, err = run_cli(capsys, "label", run_dir, "--from", tmp_path / "a.csv")
    assert_clean_failure(code, err, "unknown class 'giraffe'", run_dir)
    assert not (run_dir / "labels").exists()


def test_label_studio_error(tmp_path, capsys, monkeypatch):
    """An unreachable Label Studio server stops the run before anything is written
    (tests/test_labelstudio.py has the other cases, against a real server)."""
    pytest.importorskip("label_studio_sdk")
    import socket

    import entk_al.run.labelstudio as ls

    monkeypatch.setattr(ls, "BACKOFF_S", (0.0, 0.0))
    monkeypatch.setenv("ENTK_AL_LS_TOKEN", "secret-token-value")
    with socket.socket() as s:  # a free port: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, "run", *FAST, "--out", run_dir, "--oracle", "label-studio",
                             "--ls-url", f"http://127.0.0.1:{port}", "--ls-project", "1")
    assert_clean_failure(code, err, "cannot reach Label Studio", run_dir)
    assert "secret-token-value" not in err and not run_dir.exists()


def test_usage_errors_are_one_line_too(capsys):
    code, out, err = run_cli(capsys, "run", "--no-such-flag")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err


def test_every_error_class_is_covered_here_and_documented():
    # StorageError: tests/test_storage_errors.py; RunFolderInUseError: tests/test_run_folder_lock.py.
    covered = {c.split("/")[0] for c in CASES} | {"CheckpointError", "LabelError", "StorageError",
                                                  "RunFolderInUseError", "LabelStudioError"}
    classes = user_error_classes()
    assert classes - {"EntkAlError"} <= covered, classes - covered
    text = DOCS.read_text()
    troubleshooting = text[text.index("## Troubleshooting"):]
    for name in classes:
        assert name in troubleshooting, f"{name} missing from the README troubleshooting section"


def _bad_bytes(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\xff\xfe\x00strategy = 1")
    return path


def _grid_with_corrupt_log(tmp_path):
    run = tmp_path / "grid" / "a"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"strategy": "random", "dataset": "digits", "seed": 0}))
    (run / "summary.json").write_text(json.dumps({"strategy": "random", "aubc": 0.5}))
    (run / "rounds.jsonl").write_text('{"round": 0}\n{bad\n')
    return tmp_path / "grid"


def _protocol(tmp_path, base_seed):
    path = tmp_path / "p.toml"
    path.write_text(f'strategies = ["random"]\nseeds = 1\nbase_seed = {base_seed}\n[run]\ndataset = "digits"\n')
    return path


# Inputs a fresh user tried that once ended in "unexpected ..." (exit 1) or were silently
# accepted: non-UTF-8 TOML, out-of-range seeds outside `run`, NaN/inf numbers, a corrupted
# rounds.jsonl, an output folder that cannot be created.
MORE_CASES = {
    "toml-not-utf8": lambda t: (["run", "--config", _bad_bytes(t, "c.toml")], "not UTF-8"),
    "protocol-not-utf8": lambda t: (["bench", "--protocol", _bad_bytes(t, "p.toml"), "--out", t / "g"], "not UTF-8"),
    "approx-seed-negative": lambda t: (["approx", "--seed", "-1", "--out", t / "a"], "--seed"),
    "approx-seed-huge": lambda t: (["approx", "--seed", str(2**64), "--out", t / "a"], "--seed"),
    "bench-base-seed-negative": lambda t: (["bench", "--protocol", _protocol(t, -5), "--out", t / "g"], "base_seed"),
    "bench-base-seed-huge": lambda t: (["bench", "--protocol", _protocol(t, 2**64 - 1), "--out", t / "g"],
                                       "base_seed"),
    "run-lr-nan": lambda t: (["run", "--lr", "nan", "--out", t / "r", *FAST], "--lr"),
    "run-lr-inf": lambda t: (["run", "--lr", "inf", "--out", t / "r", *FAST], "--lr"),
    "fidelity-ridge-nan": lambda t: (["fidelity", "--ridge-rel", "nan", "--out", t / "f"], "--ridge-rel"),
    "approx-ridge-nan": lambda t: (["approx", "--ridge-rel", "nan", "--out", t / "a"], "--ridge-rel"),
    "approx-ridge-negative": lambda t: (["approx", "--ridge-rel", "-1", "--out", t / "a"], "--ridge-rel"),
    "approx-memory-nan": lambda t: (["approx", "--memory-gib", "nan", "--out", t / "a"], "--memory-gib"),
    "strategy-option-inf": lambda t: (["run", "-o", "variance_power=1e999", "--out", t / "r", *FAST], "finite"),
    "plot-corrupt-log": lambda t: (["plot", _grid_with_corrupt_log(t)], "line 2"),
    "bench-protocol-missing": lambda t: (["bench", "--protocol", t / "nope.toml"], "protocol"),
    "resume-with-other-out": lambda t: (["run", "--resume", t, "--out", t / "elsewhere"], "cannot move"),
    "out-not-creatable": lambda t: (["run", "--out", t / "file" / "sub", *FAST], "cannot create"),
    # --out naming an existing file: refused before any work, by every command that writes
    "bench-out-is-file": lambda t: (["bench", "--protocol", _protocol(t, 0), "--out", t / "file"], "is a file"),
    "plot-out-is-file": lambda t: (["plot", t, "--out", t / "file"], "is a file"),
    "fidelity-out-is-file": lambda t: (["fidelity", "--out", t / "file"], "is a file"),
    "approx-out-is-file": lambda t: (["approx", "--out", t / "file"], "is a file"),
    "resume-missing": lambda t: (["run", "--resume", t / "nope"], "does not exist"),
    "resume-a-file": lambda t: (["run", "--resume", t / "file"], "is a file"),
    "resume-text-checkpoint": lambda t: (["run", "--resume", _run_with_text_checkpoint(t)], "not a torch checkpoint"),
    "numpy-dataset-is-dir": lambda t: (["run", "--dataset", f"numpy:{t}", "--out", t / "r", *FAST], "is a directory"),
    "strategy-not-a-class": lambda t: (["run", "--strategy", "os:path", "--out", t / "r", *FAST], "not a class"),
    "strategy-option-nan-text": lambda t: (["run", "-o", "ridge_rel=nan", "--out", t / "r", *FAST], "finite"),
    "rounds-negative": lambda t: (["run", "--rounds", "-1", "--out", t / "r"], "--rounds must be >= 0, got -1"),
}


def _run_with_text_checkpoint(t):
    d = t / "run"
    d.mkdir()
    (d / "config.json").write_text('{"strategy": "random", "rounds": 1}')
    (d / "checkpoint.pt").write_text("garbage, not a checkpoint")
    return d


@pytest.mark.parametrize("case", sorted(MORE_CASES))
def test_more_bad_inputs_fail_in_one_line(case, tmp_path, capsys):
    (tmp_path / "file").write_text("a file, not a folder")
    args, needle = MORE_CASES[case](tmp_path)
    code, _, err = run_cli(capsys, *args)
    assert_clean_failure(code, err, needle)
