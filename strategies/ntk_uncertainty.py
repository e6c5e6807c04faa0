"""Uncertainty from the linearized network's Gaussian process under the pNTK.

Each candidate j's latent outputs are f_j ~ N(base_j, σ² M_jj I_O), the GP posterior of
:mod:`entk_al.lookahead.gp` (base and M as in the look-ahead, Mohamadi, Bae & Sutherland, NeurIPS 2022,
arXiv 2206.12569, Eq. 11–12; σ² fitted on the labeled set, :func:`entk_al.lookahead.gp.output_scale`).
Scores (formulas and sources: :mod:`entk_al.lookahead.gp_scores`):

- ``ntk_variance``: total predictive variance O σ² M_jj.
- ``ntk_bald``: I(y_j; f_j) with y_j ~ p(f_j) (Houlsby et al. 2011, Eq. 3): seeded Monte
  Carlo, or Houlsby's probit closed form on the top two classes (``estimator=probit``).
- ``ntk_entropy`` / ``ntk_margin``: entropy / negated top-2 margin of E[p(f_j)].
- ``ntk_zmargin``: −(f_(1) − f_(2)) / √M_jj, the network's top-2 margin in predictive
  standard deviations (the two classes swap with probability Φ(−z/√2)); σ² cancels.

``batch=greedy`` picks one candidate, conditions the GP covariance on it (no label: the
posterior covariance does not depend on the observed value, Rasmussen & Williams 2006,
Eq. 2.24), rescores and picks the next — exact greedy batch selection for the GP, in the
spirit of BatchBALD (Kirsch, van Amersfoort & Gal, NeurIPS 2019) — while the mean stays
(its expectation under the predictive). Every kernel row stays on the executor's shards
(:meth:`entk_al.round.context.RoundContext.posterior`), so both executors select the same ids.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from entk_al.errors import StrategyError
from entk_al.lookahead.gp import SCALE_METHODS, GPPosterior, fit_gp
from entk_al.lookahead.gp_scores import LINKS, bald_mc, bald_probit, expected_probs, z_margin
from entk_al.lookahead.uncertainty import entropy
from entk_al.round.context import RoundContext

from .scoring import top_k

#: Batch rules of the GP strategies.
BATCH_RULES = ("topk", "greedy")
#: How the information scores are estimated.
ESTIMATORS = ("mc", "probit")


def check_gp_options(ridge_rel: float, output_scale: str | float, batch: str) -> None:
    """Validate the options every GP strategy shares.

    Raises:
        ValueError: ridge_rel < 0, an unknown output_scale method or a fixed one ≤ 0, or an
            unknown batch rule.
    """
    if ridge_rel < 0:
        raise ValueError(f"ridge_rel must be >= 0, got {ridge_rel}")
    if isinstance(output_scale, str):
        if output_scale not in SCALE_METHODS:
            raise ValueError(f"output_scale must be a number > 0 or one of {', '.join(SCALE_METHODS)}, "
                             f"got {output_scale!r}")
    elif not (np.isfinite(output_scale) and output_scale > 0):
        raise ValueError(f"a fixed output_scale must be a finite number > 0, got {output_scale}")
    if batch not in BATCH_RULES:
        raise ValueError(f"batch must be one of {', '.join(BATCH_RULES)}, got {batch!r}")


def select_with_gp(ctx: RoundContext, gp: GPPosterior, cand: np.ndarray, k: int, batch: str,
                   score: Any, label: str) -> tuple[np.ndarray, list[float]]:
    """Top-k or greedy-conditioned selection of ``k`` of ``cand`` under ``score(gp, positions)``.

    Args:
        ctx: the round context (non-finite scores are recorded as excluded).
        gp: the round's GP posterior (conditioned in place by ``greedy``).
        cand: (C,) int64 candidate ids, all in ``gp.ids``.
        k: how many to select.
        batch: ``topk`` (one scoring pass) | ``greedy`` (condition on each pick, rescore).
        score: ``score(gp, pos) -> (len(pos),)`` float64 scores, higher = more informative;
            ``pos`` indexes U.
        label: name shown on the progress bar.

    Returns:
        (the k ids in pick order, their scores when picked). Every candidate's score before any
        conditioning is reported with ``ctx.record_scores`` (:attr:`entk_al.Query.scores`).

    Raises:
        StrategyError: fewer than k candidates with a finite score.
    """
    pos = gp.positions(cand)
    if batch == "topk":
        with ctx.progress.task(f"{label} scoring", total=1) as advance:
            s = score(gp, pos)
            advance(1)
        ctx.record_scores(cand, s)
        picked = top_k(cand, s, k, ctx)
        at = {int(i): p for p, i in enumerate(cand.tolist())}
        return picked, [float(s[at[int(i)]]) for i in picked]
    remaining, chosen, values = cand.copy(), [], []
    with ctx.progress.task(f"{label}: greedy batch", total=k) as advance:
        for step in range(k):
            rest_pos = gp.positions(remaining)
            s = score(gp, rest_pos)
            if step == 0:
                ctx.record_scores(remaining, s)
            i = int(np.flatnonzero(remaining == top_k(remaining, s, 1, ctx)[0])[0])
            chosen.append(int(remaining[i]))
            values.append(float(s[i]))
            if step < k - 1:
                gp.condition(int(rest_pos[i]))
            remaining = np.delete(remaining, i)
            advance(1)
    return np.asarray(chosen, dtype=np.int64), values


class NTKGPStrategy:
    """Base of the GP uncertainty strategies: fit the GP on the candidates, score, select.

    Subclasses define ``score(gp, pos)``; :meth:`prepare` may draw per-round randomness.

    Args:
        ridge_rel: λ relative to the kernel scale, λ = ridge_rel · trace(K)/n (as ``lookahead``).
        output_scale: σ²: ``prior`` (default) | ``loo_labels`` | ``ml_labels`` | ``loo`` |
            ``ml`` (:func:`entk_al.lookahead.gp.output_scale`), or a fixed number > 0.
        batch: ``topk`` (default) | ``greedy`` (condition the GP on each pick, no label, rescore).
    """

    name = "ntk_gp"

    def __init__(self, ridge_rel: float = 1e-3, output_scale: str | float = "prior", batch: str = "topk"):
        check_gp_options(ridge_rel, output_scale, batch)
        self.ridge_rel, self.output_scale, self.batch = float(ridge_rel), output_scale, batch

    def prepare(self, ctx: RoundContext, gp: GPPosterior, cand: np.ndarray) -> None:
        """Per-round set-up before scoring (default: nothing)."""

    def score(self, gp: GPPosterior, pos: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def select(self, ctx: RoundContext, k: int) -> np.ndarray:
        gp = fit_gp(ctx, ctx.candidate_ids, ridge_rel=self.ridge_rel, scale=self.output_scale)
        cand = ctx.candidate_ids[np.isin(ctx.candidate_ids, gp.ids)]
        if len(cand) < k:
            raise StrategyError(f"only {len(cand)} candidates have a finite kernel, fewer than the {k} to query")
        self.prepare(ctx, gp, cand)
        picked, values = select_with_gp(ctx, gp, cand, k, self.batch, self.score, self.name)
        ctx.info.update(batch=self.batch, conditioned=len(gp.conditioned),
                        score_max=max(values), score_mean=float(np.mean(values)))
        return picked


class NTKVariance(NTKGPStrategy):
    """Highest total predictive variance O σ² M_jj of the GP's latent outputs.

    Args:
        ridge_rel: λ relative to the kernel scale, λ = ridge_rel · trace(K)/n.
        output_scale: σ² rule or a fixed σ² (the ranking does not depend on it; logged).
        batch: ``topk`` | ``greedy`` (greedy = maximum-entropy batch for the GP).
    """

    name = "ntk_variance"
    description = "highest predictive variance of the linearized network's GP (pNTK)"

    def score(self, gp: GPPosterior, pos: np.ndarray) -> torch.Tensor:
        return gp.variance(pos) * gp.num_outputs


class _SampledScore(NTKGPStrategy):
    """A GP strategy whose score uses E_f over N(base_j, σ² M_jj I) (Monte Carlo or probit)."""

    def __init__(self, ridge_rel: float = 1e-3, output_scale: str | float = "prior", batch: str = "topk",
                 estimator: str = "mc", samples: int = 64, link: str = "softmax"):
        super().__init__(ridge_rel, output_scale, batch)
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
        if link not in LINKS:
            raise ValueError(f"link must be one of {', '.join(LINKS)}, got {link!r}")
        if estimator == "probit" and link != "softmax":
            raise ValueError("estimator=probit is a closed form for the softmax link; use estimator=mc with "
                             f"link={link}")
        if samples < 2:
            raise ValueError(f"samples must be >= 2, got {samples}")
        self.estimator, self.samples, self.link = estimator, int(samples), link
        self._eps: torch.Tensor | None = None
        self._row: dict[int, int] = {}

    def prepare(self, ctx: RoundContext, gp: GPPosterior, cand: np.ndarray) -> None:
        """Draw the round's standard normals (S, C, O) from ``ctx.rng``; greedy steps reuse them."""
        self._eps = None
        if self.estimator == "mc":
            self._eps = torch.from_numpy(ctx.rng.standard_normal((self.samples, len(cand), gp.num_outputs)))
            self._row = {int(p): r for r, p in enumerate(gp.positions(cand).tolist())}
        ctx.info.update(estimator=self.estimator, link=self.link, samples=self.samples)

    def _eps_at(self, pos: np.ndarray) -> torch.Tensor | None:
        if self._eps is None:
            return None
        return self._eps[:, torch.as_tensor([self._row[int(p)] for p in pos], dtype=torch.long)]


