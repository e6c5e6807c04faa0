"""Reproducible variants of a dataset's pool: ``NAME+key=value[+key=value...]``.

For regime studies (where do strategies help?) the pool can be made class-imbalanced,
redundant or smaller without new files; the test split is never changed, so accuracy stays
comparable with the unchanged dataset. Options (any order in the spec; applied in this order):

- ``subsample=N``: keep N pool items, drawn uniformly without replacement.
- ``imbalance=F``: the minority classes keep a fraction F ∈ (0, 1] of their items (at least
  one each), drawn uniformly without replacement; the other classes keep all of theirs.
- ``minority=M``: how many classes are minority classes (default ⌊O/2⌋), drawn uniformly
  among the O classes. Only with ``imbalance``.
- ``repeat=R``: every pool item appears R times: copy j of item i has pool id i + j·N
  (a redundant pool, as in BatchBALD's Repeated MNIST, Kirsch et al., NeurIPS 2019).
- ``seed=S``: the pool's own seed (default 0), not the run's: every run seed sees the same pool.

Every draw comes from the (S, -1, "pool-…") streams of :mod:`entk_al.seeding`, and kept items
stay in their original order. Example: ``fashion-mnist+imbalance=0.1`` (half the classes at
10 % of their items), ``fashion-mnist+subsample=800+repeat=5`` (800 items, each 5 times).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError
from ..seeding import POOL_IMBALANCE, POOL_MINORITY, POOL_SUBSAMPLE, numpy_rng
from .base import ALDataset

#: option -> (type, meaning) of the pool options, in the order they are applied.
POOL_OPTIONS = {"subsample": int, "imbalance": float, "minority": int, "repeat": int, "seed": int}


def split_pool_spec(spec: str, path_prefixes: tuple[str, ...] = ()) -> tuple[str, dict[str, int | float]]:
    """(base dataset spec, pool options) of ``NAME+key=value[+...]``.

    Trailing ``+key=value`` parts are peeled off the right end; for a ``prefix:PATH`` spec
    (``path_prefixes``), a part whose key is not a pool option belongs to the path.

    Args:
        spec: the dataset spec as given (``--dataset``).
        path_prefixes: spec prefixes whose rest is a file path (``numpy``, ``folder``).

    Raises:
        ConfigError: an unknown or repeated option, or a value of the wrong type.
    """
    base, raw = spec, {}
    while True:
        head, sep, tail = base.rpartition("+")
        key, eq, value = tail.partition("=")
        if not sep or not eq:
            break
        key = key.strip().lower()
        if key not in POOL_OPTIONS:
            if head.partition(":")[0] in path_prefixes:
                break
            raise ConfigError(f"--dataset {spec}: unknown pool option {key!r}; "
                              f"choose from {', '.join(POOL_OPTIONS)}")
        if key in raw:
            raise ConfigError(f"--dataset {spec}: pool option {key!r} given twice")
        raw[key], base = value.strip(), head
    opts: dict[str, int | float] = {}
    for key, value in raw.items():
        kind = POOL_OPTIONS[key]
        try:
            opts[key] = kind(value)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise ConfigError(f"--dataset {spec}: pool option {key} must be {what}, got {value!r}") from None
    return base, opts


def _check(spec: str, opts: dict[str, int | float], pool_size: int, num_classes: int) -> None:
    def bad(msg: str) -> ConfigError:
        return ConfigError(f"--dataset {spec}: {msg}")

    if "subsample" in opts and not 1 <= opts["subsample"] <= pool_size:
        raise bad(f"subsample must be in [1, {pool_size}] (the pool size), got {opts['subsample']}")
    if "imbalance" in opts and not (0.0 < opts["imbalance"] <= 1.0):
        raise bad(f"imbalance must be a fraction in (0, 1], got {opts['imbalance']}")
    if "minority" in opts:
        if "imbalance" not in opts:
            raise bad("minority needs imbalance=F (the fraction the minority classes keep)")
        if not 1 <= opts["minority"] < num_classes:
            raise bad(f"minority must be in [1, {num_classes - 1}], got {opts['minority']}")
    if "repeat" in opts and opts["repeat"] < 1:
        raise bad(f"repeat must be >= 1, got {opts['repeat']}")
    if "seed" in opts and not 0 <= opts["seed"] < 2**63:
        raise bad(f"seed must be in [0, 2**63), got {opts['seed']}")


def pool_ids(y: np.ndarray, num_classes: int, opts: dict[str, int | float]) -> tuple[np.ndarray, np.ndarray]:
    """(original pool ids of the new pool, in new-id order; the minority classes, sorted).

    Args:
        y: (N,) int64 labels of the original pool.
        num_classes: O.
        opts: pool options from :func:`split_pool_spec` (already checked).
    """
    seed = int(opts.get("seed", 0))
    ids = np.arange(len(y))
    if "subsample" in opts:
        ids = np.sort(numpy_rng(seed, -1, POOL_SUBSAMPLE).choice(ids, int(opts["subsample"]), replace=False))
    minority = np.zeros(0, dtype=np.int64)
    if "imbalance" in opts:
        m = int(opts.get("minority", num_classes // 2))
        minority = np.sort(numpy_rng(seed, -1, POOL_MINORITY).permutation(num_classes)[:m])
        keep = np.ones(len(ids), dtype=bool)
        rng = numpy_rng(seed, -1, POOL_IMBALANCE)
        for c in minority.tolist():
            members = np.flatnonzero(y[ids] == c)
            if len(members) == 0:
                continue
            n_keep = max(1, int(round(float(opts["imbalance"]) * len(members))))
            kept = rng.choice(members, n_keep, replace=False)
            keep[members] = False
            keep[kept] = True
        ids = ids[keep]
    if "repeat" in opts:
        ids = np.tile(ids, int(opts["repeat"]))
    return ids, minority


def transform_pool(data: ALDataset, spec: str, opts: dict[str, int | float]) -> ALDataset:
    """``data`` with its pool rebuilt by ``opts`` (:func:`split_pool_spec`); the test split is unchanged.

    Args:
        data: the loaded base dataset.
        spec: the full spec (the new dataset's name, and named in errors).
        opts: pool options.

    Returns:
        a new :class:`ALDataset` whose ``sources`` name each item's original source
        (``… copy j`` for repeats).

    Raises:
        ConfigError: an option out of range.
    """
    if not opts:
        return data
    _check(spec, opts, data.pool_size, data.num_classes)
    ids, _ = pool_ids(data.y_train.numpy(), data.num_classes, opts)
    index = torch.from_numpy(ids)
    n_unique = len(ids) // int(opts.get("repeat", 1))
    sources = [data.source_of(int(i)) + (f" copy {p // n_unique}" if p >= n_unique else "")
               for p, i in enumerate(ids.tolist())]
    return ALDataset(name=spec, x_train=data.x_train[index], y_train=data.y_train[index], x_test=data.x_test,
                     y_test=data.y_test, num_classes=data.num_classes, classes=list(data.classes), sources=sources)
