"""Summary metrics of learning curves."""

from __future__ import annotations

from typing import Iterable

import numpy as np


def aubc(accuracies: Iterable[float]) -> float:
    """Area under the budget curve: the mean test accuracy over rounds (Lüth et al. 2023)."""
    acc = np.asarray(list(accuracies), dtype=np.float64)
    return float(acc.mean()) if acc.size else float("nan")
