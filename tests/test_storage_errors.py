"""A full disk or a read-only folder, for every file entk-al writes: one line saying which,
exit 2, and the files written before intact (issue 19, item 5).

The disk is filled at the lowest write layer: the raw temporary file of
:func:`entk_al.fileio.atomic_write` writes into ``/dev/full``, so the kernel itself answers
ENOSPC (torch's zip writer turns that into "unexpected pos" RuntimeErrors, as on a real disk).
A read-only folder is ``chmod 555`` when not root; root writes through permissions, so there
the operating system calls that create, replace or remove files under the folder answer
EROFS, as on a read-only mount.
"""

import errno
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from clitools import cli

from entk_al import fileio
from entk_al.data import load_dataset

TINY = ["--initial", "10", "--query", "5", "--rounds", "1", "--epochs", "1", "--min-steps", "3", "--subset", "100",
        "-q"]


def fill_disk(monkeypatch, names=None):
    """Every atomic write of a file named in ``names`` (all when None) meets a full disk."""
    real = fileio._TempFile._write_raw

    def write_raw(self, data):
        if names is None or self.path.name in names:
            if not os.path.exists("/dev/full"):  # pragma: no cover  (not Linux)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            fd = os.open("/dev/full", os.O_WRONLY)
            try:
                return os.write(fd, bytes(data))  # the kernel answers ENOSPC
            finally:
                os.close(fd)
        return real(self, data)

    monkeypatch.setattr(fileio._TempFile, "_write_raw", write_raw)


def make_read_only(monkeypatch, folder: Path, how: str) -> None:
    """Make ``folder`` (and everything under it) unwritable: by permissions or as a read-only mount."""
    folder = Path(folder).resolve()
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root writes through permissions (the 'mount' variant covers root)")
        for p in [folder, *folder.rglob("*")]:
            if p.is_dir():
                p.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
        return

    def inside(path) -> bool:
        try:
            return Path(os.path.abspath(os.fspath(path))).is_relative_to(folder)
        except TypeError:  # a file descriptor
            return False

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    real_open = os.open

    def fake_open(path, flags, *args, **kwargs):
        if flags & writing and inside(path):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    for name in ("mkdir", "unlink", "rmdir", "remove"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda path, *a, _real=real, **kw: refuse(path) if inside(path)
                            else _real(path, *a, **kw))
    for name in ("replace", "rename"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda src, dst, *a, _real=real, **kw: refuse(dst) if inside(dst)
                            else _real(src, dst, *a, **kw))


@pytest.fixture
def restore_permissions(tmp_path):
    yield
    for p in [tmp_path, *tmp_path.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)


def assert_one_line(code, err, needle):
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert needle in err and "Traceback" not in err and "unexpected" not in err, err


def no_temp_files(folder: Path) -> None:
    assert not [p.name for p in folder.rglob(".*")], "atomic writes left temporary files"


# -- a full disk --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["config.json", "checkpoint.pt", "rounds.jsonl", "curve.png", "summary.json"])
def test_run_on_a_full_disk_says_so_and_keeps_the_last_round(tmp_path, capsys, monkeypatch, name):
    out = tmp_path / "run"
    code, _, err = cli(capsys, "run", "--strategy", "random", "--out", out, *TINY, "--rounds", "0")
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with monkeypatch.context() as m:
        fill_disk(m, {name})
        code, _, err = cli(capsys, "run", "--resume", out, "--rounds", "1", "-q")
    assert_one_line(code, err, "the disk is full")
    assert name in err
    no_temp_files(out)
    assert (out / name).read_bytes() == before[name]  # the old file, whole
    # Space freed: the run continues and ends like one that never met a full disk.
    code, _, err = cli(capsys, "run", "--resume", out, "--rounds", "1", "-q")
    assert code == 0, err
    rounds = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1]


def test_checkpoint_write_on_a_full_disk_is_not_an_unexpected_runtime_error(tmp_path, capsys, monkeypatch):
    """torch.save's own writer reports ENOSPC as "[enforce fail at inline_container.cc] unexpected pos"."""
    fill_disk(monkeypatch, {"checkpoint.pt"})
    code, _, err = cli(capsys, "run", "--strategy", "random", "--out", tmp_path / "run", *TINY)
    assert_one_line(code, err, "the disk is full: could not write")
    assert "checkpoint.pt" in err and "RuntimeError" not in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    no_temp_files(tmp_path / "run")


