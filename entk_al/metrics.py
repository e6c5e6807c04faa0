"""Summary metrics of learning curves."""

from __future__ import annotations

from typing import Iterable

import numpy as np


def aubc(accuracies: Iterable[float]) -> float:
    """Area under the budget curve: the mean of ``accuracies`` (one test accuracy per round).

    Source: Lüth et al. 2023 (AUBC). Returns NaN for no rounds.
    """
    acc = np.asarray(list(accuracies), dtype=np.float64)
    return float(acc.mean()) if acc.size else float("nan")
