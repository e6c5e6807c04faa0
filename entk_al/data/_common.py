"""Helpers shared by the file-format loaders: data roots, scaling, standardization."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DataFormatError


def candidate_roots(data_dir: str | None, sub: str) -> list[Path]:
    """Folders to search, in order: ``data_dir`` and ``$ENTK_AL_DATA``, each also with ``sub/``."""
    roots: list[Path] = []
    for base in (data_dir, os.environ.get("ENTK_AL_DATA")):
        if base:
            roots += [Path(base), Path(base) / sub]
    return roots


def to_float(x: np.ndarray, what: str) -> np.ndarray:
    """Cast inputs to float32; uint8 pixels are scaled to [0, 1].

    Raises:
        DataFormatError: non-numeric or non-finite values.
    """
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DataFormatError(f"{what}: inputs must be numeric, got dtype {x.dtype}")
    out = x.astype(np.float32) / (255.0 if x.dtype == np.uint8 else 1.0)
    if not np.isfinite(out).all():
        raise DataFormatError(f"{what}: inputs contain NaN or infinite values")
    return out


def standardize_images(x_train: np.ndarray, x_test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel standardization of (N, C, H, W) float32 with the train split's mean and std.

    Statistics come from the train split only, so the test split stays held out.
    """
    axes = (0, 2, 3)
    mean = x_train.mean(axis=axes, keepdims=True)
    std = x_train.std(axis=axes, keepdims=True)
    std = np.where(std > 0, std, 1.0).astype(np.float32)
    return (torch.from_numpy(((x_train - mean) / std).astype(np.float32)),
            torch.from_numpy(((x_test - mean) / std).astype(np.float32)))


def check_labels(y: np.ndarray, what: str, num_classes: int | None = None, allow_unknown: bool = False) -> np.ndarray:
    """Labels as (N,) int64 in [0, num_classes); -1 (unknown) too if ``allow_unknown``.

    Raises:
        DataFormatError: not 1-D integers, or out of range.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataFormatError(f"{what}: labels must be 1-D, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise DataFormatError(f"{what}: labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    low = -1 if allow_unknown else 0
    if y.size and y.min() < low:
        raise DataFormatError(f"{what}: labels must be >= {low}, found {int(y.min())}")
    if num_classes is not None and y.size and y.max() >= num_classes:
        raise DataFormatError(f"{what}: label {int(y.max())} is out of range for {num_classes} classes")
    return y
