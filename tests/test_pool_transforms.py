"""Pool options of a dataset spec (``digits+imbalance=0.1``, ``+repeat=5``, ...): counts per class
against the unchanged dataset, copies equal to their originals, reproducible draws, the test
split untouched, and one-line errors for bad specs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from clitools import cli

from entk_al.data import load_dataset
from entk_al.data.pool_transforms import split_pool_spec
from entk_al.errors import ConfigError


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _rows(x):
    return {tuple(r.flatten().tolist()) for r in x}


def test_imbalance_keeps_a_fraction_of_half_the_classes(digits):
    data = load_dataset("digits+imbalance=0.1")
    before = np.bincount(digits.y_train.numpy(), minlength=10)
    after = np.bincount(data.y_train.numpy(), minlength=10)
    reduced = np.flatnonzero(after < before)
    assert len(reduced) == 5  # ⌊10/2⌋ minority classes
    assert (after[reduced] == np.round(0.1 * before[reduced])).all()
    full = np.setdiff1d(np.arange(10), reduced)
    assert (after[full] == before[full]).all()
    # every kept item is an original item with its label; the test split is unchanged
    label_of = {tuple(r.flatten().tolist()): int(y) for r, y in zip(digits.x_train, digits.y_train)}
    assert all(label_of[tuple(r.flatten().tolist())] == int(y) for r, y in zip(data.x_train, data.y_train))
    assert torch.equal(data.x_test, digits.x_test) and torch.equal(data.y_test, digits.y_test)
    assert data.name == "digits+imbalance=0.1" and data.pool_size == int(after.sum())


def test_minority_and_seed_choose_reproducibly(digits):
    a = load_dataset("digits+imbalance=0.2+minority=3")
    b = load_dataset("digits+minority=3+imbalance=0.2")  # order in the spec does not matter
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    before = np.bincount(digits.y_train.numpy(), minlength=10)
    assert (np.bincount(a.y_train.numpy(), minlength=10) < before).sum() == 3
    c = load_dataset("digits+imbalance=0.2+minority=3+seed=7")
    assert not torch.equal(a.y_train, c.y_train)  # another pool seed: other classes / items


def test_repeat_tiles_the_pool_and_names_the_copies(digits):
    data = load_dataset("digits+repeat=3")
    n = digits.pool_size
    assert data.pool_size == 3 * n
    for j in range(3):
        assert torch.equal(data.x_train[j * n:(j + 1) * n], digits.x_train)
        assert torch.equal(data.y_train[j * n:(j + 1) * n], digits.y_train)
    assert data.source_of(0) == digits.source_of(0) and data.source_of(2 * n + 5) == digits.source_of(5) + " copy 2"


def test_subsample_then_repeat(digits):
    data = load_dataset("digits+subsample=100+repeat=5")
    assert data.pool_size == 500
    uniq = data.x_train[:100]
    assert len(_rows(uniq)) == len(_rows(data.x_train))  # 100 distinct items (digits has no exact duplicates)
    assert all(torch.equal(data.x_train[j * 100:(j + 1) * 100], uniq) for j in range(5))
    assert _rows(uniq) <= _rows(digits.x_train)
    assert torch.equal(load_dataset("digits+subsample=100+repeat=5").x_train, data.x_train)


def test_paths_with_plus_signs_stay_paths(tmp_path):
    path = tmp_path / "a+b.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.random((20, 3), dtype=np.float32), y_train=np.arange(20) % 2,
             x_test=rng.random((4, 3), dtype=np.float32), y_test=np.arange(4) % 2)
    assert split_pool_spec(f"numpy:{path}", ("numpy",)) == (f"numpy:{path}", {})
    data = load_dataset(f"numpy:{path}+repeat=2")
    assert data.pool_size == 40


@pytest.mark.parametrize("spec,match", [
    ("digits+imbalance=2", "imbalance must be a fraction"),
    ("digits+imbalance=0", "imbalance must be a fraction"),
    ("digits+repeat=0", "repeat must be >= 1"),
    ("digits+repeat=two", "must be an integer"),
    ("digits+subsample=100000", "subsample must be in"),
    ("digits+minority=3", "minority needs imbalance"),
    ("digits+imbalance=0.5+minority=10", "minority must be in"),
    ("digits+shuffle=1", "unknown pool option 'shuffle'"),
    ("digits+repeat=2+repeat=3", "given twice"),
])
def test_bad_pool_options(spec, match):
    with pytest.raises(ConfigError, match=match):
        load_dataset(spec)


def test_cli_names_a_bad_pool_option_in_one_line(capsys, tmp_path):
    code, _, err = cli(capsys, "run", "--dataset", "digits+repeat=0", "--rounds", "1", "-q", "--out", tmp_path / "r")
    assert code == 2 and "repeat must be >= 1" in err and err.count("\n") == 1, err


def test_a_run_on_a_redundant_pool_queries_pool_ids_of_it(tmp_path):
    from entk_al.run.config import RunConfig
    from entk_al.run.loop import run_experiment

    cfg = RunConfig(strategy="margin", dataset="digits+subsample=60+repeat=5", width=8, initial=10, query=5, rounds=2,
                    subset=300, epochs=1, min_steps=5, device="cpu")
    records = run_experiment(cfg, tmp_path / "run")
    queried = [i for r in records for i in r["queried"]]
    assert len(queried) == 10 and max(queried) < 300
