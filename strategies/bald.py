"""BALD with Monte-Carlo dropout: query the points the posterior's samples disagree on most.

Score (Houlsby et al. 2011, "Bayesian Active Learning for Classification and Preference
Learning", Eq. 3; MC-dropout estimate of Gal, Islam & Ghahramani 2017, "Deep Bayesian
Active Learning with Image Data", Eq. 4):

    BALD(x) = H[ (1/T) Σ_t p_t(x) ] − (1/T) Σ_t H[ p_t(x) ]        (nats)

with p_t the softmax under the t-th dropout mask.

Where the dropout lives:
* model without ``nn.Dropout``: dropout (rate ``p``, inverted scaling 1/(1−p)) is applied to
  the penultimate features h (the input of the last ``nn.Linear``), so p_t = softmax(W·(m_t⊙h)/(1−p) + b).
  Only the readout is re-evaluated; masks come from ``ctx.torch_generator``, so the draws
  are seeded by (seed, round, "strategy") and do not depend on the chunk size.
* model with ``nn.Dropout`` modules: those modules (only) are switched to train mode for T
  full forward passes under a forked global RNG seeded from ``ctx.torch_generator``; every
  module's mode is restored afterwards and no weight is touched.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from entk_al.context import RoundContext
from entk_al.models import last_linear

from .scoring import top_k
from .uncertainty import entropy


def bald_from_samples(probs: torch.Tensor) -> torch.Tensor:
    """BALD mutual information from MC samples.

    Args:
        probs: (T, N, O) class probabilities, one slice per MC sample.
    Returns:
        (N,) float64 scores in nats, ≥ 0 up to rounding (Gal et al. 2017, Eq. 4).
    """
    probs = probs.double()
    return entropy(probs.mean(dim=0)) - entropy(probs).mean(dim=0)


class BALDSampling:
    """Top-k candidates by BALD under MC dropout.

    Args:
        samples: T, the number of MC-dropout samples (≥ 2).
        dropout: p, the dropout rate in [0, 1) used when the model has no dropout layer.
        chunk_size: candidates per chunk; peak extra memory is T·chunk·(H + O) floats.
    """

    name = "bald"
    description = "BALD mutual information under MC dropout (Gal et al. 2017)"

    def __init__(self, samples: int = 20, dropout: float = 0.5, chunk_size: int = 2048):
        if samples < 2:
            raise ValueError(f"samples must be >= 2, got {samples}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.samples, self.dropout, self.chunk_size = int(samples), float(dropout), int(chunk_size)

    def select(self, ctx: RoundContext, k: int) -> np.ndarray:
        ids = ctx.candidate_ids
        has_dropout = any(isinstance(m, nn.modules.dropout._DropoutNd) for m in ctx.model.modules())
        scores = self._scores_model_dropout(ctx, ids) if has_dropout else self._scores_feature_dropout(ctx, ids)
        ctx.info.update(bald_max=float(scores.nan_to_num(nan=-torch.inf).max()),
                        bald_mean=float(scores[torch.isfinite(scores)].mean()),
                        dropout_site="model" if has_dropout else "penultimate")
        return top_k(ids, scores, k, ctx)

    @torch.no_grad()
    def _scores_feature_dropout(self, ctx: RoundContext, ids: np.ndarray) -> torch.Tensor:
        head = last_linear(ctx.model)
        w = head.weight.detach().double()
        b = None if head.bias is None else head.bias.detach().double()
        keep = 1.0 - self.dropout
        out = []
        for start in range(0, len(ids), self.chunk_size):
            h = ctx.embeddings(ids[start:start + self.chunk_size]).to(w.dtype)
            # (chunk, T, H) layout, drawn chunk after chunk from one generator: the same masks
            # for every chunk size, because the CPU generator fills tensors in order.
            u = torch.rand((len(h), self.samples, h.shape[1]), generator=ctx.torch_generator)
            mask = (u < keep).to(device=h.device, dtype=h.dtype) / keep
            logits = F.linear(h.unsqueeze(1) * mask, w, b)  # (chunk, T, O)
            out.append(bald_from_samples(F.softmax(logits, dim=-1).transpose(0, 1)).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def _scores_model_dropout(self, ctx: RoundContext, ids: np.ndarray) -> torch.Tensor:
        model = ctx.model
        modes = {m: m.training for m in model.modules()}
        seed = int(torch.randint(0, 2**62, (1,), generator=ctx.torch_generator))
        devices = [ctx.device] if ctx.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                model.eval()
                for m in model.modules():
                    if isinstance(m, nn.modules.dropout._DropoutNd):
                        m.train()
                out = []
                for start in range(0, len(ids), self.chunk_size):
                    x = ctx.inputs(ids[start:start + self.chunk_size])
                    probs = torch.stack([F.softmax(model(x), dim=-1) for _ in range(self.samples)])
                    out.append(bald_from_samples(probs).cpu())
        finally:
            for m, mode in modes.items():
                m.train(mode)
        return torch.cat(out)

    def __repr__(self) -> str:
        return f"BALDSampling(samples={self.samples}, dropout={self.dropout})"
