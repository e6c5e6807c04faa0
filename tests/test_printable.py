"""Paths, class names and dataset specs are made printable before they are shown or drawn
(issue 19, item 6): a non-ASCII or undecodable path under ``LC_ALL=C`` must not crash a plot
title ("unexpected TypeError: set_text() ...")."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from entk_al.text import printable

ROOT = Path(__file__).resolve().parents[1]


def test_printable_shows_undecodable_bytes_and_keeps_letters():
    undecodable = os.fsdecode(b"runs/caf\xe9")  # a Latin-1 file name on a UTF-8 file system
    assert printable(undecodable) == "runs/caf\\xe9"
    assert printable("runs/café/数据") == "runs/café/数据"
    assert printable("a\tb\nc\x1b") == "a\\tb\\nc\\x1b"
    assert printable(Path("x y")) == "x y"
    for text in (undecodable, "a\ud800b"):
        printable(text).encode("utf-8")  # strict: raises if a surrogate is left


@pytest.mark.parametrize("name, utf8_mode", [(b"caf\xe9", "1"), (b"caf\xc3\xa9", "0")],
                         ids=["latin1-name", "utf8-name-no-utf8-mode"])
def test_non_ascii_paths_under_an_ascii_locale(tmp_path, name, utf8_mode):
    """LC_ALL=C, with Python's UTF-8 mode (its default there; a Latin-1 name is undecodable) and
    without it (then every non-ASCII byte is): run, a file strategy, a numpy dataset and plot."""
    folder = os.fsencode(tmp_path) + b"/" + name
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    with open(folder + b"/d.npz", "wb") as fh:
        np.savez(fh, x_train=rng.normal(size=(60, 4)).astype(np.float32), y_train=np.arange(60) % 2,
                 x_test=rng.normal(size=(20, 4)).astype(np.float32), y_test=np.arange(20) % 2)
    with open(folder + b"/s.py", "wb") as fh:
        fh.write(b"class First:\n    name = 'first'\n    def select(self, ctx, k):\n"
                 b"        return ctx.candidate_ids[:k]\n")
    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONUTF8=utf8_mode, OMP_NUM_THREADS="1",
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.pop("PYTHONIOENCODING", None)
    run = [sys.executable, "-m", "entk_al", "run", "--strategy", folder + b"/s.py:First", "--dataset",
           b"numpy:" + folder + b"/d.npz", "--out", folder + b"/run", "--initial", "4", "--query", "2", "--rounds",
           "1", "--epochs", "1", "--min-steps", "2", "--subset", "10"]
    got = subprocess.run(run, capture_output=True, env=env, timeout=300)
    assert got.returncode == 0, got.stderr.decode("utf-8", "replace")
    assert os.path.getsize(folder + b"/run/curve.png") > 0
    assert b"results in" in got.stdout
    got = subprocess.run([sys.executable, "-m", "entk_al", "plot", folder, "--view", "overlay", "--view", "panels"],
                         capture_output=True,
                         env=env, timeout=300)
    assert got.returncode == 0, got.stderr.decode("utf-8", "replace")
    assert os.path.getsize(folder + b"/curves.png") > 0 and os.path.getsize(folder + b"/curves_panels.png") > 0
    # An error naming the path is one printable line too.
    got = subprocess.run([sys.executable, "-m", "entk_al", "run", "--dataset", b"numpy:" + folder + b"/none.npz",
                          "--out", folder + b"/r2"], capture_output=True, env=env, timeout=300)
    assert got.returncode == 2 and got.stderr.count(b"\n") == 1, got.stderr
    assert b"does not exist" in got.stderr and b"Traceback" not in got.stderr
