"""Cheap per-point acquisition scores from softmax probabilities (no kernel, no labels).

Used by the built-in strategies (``strategies/uncertainty.py``, ``strategies/bald.py``) and
computed tile by tile by the executors (:mod:`entk_al.scans.outputs`). Every score is
float64, higher = more informative.
Sources: Settles, "Active Learning Literature Survey" (2009), Sec. 3.1 (entropy, margin,
least confidence); Houlsby et al. 2011, Eq. 3 and Gal, Islam & Ghahramani 2017, Eq. 4 (BALD).
"""

from __future__ import annotations

import torch

#: Scores an executor can compute per tile from the model's outputs alone.
CHEAP_SCORES = ("entropy", "margin", "least_confidence")


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) over the last axis of probabilities ``p`` (…, O); 0·log 0 counts as 0."""
    return -(p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))).sum(dim=-1)


def cheap_score(kind: str, probs: torch.Tensor) -> torch.Tensor:
    """Score of each row of ``probs`` (N, O) (cast to float64): (N,) float64.

    ``entropy`` −Σ p log p (nats); ``margin`` −(p_(1) − p_(2)); ``least_confidence`` 1 − max p.

    Raises:
        ValueError: unknown ``kind``.
    """
    p = probs.double()
    if kind == "entropy":
        return entropy(p)
    if kind == "margin":
        top2 = p.topk(2, dim=1).values
        return -(top2[:, 0] - top2[:, 1])
    if kind == "least_confidence":
        return 1.0 - p.max(dim=1).values
    raise ValueError(f"unknown score {kind!r}; choose from {', '.join(CHEAP_SCORES)}")


def bald_from_samples(probs: torch.Tensor) -> torch.Tensor:
    """BALD mutual information from MC samples.

    Args:
        probs: (T, N, O) class probabilities, one slice per MC sample.
    Returns:
        (N,) float64 scores in nats, ≥ 0 up to rounding (Gal et al. 2017, Eq. 4).
    """
    probs = probs.double()
    return entropy(probs.mean(dim=0)) - entropy(probs).mean(dim=0)
