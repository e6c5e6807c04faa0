"""NTK look-ahead (MLMOC): query the points whose label would change the model most.

Source: Mohamadi, Bae & Sutherland, NeurIPS 2022 (arXiv 2206.12569), Eq. 11–13, with the
sum-of-logits pNTK (arXiv 2206.12543). The candidate subset also serves as the evaluation
set U, as in the paper.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from entk_al.context import RoundContext
from entk_al.lookahead import fit_lookahead, mlmoc_scores

from .scoring import top_k


class LookaheadSampling:
    """Top-k by most-likely model output change under the linearized retraining.

    Args:
        ridge: ridge relative to the kernel scale; the absolute λ is
            ``ridge · trace(K)/n`` (the authors' scaling).
        exclude_self: leave each candidate out of its own sum over U.
        memory_budget_mb: bytes (MiB) for the streamed scoring blocks.
    """

    name = "lookahead"
    description = "NTK look-ahead, most likely model output change (MLMOC, NeurIPS 2022)"

    def __init__(self, ridge: float = 1e-3, exclude_self: bool = False, memory_budget_mb: int = 256):
        if ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        self.ridge = float(ridge)
        self.exclude_self = bool(exclude_self)
        self.memory_budget = int(memory_budget_mb) * 2**20

    def select(self, ctx: RoundContext, k: int) -> np.ndarray:
        u, lab = ctx.candidate_ids, ctx.labeled_ids
        m = len(u)
        kfull = ctx.kernel(np.concatenate([u, lab]))
        k_uu, k_ul, k_ll = kfull[:m, :m], kfull[:m, m:], kfull[m:, m:]
        n = len(lab)
        ridge = self.ridge * float(k_ll.diagonal().double().sum()) / max(n, 1)
        f_u = ctx.logits(u)
        sysm = fit_lookahead(k_ll, k_ul, ctx.logits(lab), ctx.labeled_onehot(), f_u, k_uu, ridge=ridge)
        y_pseudo = F.one_hot(f_u.argmax(dim=1), ctx.num_classes).to(torch.float64)
        scores = mlmoc_scores(sysm, torch.arange(m, device=sysm.base.device), y_pseudo,
                              exclude_self=self.exclude_self, memory_budget=self.memory_budget)
        ctx.info.update(ridge=ridge, jitter=sysm.jitter, score_max=float(scores.max()),
                        score_mean=float(scores.mean()))
        return top_k(u, scores, k)
