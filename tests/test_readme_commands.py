"""The README's `entk-al run` commands, in the order it gives them, in a fresh folder (issue 19,
item 9): each must work, and each new run gets its own default folder."""

import re
import shlex
from pathlib import Path

import pytest
from clitools import cli

from entk_al.cli.run import default_out_dir
from entk_al.data import load_dataset
from entk_al.run.config import RunConfig, parse_options

README = Path(__file__).resolve().parents[1] / "README.md"
FASHION = Path("/usr/share/datasets/fashion-mnist")
#: appended to every new run (the last value of a repeated option wins): tiny and fast.
TINY = ["--initial", "10", "--query", "5", "--rounds", "1", "--epochs", "1", "--min-steps", "3", "--subset", "100"]


def readme_commands() -> list[list[str]]:
    """Every `entk-al run` / `entk-al label` command of the README's bash blocks, in order."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            for part in line.split("&&"):
                words = shlex.split(part)
                if words[:2] in (["entk-al", "run"], ["entk-al", "label"]):
                    commands.append(words[1:])
    return commands


def test_the_readme_has_the_commands_this_test_runs():
    cmds = [" ".join(c) for c in readme_commands()]
    assert cmds[0] == "run --strategy lookahead"  # the quick start
    assert "run -o acquisition=flip -o mode=sequential" in cmds
    assert any(c.startswith("label ") for c in cmds) and any(c.startswith("run --resume") for c in cmds)


def test_readme_run_commands_in_order(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(README.parent / "examples")  # commands name files from the repository root
    folders: list[Path] = []
    ran = 0
    skipped: set[str] = set()  # run folders of skipped commands: their --resume / label are skipped too
    for args in readme_commands():
        if ("ray" in args or "label-studio" in args or (("fashion-mnist" in args) and not FASHION.is_dir())
                or skipped & set(args)):
            # a Ray cluster (tests/test_ray_executor.py) / a Label Studio server (tests/test_labelstudio.py) /
            # data this machine lacks
            if "--out" in args:
                skipped.add(args[args.index("--out") + 1])
            continue
        if args[0] == "label":
            _answer_queries(Path(args[-1]))
        elif "--resume" not in args:
            args = [*args, *TINY]
        before = set(Path("runs").iterdir()) if Path("runs").is_dir() else set()
        code, out, err = cli(capsys, *args, *(["-q"] if args[0] == "run" else []))
        assert code == 0, f"entk-al {' '.join(args)}: {err}"
        ran += 1
        if args[0] == "run" and "--resume" not in args and "--out" not in args:
            new = set(Path("runs").iterdir()) - before
            assert len(new) == 1, f"entk-al {' '.join(args)} did not get a folder of its own: {err}{out}"
            folders += new
    assert ran >= 6 and len(folders) >= 3


def _answer_queries(path: Path) -> None:
    """Fill in the label column of a queries file with the true digits labels (the user's step)."""
    y = load_dataset("digits").y_train.numpy()
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    rows = [line.split(",") for line in lines[1:]]
    for row in rows:
        row[header.index("label")] = str(int(y[int(row[header.index("id")])]))
    path.write_text("\n".join([",".join(header), *(",".join(r) for r in rows)]) + "\n")


def _config(args: list[str]) -> RunConfig:
    it, kw, opts = iter(args), {}, []
    for word in it:
        if word in ("-o", "--option"):
            opts.append(next(it))
        elif word.startswith("--"):
            kw[word[2:].replace("-", "_")] = next(it)
    typed = {k: type(getattr(RunConfig(), k))(v) if getattr(RunConfig(), k) is not None else v for k, v in kw.items()}
    return RunConfig(**typed, strategy_options=parse_options(opts))


@pytest.mark.parametrize("a, b", [
    ([], ["-o", "acquisition=flip", "-o", "mode=sequential"]),
    (["-o", "acquisition=flip"], ["-o", "acquisition=emoc"]),
    (["--strategy", "my/strats.py:A"], ["--strategy", "my/strats.py:B"]),
    (["--strategy", "a/strats.py:A"], ["--strategy", "b/strats.py:A"]),
    (["--dataset", "numpy:a/d.npz"], ["--dataset", "numpy:b/d.npz"]),
    ([], ["--seed", "1"]),
    ([], ["--model", "cnn"]),
    (["--model", "a/net.py:Net"], ["--model", "b/net.py:Net"]),
    ([], ["--train", "my_train.py:fit"]),
    ([], ["--rounds", "20"]),
    ([], ["--oracle", "files"]),
])
def test_distinct_runs_get_distinct_default_folders(a, b):
    assert default_out_dir(_config(a)) != default_out_dir(_config(b))


def test_default_folder_is_readable_and_ignores_where_a_run_computes():
    assert default_out_dir(RunConfig()) == Path("runs/lookahead-digits-seed0")  # the quick start's, as documented
    assert default_out_dir(RunConfig(device="cpu", threads=1, executor="ray", workers=4)) == default_out_dir(
        RunConfig())
    name = default_out_dir(RunConfig(strategy="x/my_strats.py:LowestMaxLogit", seed=3)).name
    assert re.fullmatch(r"my_strats-LowestMaxLogit-digits-seed3-[0-9a-f]{8}", name), name
    assert default_out_dir(RunConfig(strategy_options={"acquisition": "flip"})) == default_out_dir(
        RunConfig(strategy_options={"acquisition": "flip"}))
