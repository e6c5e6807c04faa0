"""A custom query strategy: NTK look-ahead score × kernel density.

Run it with::

    entk-al run --strategy examples/lookahead_density.py:LookaheadDensity -o beta=1.0

Look-ahead (MLMOC) alone takes the top-k scores, which can pick near-duplicates. Weighting
each candidate's score by how typical it is of the candidate set (its mean pNTK cosine
similarity to the others, the "information density" of Settles & Craven 2008, Eq. 4 there)
favours informative points in dense regions. It reuses the public API: the round's cached
pNTK (``ctx.kernel``), the look-ahead system (:func:`entk_al.lookahead.system.fit_lookahead`,
:func:`entk_al.lookahead.system.mlmoc_scores`) and :func:`strategies.top_k`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from entk_al.lookahead.system import fit_lookahead, mlmoc_scores, relative_ridge
from entk_al.round.context import RoundContext
from strategies import top_k


class LookaheadDensity:
    """Look-ahead MLMOC score times pNTK density to the power ``beta``.

    Args:
        ridge_rel: kernel ridge relative to trace(K)/n, as in the built-in ``lookahead``.
        beta: density exponent; 0 gives plain look-ahead.
    """

    name = "lookahead_density"
    description = "look-ahead MLMOC score x pNTK density (example plugin)"

    def __init__(self, ridge_rel: float = 1e-3, beta: float = 1.0):
        if ridge_rel < 0 or beta < 0:
            raise ValueError("ridge_rel and beta must be >= 0")
        self.ridge_rel, self.beta = float(ridge_rel), float(beta)

    def select(self, ctx: RoundContext, k: int) -> np.ndarray:
        u, lab = ctx.candidate_ids, ctx.labeled_ids
        m = len(u)
        kfull = ctx.kernel(np.concatenate([u, lab]))  # (m + n, m + n) pNTK, cached for the round
        k_uu, k_ul, k_ll = kfull[:m, :m], kfull[:m, m:], kfull[m:, m:]
        ridge = relative_ridge(k_ll, self.ridge_rel)  # the absolute λ
        f_u = ctx.logits(u)
        system = fit_lookahead(k_ll, k_ul, k_uu, ctx.logits(lab), ctx.labeled_onehot(), f_u, ridge=ridge)
        y_guess = F.one_hot(f_u.argmax(dim=1), ctx.num_classes).to(torch.float64)
        score = mlmoc_scores(system, torch.arange(m, device=system.base.device), y_guess)
        # Cosine similarity in pNTK feature space; clamp so that density stays a weight >= 0.
        norm = k_uu.diagonal().double().clamp_min(1e-30).sqrt()
        density = (k_uu.double() / norm[:, None] / norm[None, :]).mean(dim=1).clamp_min(0)
        ctx.info.update(ridge=ridge, density_mean=float(density.mean()))
        return top_k(u, score.double() * density.to(score.device) ** self.beta, k)
