"""Two commands on one run folder: the second stops in one line naming the folder and the
holder's pid (exit 2); a lock left by a killed process is taken over (issue 19, item 4)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clitools import cli

from entk_al.errors import RunFolderInUseError
from entk_al.runlock import LOCK_NAME, run_folder_lock

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--initial", "10", "--query", "5", "--rounds", "1", "--epochs", "1", "--min-steps", "3", "--subset", "100",
        "-q"]
pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the lock uses fcntl (POSIX)")


def env():
    return dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                OMP_NUM_THREADS="1", ENTK_AL_DEBUG="")


def wait_for(predicate, what, proc=None, timeout=120.0):
    end = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process ended first: {proc.communicate()}")
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that takes ``folder``'s lock and keeps it until killed."""
    code = ("import sys, time\nfrom entk_al.runlock import run_folder_lock\n"
            "with run_folder_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(300)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True, env=env())
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_two_runs_on_one_folder_the_second_stops_naming_the_first(tmp_path):
    """Two real `entk-al run` processes: the one that comes second gets one line and exit 2,
    and the folder holds the first run's results only."""
    started, release = tmp_path / "started", tmp_path / "release"
    (tmp_path / "slow.py").write_text(
        "import time\nfrom pathlib import Path\n"
        "class Slow:\n    name = 'slow'\n"
        "    def select(self, ctx, k):\n"
        f"        Path({str(started)!r}).touch()\n"
        "        end = time.monotonic() + 120\n"
        f"        while not Path({str(release)!r}).exists() and time.monotonic() < end:\n"
        "            time.sleep(0.05)\n"
        "        return ctx.candidate_ids[:k]\n")
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "entk_al", "run", "--strategy", f"{tmp_path / 'slow.py'}:Slow",
                              "--out", str(out), *TINY], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env())
    try:
        wait_for(started.exists, "the first run to reach its first query", first)
        second = subprocess.run([sys.executable, "-m", "entk_al", "run", "--strategy", "random", "--out", str(out),
                                 *TINY], capture_output=True, text=True, env=env(), timeout=300)
        assert second.returncode == 2, second.stderr
        assert second.stderr.count("\n") == 1 and second.stderr.startswith("error: "), second.stderr
        assert str(out) in second.stderr and f"pid {first.pid}" in second.stderr, second.stderr
        assert "in use" in second.stderr
    finally:
        release.touch()
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert json.loads((out / "config.json").read_text())["strategy"].endswith("slow.py:Slow")
    assert len((out / "rounds.jsonl").read_text().splitlines()) == 2
    assert not (out / LOCK_NAME).exists()  # let go on exit


def test_resume_label_and_bench_cells_wait_for_no_one(tmp_path, capsys):
    """--resume, label and a bench cell on a folder another process holds: one line, exit 2,
    nothing written; once the holder is killed (its lock file left behind) they go ahead."""
    out = tmp_path / "run"
    code, _, err = cli(capsys, "run", "--oracle", "files", "--strategy", "random", "--out", out, *TINY)
    assert code == 0, err
    first = (out / "queries" / "initial.csv").read_text().splitlines()[1:]
    answers = tmp_path / "answers.csv"
    answers.write_text("id,label\n" + "".join(f"{row.split(',')[0]},0\n" for row in first))
    proto = tmp_path / "p.toml"
    proto.write_text('name = "g"\nstrategies = ["random"]\nseeds = 1\n[run]\ninitial = 10\nquery = 5\nrounds = 1\n'
                     'epochs = 1\nmin_steps = 3\nsubset = 100\n')
    cell = tmp_path / "grid" / "random-q5-seed0"
    holders = [hold_lock(out), hold_lock(cell)]
    try:
        before = sorted(p.name for p in out.rglob("*"))
        for args, folder, holder in ((["label", out, "--from", answers], out, holders[0]),
                                     (["run", "--resume", out, "-q"], out, holders[0]),
                                     (["run", "--out", out, "--overwrite", *TINY], out, holders[0]),
                                     (["bench", "--protocol", proto, "--out", tmp_path / "grid", "-q"], cell,
                                      holders[1])):
            code, _, err = cli(capsys, *args)
            assert code == 2 and err.count("\n") == 1, err
            assert str(folder) in err and f"pid {holder.pid}" in err, err
        assert sorted(p.name for p in out.rglob("*")) == before  # nothing written, nothing removed
    finally:
        for h in holders:
            h.send_signal(signal.SIGKILL)  # no chance to clean up: the lock files stay behind
            h.wait()
    assert (out / LOCK_NAME).exists() and (cell / LOCK_NAME).exists()
    # Stale: the kernel let go of the killed holders' locks.
    code, _, err = cli(capsys, "label", out, "--from", answers)
    assert code == 0, err
    code, _, err = cli(capsys, "run", "--resume", out, "-q")
    assert code == 0, err
    code, _, err = cli(capsys, "bench", "--protocol", proto, "--out", tmp_path / "grid", "-q", "--no-plot")
    assert code == 0, err
    assert (cell / "summary.json").is_file() and not (cell / LOCK_NAME).exists()


def test_the_lock_is_reentrant_in_one_process_and_leaves_nothing(tmp_path):
    folder = tmp_path / "new" / "run"
    with run_folder_lock(folder):
        assert (folder / LOCK_NAME).read_text().split()[0] == str(os.getpid())
        with run_folder_lock(folder):  # the CLI holds it, the loop takes it again
            pass
        assert (folder / LOCK_NAME).exists()
    assert not folder.exists()  # created here and left empty: removed again
    folder.mkdir(parents=True)
    with run_folder_lock(folder):
        (folder / "a.txt").write_text("x")
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt"]


def test_a_library_loop_on_a_held_folder_raises(tmp_path):
    from entk_al.run.config import RunConfig
    from entk_al.run.loop import ActiveLearningLoop

    holder = hold_lock(tmp_path / "run")
    try:
        loop = ActiveLearningLoop(RunConfig(strategy="random", initial=10, query=5, rounds=0, epochs=1, min_steps=1),
                                  tmp_path / "run")
        with pytest.raises(RunFolderInUseError, match=f"pid {holder.pid}"):
            loop.run()
    finally:
        holder.kill()
        holder.wait()