def test_query_and_label_files_on_a_full_disk(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        fill_disk(m, {"initial.csv"})
        code, _, err = cli(capsys, "run", "--oracle", "files", "--strategy", "random", "--out", out, *TINY)
    assert_one_line(code, err, "the disk is full")
    code, _, err = cli(capsys, "run", "--oracle", "files", "--strategy", "random", "--out", out, *TINY)
    assert code == 0, err
    rows = (out / "queries" / "initial.csv").read_text().splitlines()[1:]
    y = load_dataset("digits").y_train.numpy()
    answers = tmp_path / "answers.csv"
    answers.write_text("id,label\n" + "".join(f"{r.split(',')[0]},{y[int(r.split(',')[0])]}\n" for r in rows))
    with monkeypatch.context() as m:
        fill_disk(m, {"initial.csv"})
        code, _, err = cli(capsys, "label", out, "--from", answers)
    assert_one_line(code, err, "the disk is full")
    assert not (out / "labels" / "initial.csv").exists()
    no_temp_files(out)


def _grid(tmp_path):
    proto = tmp_path / "p.toml"
    proto.write_text('name = "g"\nstrategies = ["random", "margin"]\nseeds = 2\n[run]\ninitial = 10\nquery = 5\n'
                     'rounds = 1\nepochs = 1\nmin_steps = 3\nsubset = 100\n')
    return proto


@pytest.mark.parametrize("name", ["bench.json", "summary.csv"])
def test_bench_files_on_a_full_disk(tmp_path, capsys, monkeypatch, name):
    grid = tmp_path / "grid"
    with monkeypatch.context() as m:
        fill_disk(m, {name})
        code, _, err = cli(capsys, "bench", "--protocol", _grid(tmp_path), "--out", grid, "-q")
    assert_one_line(code, err, "the disk is full")
    assert name in err
    no_temp_files(grid)
    code, _, err = cli(capsys, "bench", "--protocol", _grid(tmp_path), "--out", grid, "-q")
    assert code == 0, err  # with space again it completes where it stopped


@pytest.fixture(scope="module")
def finished_grid(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grid")
    with pytest.raises(SystemExit) as exc:
        from entk_al.cli import main

        main([str(a) for a in ("bench", "--protocol", _grid(tmp), "--out", tmp / "grid", "-q", "--no-plot")])
    assert exc.value.code == 0
    return tmp / "grid"


@pytest.mark.parametrize("name", ["curves.png", "summary.csv", "penalty.png", "paired.csv", "paired.png"])
def test_plot_files_on_a_full_disk(finished_grid, tmp_path, capsys, monkeypatch, name):
    with monkeypatch.context() as m:
        fill_disk(m, {name})
        code, _, err = cli(capsys, "plot", finished_grid, "--out", tmp_path)
    assert_one_line(code, err, "the disk is full")
    assert name in err
    no_temp_files(tmp_path)


def test_fidelity_and_approx_files_on_a_full_disk(tmp_path, capsys, monkeypatch):
    fill_disk(monkeypatch)
    code, _, err = cli(capsys, "fidelity", "--candidates", "3", "--eval-size", "20", "--initial", "10", "--epochs",
                       "1", "--min-steps", "3", "--out", tmp_path / "f", "-q")
    assert_one_line(code, err, "the disk is full")
    assert "fidelity.json" in err
    code, _, err = cli(capsys, "approx", "--widths", "8", "--checkpoints", "init", "--n-points", "10", "--subsets",
                       "1", "--kr-labels", "10", "--eval-size", "10", "--cost-sizes", "8", "--out", tmp_path / "a",
                       "-q")
    assert_one_line(code, err, "the disk is full")
    assert "approx.json" in err


# -- a read-only folder ---------------------------------------------------------------------
@pytest.mark.parametrize("how", ["chmod", "mount"])
def test_resume_in_a_read_only_folder_says_so(tmp_path, capsys, monkeypatch, restore_permissions, how):
    out = tmp_path / "run"
    code, _, err = cli(capsys, "run", "--strategy", "random", "--out", out, *TINY)
    assert code == 0, err
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    make_read_only(monkeypatch, out, how)
    code, _, err = cli(capsys, "run", "--resume", out, "--rounds", "2", "-q")
    assert_one_line(code, err, "read-only")
    assert str(out) in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("how", ["chmod", "mount"])
def test_every_writing_command_in_a_read_only_folder_says_so(tmp_path, capsys, monkeypatch, restore_permissions,
                                                              how):
    grid = tmp_path / "grid"
    code, _, err = cli(capsys, "bench", "--protocol", _grid(tmp_path), "--out", grid, "-q", "--no-plot")
    assert code == 0, err
    labelled = tmp_path / "lab"
    code, _, err = cli(capsys, "run", "--oracle", "files", "--strategy", "random", "--out", labelled, *TINY)
    assert code == 0, err
    first = (labelled / "queries" / "initial.csv").read_text().splitlines()[1].split(",")[0]
    answers = tmp_path / "answers.csv"
    answers.write_text(f"id,label\n{first},0\n")
    ro = tmp_path / "ro"
    ro.mkdir()
    make_read_only(monkeypatch, tmp_path, how)
    cases = [
        ["run", "--strategy", "random", "--out", ro / "new", *TINY],
        ["plot", grid],
        ["bench", "--protocol", tmp_path / "p.toml", "--out", grid, "-q"],
        ["label", labelled, "--from", answers],
        ["fidelity", "--candidates", "3", "--eval-size", "20", "--out", ro / "f", "-q"],
        ["approx", "--widths", "8", "--checkpoints", "init", "--out", ro / "a", "-q"],
    ]
    for args in cases:
        code, _, err = cli(capsys, *args)
        assert_one_line(code, err, "read-only")


def test_storage_error_names_the_cause_and_ignores_other_errors(tmp_path):
    full = fileio.storage_error(OSError(errno.ENOSPC, "No space left on device", "x"), tmp_path / "a.json")
    assert "disk is full" in str(full) and "a.json" in str(full) and full.errno == errno.ENOSPC
    ro = fileio.storage_error(PermissionError(errno.EACCES, "Permission denied", str(tmp_path)))
    assert "read-only" in str(ro) and ro.errno == errno.EACCES
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as inner:
            raise RuntimeError("unexpected pos 64 vs 0") from inner
    except RuntimeError as outer:
        assert "disk is full" in str(fileio.storage_error(outer, "ckpt.pt"))
    assert fileio.storage_error(OSError(errno.ENOENT, "No such file")) is None
    assert fileio.storage_error(ValueError("bad")) is None


def test_a_failed_write_keeps_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    fileio.write_json(path, {"a": list(range(5))})
    fill_disk(monkeypatch)
    with pytest.raises(fileio.StorageError):
        fileio.write_json(path, {"a": np.arange(10_000)})
    assert json.loads(path.read_text()) == {"a": list(range(5))}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