class NTKBALD(_SampledScore):
    """BALD under the GP: I(y_j; f_j), f_j ~ N(base_j, σ² M_jj I), y_j ~ p(f_j) (nats).

    Args:
        ridge_rel: λ relative to the kernel scale, λ = ridge_rel · trace(K)/n.
        output_scale: σ²: ``prior`` (default: label variance / mean diag K) | ``loo_labels`` |
            ``ml_labels`` | ``loo`` | ``ml``, or a fixed number > 0 (docs/uncertainty.md).
        batch: ``topk`` (default) | ``greedy`` (condition the covariance on each pick, rescore).
        estimator: ``mc`` (default: seeded Monte Carlo, Gal et al. 2017 Eq. 4) | ``probit``
            (Houlsby et al. 2011 closed form on the top two classes, softmax link).
        samples: Monte Carlo draws per candidate (``mc``).
        link: ``softmax`` (default) | ``simplex`` (Euclidean projection: the outputs of a
            network trained with the squared loss as probabilities).
    """

    name = "ntk_bald"
    description = "BALD under the linearized network's GP (pNTK): MC or probit, greedy batches"

    def score(self, gp: GPPosterior, pos: np.ndarray) -> torch.Tensor:
        if self.estimator == "probit":
            return bald_probit(gp.mean(pos), gp.variance(pos))
        return bald_mc(gp.mean(pos), gp.variance(pos), self._eps_at(pos), self.link)


