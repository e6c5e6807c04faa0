"""BALD with Monte-Carlo dropout: query the points the posterior's samples disagree on most.

Score (Houlsby et al. 2011, "Bayesian Active Learning for Classification and Preference
Learning", Eq. 3; MC-dropout estimate of Gal, Islam & Ghahramani 2017, "Deep Bayesian
Active Learning with Image Data", Eq. 4):

    BALD(x) = H[ (1/T) Σ_t p_t(x) ] − (1/T) Σ_t H[ p_t(x) ]        (nats)

with p_t the softmax under the t-th dropout mask.

Where the dropout lives:
* model without ``nn.Dropout``: dropout (rate ``p``, inverted scaling 1/(1−p)) is applied to
  the penultimate features h (the input of the last ``nn.Linear``), so p_t = softmax(W·(m_t⊙h)/(1−p) + b).
  Only the readout is re-evaluated; the masks of each tile of the executor's plan come from
  its own (seed, round, tile) stream, so they do not depend on how tiles are spread.
* model with ``nn.Dropout`` modules: those modules (only) are switched to train mode for T
  full forward passes per tile under a forked global RNG seeded from (seed, round, tile);
  every module's mode is restored afterwards and no weight is touched.

Scores run tile by tile on the round's executor (:func:`entk_al.scans.outputs.top_scores`).
"""

from __future__ import annotations

import warnings

import numpy as np
from torch import nn

from entk_al.lookahead.uncertainty import bald_from_samples
from entk_al.round.context import RoundContext

from .scoring import executor_top_k

__all__ = ["bald_from_samples", "BALDSampling"]


class BALDSampling:
    """Top-k candidates by BALD under MC dropout.

    Args:
        samples: T, the number of MC-dropout samples (≥ 2).
        dropout: p, the dropout rate in [0, 1) used when the model has no dropout layer.
        chunk_size: deprecated and ignored (removed in 0.3; a FutureWarning when given): scores
            run per tile of the executor's plan, peak extra memory T·tile·(H + O) floats.
    """

    name = "bald"
    description = "BALD mutual information under MC dropout (Gal et al. 2017)"

    def __init__(self, samples: int = 20, dropout: float = 0.5, chunk_size: int | None = None):
        if samples < 2:
            raise ValueError(f"samples must be >= 2, got {samples}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if chunk_size is not None:
            warnings.warn("bald option 'chunk_size' is ignored (scores run per tile) and will be removed in 0.3",
                          FutureWarning, stacklevel=2)
        self.samples, self.dropout = int(samples), float(dropout)

    def select(self, ctx: RoundContext, k: int) -> np.ndarray:
        has_dropout = any(isinstance(m, nn.modules.dropout._DropoutNd) for m in ctx.model.modules())
        ids, got = executor_top_k(ctx, "bald", k, samples=self.samples, dropout=self.dropout,
                                  model_dropout=has_dropout)
        ctx.info.update(bald_max=float(got["scores"][0]), bald_mean=float(got["mean"]),
                        dropout_site="model" if has_dropout else "penultimate")
        return ids

    def __repr__(self) -> str:
        return f"BALDSampling(samples={self.samples}, dropout={self.dropout})"
