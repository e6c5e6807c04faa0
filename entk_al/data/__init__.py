"""Datasets: a pool (train split) and a held-out test split, in memory.

``load_dataset(spec)`` resolves a dataset name from :data:`DATASETS`.
"""

from __future__ import annotations

from typing import Callable

from ..errors import ConfigError
from .base import ALDataset
from .digits import load_digits_dataset
from .idx import load_idx_dataset, read_idx

#: name -> loader(data_dir, download) -> ALDataset
DATASETS: dict[str, Callable[[str | None, bool], ALDataset]] = {
    "digits": lambda data_dir, download: load_digits_dataset(),
    "fashion-mnist": lambda data_dir, download: load_idx_dataset("fashion-mnist", data_dir, download=download),
    "mnist": lambda data_dir, download: load_idx_dataset("mnist", data_dir, download=download),
}


def load_dataset(spec: str, data_dir: str | None = None, download: bool = False) -> ALDataset:
    """Load a dataset by name.

    Args:
        spec: a name from :data:`DATASETS`.
        data_dir: folder to search for files (datasets that read from disk).
        download: allow fetching with torchvision when the files are missing.

    Raises:
        ConfigError: unknown dataset name.
        DataNotFoundError: the dataset's files are missing.
    """
    if spec not in DATASETS:
        raise ConfigError(f"unknown dataset {spec!r}; choose from {', '.join(sorted(DATASETS))}")
    return DATASETS[spec](data_dir, download)


__all__ = ["ALDataset", "DATASETS", "load_dataset", "read_idx", "load_idx_dataset", "load_digits_dataset"]
