"""Summary metrics of learning curves."""

from __future__ import annotations

from typing import Iterable

import numpy as np


def aubc(accuracies: Iterable[float | None]) -> float | None:
    """Area under the budget curve: the mean of ``accuracies`` (one test accuracy per round).

    Source: Lüth et al. 2023 (AUBC). Returns NaN for no rounds, and None when a round has no
    accuracy (None: a run without a test split, which has no learning curve to summarize).
    """
    values = list(accuracies)
    if any(a is None for a in values):
        return None
    acc = np.asarray(values, dtype=np.float64)
    return float(acc.mean()) if acc.size else float("nan")
