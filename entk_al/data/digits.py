"""scikit-learn's embedded handwritten digits (8x8), the default dataset."""

from __future__ import annotations

import numpy as np
import torch

from .base import ALDataset

#: Fixed split: the same 75/25 stratified train/test split for every run and seed.
TEST_FRACTION = 0.25
SPLIT_SEED = 0


def load_digits_dataset() -> ALDataset:
    """Load ``sklearn.datasets.load_digits`` as (N, 1, 8, 8) float32 in [0, 1].

    The train/test split is stratified and fixed (``SPLIT_SEED``), independent of the run
    seed, so that every run and strategy is evaluated on the same 450 test images.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y)
    tr.sort()
    te.sort()
    return ALDataset(
        name="digits",
        x_train=torch.from_numpy(x[tr]),
        y_train=torch.from_numpy(y[tr]),
        x_test=torch.from_numpy(x[te]),
        y_test=torch.from_numpy(y[te]),
        num_classes=10,
        sources=[f"digits[{i}]" for i in tr],
    )
