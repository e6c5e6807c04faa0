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


def run_main(argv, capsys):
    """The console entry point in-process: (exit code, stderr)."""
    from entk_al.cli import main

    with pytest.raises(SystemExit) as ex:
        main(argv)
    return ex.value.code, capsys.readouterr().err


@pytest.mark.parametrize("extra,needle", [
    (["--subset", "5", "--query", "10"], "--subset (5) must be >= --query (10)"),
    (["--model", "vgg"], "unknown model"),
    (["-o", "ridge_rel=abc"], "option 'ridge_rel' must be float"),
    (["-o", "exclude_self=yes"], "option 'exclude_self' must be bool"),
    (["-o", "nosuchoption=1"], "has no option 'nosuchoption'"),
    (["--resume", "RUN", "--overwrite"], "contradict"),
])
def test_bad_options_fail_before_any_file(tmp_path, capsys, extra, needle):
    extra = [str(tmp_path / "r") if a == "RUN" else a for a in extra]
    code, err = run_main(["run", "--out", str(tmp_path / "r"), *FAST, *extra], capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_config_file_types_and_option_merge(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('rounds = "two"\n')
    code, err = run_main(["run", "--config", str(bad), "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "option 'rounds' must be int" in err
    code, err = run_main(["run", "--config", str(tmp_path), "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "is a directory" in err
    good = tmp_path / "good.toml"
    good.write_text('rounds = 1\ninitial = 10\nquery = 5\nmin_steps = 5\nepochs = 1\n'
                    '[strategy_options]\nacquisition = "flip"\n')
    code, _ = run_main(["run", "-q", "--config", str(good), "-o", "ridge_rel=0.01", "-o", "selection=kmeanspp",
                        "--out", str(tmp_path / "m")], capsys)
    assert code == 0
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["strategy_options"] == {"acquisition": "flip", "ridge_rel": 0.01, "selection": "kmeanspp"}
    rows = [json.loads(x) for x in (tmp_path / "m" / "rounds.jsonl").read_text().splitlines()]
    # the options that change the acquisition are echoed per round
    info = rows[0]["strategy_info"]
    assert (info["acquisition"], info["selection"], info["reference"]) == ("flip", "kmeanspp", "network")


def test_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    code, err = run_main(["run", "--out", str(f), *FAST], capsys)
    assert code == 2 and "is a file" in err


def test_failing_user_strategy_is_one_line_naming_it(tmp_path, capsys):
    plugin = tmp_path / "boom.py"
    plugin.write_text("class Boom:\n    name = 'boom'\n"
                      "    def select(self, ctx, k):\n        raise ValueError('kaput')\n")
    code, err = run_main(["run", "--strategy", f"{plugin}:Boom", "--out", str(tmp_path / "r"), *FAST], capsys)
    assert code == 2 and "strategy 'boom' failed in round 0: ValueError: kaput" in err
    assert len(err.strip().splitlines()) == 1


def test_unexpected_error_is_one_line_exit_1(monkeypatch, capsys):
    import entk_al.cli as cli_mod

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(cli_mod, "app", boom)
    code, err = run_main(["strategies"], capsys)
    assert code == 1 and "unexpected RuntimeError: disk on fire" in err and "Traceback" not in err
    monkeypatch.setenv("ENTK_AL_DEBUG", "1")
    with pytest.raises(RuntimeError):
        cli_mod.main(["strategies"])