class NTKEntropy(_SampledScore):
    """Entropy of the expected class probabilities E[p(f_j)] under the GP (nats).

    Args:
        ridge_rel: λ relative to the kernel scale, λ = ridge_rel · trace(K)/n.
        output_scale: σ² rule (``prior`` default) or a fixed number > 0.
        batch: ``topk`` (default) | ``greedy``.
        estimator: ``mc`` (default) | ``probit`` (softmax(μ/√(1 + πσ²M_jj/4)), Lu et al. 2020).
        samples: Monte Carlo draws per candidate (``mc``).
        link: ``softmax`` (default) | ``simplex``.
    """

    name = "ntk_entropy"
    description = "entropy of the expected softmax under the linearized network's GP (pNTK)"

    def score(self, gp: GPPosterior, pos: np.ndarray) -> torch.Tensor:
        return entropy(expected_probs(gp.mean(pos), gp.variance(pos), self._eps_at(pos), self.link))


class NTKMargin(_SampledScore):
    """Negated top-2 margin of the expected class probabilities E[p(f_j)] under the GP.

    Args:
        ridge_rel: λ relative to the kernel scale, λ = ridge_rel · trace(K)/n.
        output_scale: σ² rule (``prior`` default) or a fixed number > 0.
        batch: ``topk`` (default) | ``greedy``.
        estimator: ``mc`` (default) | ``probit`` (softmax(μ/√(1 + πσ²M_jj/4)), Lu et al. 2020).
        samples: Monte Carlo draws per candidate (``mc``).
        link: ``softmax`` (default) | ``simplex``.
    """

    name = "ntk_margin"
    description = "smallest margin of the expected softmax under the linearized network's GP (pNTK)"

    def score(self, gp: GPPosterior, pos: np.ndarray) -> torch.Tensor:
        top2 = expected_probs(gp.mean(pos), gp.variance(pos), self._eps_at(pos), self.link).topk(2, dim=1).values
        return -(top2[:, 0] - top2[:, 1])


class NTKZMargin(NTKGPStrategy):
    """Smallest z-margin (f_(1) − f_(2)) / √M_jj: the top-2 margin in GP standard deviations.

    Args:
        ridge_rel: λ relative to the kernel scale, λ = ridge_rel · trace(K)/n.
        output_scale: σ² rule or fixed σ² (logged only: the ranking does not depend on it).
        batch: ``topk`` (default) | ``greedy`` (picks shrink their neighbours' M_jj, raising their z).
        mean: ``network`` (default: the network's outputs f(x)) | ``base`` (the GP mean).
    """

    name = "ntk_zmargin"
    description = "smallest top-2 margin in GP standard deviations, margin/sqrt(M_jj) (pNTK)"

    def __init__(self, ridge_rel: float = 1e-3, output_scale: str | float = "prior", batch: str = "topk",
                 mean: str = "network"):
        super().__init__(ridge_rel, output_scale, batch)
        if mean not in ("network", "base"):
            raise ValueError(f"mean must be 'network' or 'base', got {mean!r}")
        self.mean = mean

    def score(self, gp: GPPosterior, pos: np.ndarray) -> torch.Tensor:
        f = gp.outputs(pos) if self.mean == "network" else gp.mean(pos)
        return -z_margin(f, gp.unit_variance(pos))
