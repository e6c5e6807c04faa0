"""Datasets: a pool (train split) and a held-out test split, in memory.

``load_dataset(spec)`` resolves a name from :data:`DATASETS`, or a ``numpy:PATH.npz`` /
``folder:PATH`` spec for your own data, optionally followed by pool options
(``+imbalance=0.1``, ``+repeat=5``, ...; :mod:`entk_al.data.pool_transforms`).
"""

from __future__ import annotations

from typing import Callable

from ..errors import ConfigError
from .base import ALDataset
from .digits import load_digits_dataset
from .folder import load_folder_dataset
from .idx import load_idx_dataset, read_idx
from .numpy import load_numpy_dataset
from .pool_transforms import split_pool_spec, transform_pool
from .torchvision_sets import load_cifar, load_svhn

#: name -> loader(data_dir, download) -> ALDataset
DATASETS: dict[str, Callable[[str | None, bool], ALDataset]] = {
    "digits": lambda data_dir, download: load_digits_dataset(),
    "fashion-mnist": lambda data_dir, download: load_idx_dataset("fashion-mnist", data_dir, download=download),
    "mnist": lambda data_dir, download: load_idx_dataset("mnist", data_dir, download=download),
    "cifar10": lambda data_dir, download: load_cifar("cifar10", data_dir, download=download),
    "cifar100": lambda data_dir, download: load_cifar("cifar100", data_dir, download=download),
    "svhn": lambda data_dir, download: load_svhn(data_dir, download=download),
}
#: Other spellings accepted on the command line (torchvision class names and the like).
ALIASES = {"fashionmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "cifar-10": "cifar10",
           "cifar-100": "cifar100"}
#: ``prefix:PATH`` specs for your own data.
PREFIXES: dict[str, Callable[[str], ALDataset]] = {"numpy": load_numpy_dataset, "folder": load_folder_dataset}


def load_dataset(spec: str, data_dir: str | None = None, download: bool = False) -> ALDataset:
    """Load a dataset by name or by ``numpy:PATH.npz`` / ``folder:PATH``, with optional pool options.

    Args:
        spec: a name from :data:`DATASETS` (case-insensitive; torchvision class names such
            as ``FashionMNIST`` work too), or ``numpy:PATH.npz`` (arrays x_train, y_train,
            x_test, y_test), or ``folder:PATH`` (ImageFolder layout); then optionally
            ``+key=value`` pool options (``subsample``, ``imbalance``, ``minority``,
            ``repeat``, ``seed``; :mod:`entk_al.data.pool_transforms`), e.g.
            ``fashion-mnist+imbalance=0.1``.
        data_dir: folder to search for files (named datasets that read from disk).
        download: allow fetching with torchvision when the files are missing.

    Raises:
        ConfigError: unknown dataset name, prefix or pool option, or a pool option out of range.
        DataNotFoundError: the dataset's files are missing.
        DataFormatError: the files exist but are malformed.
    """
    base, pool_options = split_pool_spec(spec, tuple(PREFIXES))
    return transform_pool(_load_base(base, data_dir, download), spec, pool_options)


def _load_base(spec: str, data_dir: str | None, download: bool) -> ALDataset:
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in PREFIXES:
        if not rest:
            raise ConfigError(f"--dataset {spec}: give a path after '{prefix}:'")
        return PREFIXES[prefix](rest)
    name = spec.lower()
    name = ALIASES.get(name, name)
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {spec!r}; choose from {', '.join(sorted(DATASETS))}, "
                          f"or give numpy:PATH.npz or folder:PATH (then optionally +imbalance=F, +repeat=R, ...)")
    return DATASETS[name](data_dir, download)


__all__ = ["ALDataset", "DATASETS", "load_dataset", "read_idx", "load_idx_dataset", "load_digits_dataset",
           "load_numpy_dataset", "load_folder_dataset", "load_cifar", "load_svhn"]
