"""EPIG under the linearized network's Gaussian process: information about predictions on a target set.

EPIG(x) = E_{x* ~ p*}[I(y; y* | x, x*)] (Bickford Smith, Kirsch, Farquhar, Gal, Foster &
Rainforth, AISTATS 2023, arXiv 2304.08151, Sec. 3): how much labeling x tells about the labels
of target inputs x*, rather than about the model's parameters (BALD). Here (f_x, f_x*) is
jointly Gaussian under the GP posterior of :mod:`entk_al.lookahead.gp` (mean base, covariance σ² M,
the look-ahead's matrices, arXiv 2206.12569 Eq. 11–12), so each pair's joint predictive comes
from one entry of M. Estimators (:mod:`entk_al.lookahead.gp_scores`): seeded Monte Carlo with a
softmax or simplex link (``epig_mc``), or the closed form of the GP's own Gaussian label model
(``epig_gaussian``, −½ log(1 − ρ²) per class). ``batch=greedy`` conditions the covariance on
each pick (no label) and rescores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from entk_al.errors import StrategyError
from entk_al.lookahead.gp import GPPosterior, fit_gp
from entk_al.lookahead.gp_scores import LINKS, epig_gaussian, epig_mc
from entk_al.round.context import RoundContext

from .ntk_uncertainty import check_gp_options, select_with_gp

#: Where the targets come from when no file is given.
TARGET_SETS = ("candidates", "unlabeled")


def read_target_ids(path: str) -> np.ndarray:
    """Pool ids from a ``.npy`` file (integer array, no pickles) or a text file (one id per line).

    Args:
        path: the file; ``.npy`` is read with ``allow_pickle=False``, anything else as text.

    Returns:
        (T,) int64 sorted unique ids (their range is checked against the pool per round).

    Raises:
        ValueError: the file is missing, unreadable, empty, or holds non-integer values.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"targets file {path!r} not found (give candidates, unlabeled, or a file of pool ids)")
    try:
        ids = np.load(p, allow_pickle=False) if p.suffix == ".npy" else np.loadtxt(p, ndmin=1)
    except (OSError, ValueError) as err:
        raise ValueError(f"targets file {path!r}: cannot read pool ids ({err})") from None
    ids = np.asarray(ids).ravel()
    if ids.size == 0 or not np.all(np.isfinite(ids.astype(np.float64))) or not np.all(ids == np.round(ids)):
        raise ValueError(f"targets file {path!r} must hold integer pool ids, one or more")
    return np.unique(ids.astype(np.int64))


class NTKEPIG:
    """Expected predictive information gain about a target set, under the GP (nats).

    Args:
        ridge_rel: λ relative to the kernel scale, λ = ridge_rel · trace(K)/n.
        output_scale: σ²: ``prior`` (default) | ``loo_labels`` | ``ml_labels`` | ``loo`` |
            ``ml`` (:func:`entk_al.lookahead.gp.output_scale`), or a fixed number > 0.
        batch: ``topk`` (default) | ``greedy`` (condition on each pick, no label, rescore).
        targets: ``candidates`` (default: the round's candidate subset) | ``unlabeled`` (the
            unlabeled pool) | a path to a ``.npy`` or text file of pool ids (your test
            distribution's inputs, which must be in the pool).
        num_targets: targets drawn per round (seeded, without replacement) from the target set.
        estimator: ``mc`` (default) | ``gaussian`` (closed form for Gaussian labels; σ²-free).
        samples: Monte Carlo draws (``mc``).
        link: ``softmax`` (default) | ``simplex`` (``mc``).
    """

    name = "ntk_epig"
    description = "expected predictive information gain on a target set under the GP (pNTK, EPIG)"

    def __init__(self, ridge_rel: float = 1e-3, output_scale: str | float = "prior", batch: str = "topk",
                 targets: str = "candidates", num_targets: int = 100, estimator: str = "mc", samples: int = 32,
                 link: str = "softmax"):
        check_gp_options(ridge_rel, output_scale, batch)
        if estimator not in ("mc", "gaussian"):
            raise ValueError(f"estimator must be 'mc' or 'gaussian', got {estimator!r}")
        if link not in LINKS:
            raise ValueError(f"link must be one of {', '.join(LINKS)}, got {link!r}")
        if num_targets < 1:
            raise ValueError(f"num_targets must be >= 1, got {num_targets}")
        if samples < 2:
            raise ValueError(f"samples must be >= 2, got {samples}")
        self.target_file = None if targets in TARGET_SETS else read_target_ids(targets)
        self.ridge_rel, self.output_scale, self.batch = float(ridge_rel), output_scale, batch
        self.targets, self.num_targets = targets, int(num_targets)
        self.estimator, self.samples, self.link = estimator, int(samples), link

    def target_ids(self, ctx: RoundContext) -> np.ndarray:
        """This round's targets: up to ``num_targets`` ids of the target set, drawn from ``ctx.rng``.

        Raises:
            StrategyError: file ids outside the pool.
        """
        if self.target_file is not None:
            pool = self.target_file
            bad = pool[(pool < 0) | (pool >= len(ctx.pool))]
            if bad.size:
                raise StrategyError(f"targets file holds ids outside the pool [0, {len(ctx.pool)}): "
                                    f"{bad[:5].tolist()}")
        else:
            pool = ctx.candidate_ids if self.targets == "candidates" else ctx.unlabeled_ids
        pool = pool[ctx.keep_mask(pool)]
        if len(pool) <= self.num_targets:
            return pool
        return np.sort(ctx.rng.choice(pool, self.num_targets, replace=False))

    def select(self, ctx: RoundContext, k: int) -> np.ndarray:
        targets = self.target_ids(ctx)
        gp = fit_gp(ctx, np.union1d(ctx.candidate_ids, targets), ridge_rel=self.ridge_rel, scale=self.output_scale)
        cand = ctx.candidate_ids[np.isin(ctx.candidate_ids, gp.ids)]
        targets = targets[np.isin(targets, gp.ids)]
        if len(cand) < k:
            raise StrategyError(f"only {len(cand)} candidates have a finite kernel, fewer than the {k} to query")
        if len(targets) == 0:
            raise StrategyError("no target has a finite kernel")
        t_pos = gp.positions(targets)
        row = {int(p): r for r, p in enumerate(gp.positions(cand).tolist())}
        eps_c = eps_t = None
        if self.estimator == "mc":
            eps_c = torch.from_numpy(ctx.rng.standard_normal((self.samples, len(cand), gp.num_outputs)))
            eps_t = torch.from_numpy(ctx.rng.standard_normal((self.samples, len(targets), gp.num_outputs)))

        def score(g: GPPosterior, pos: np.ndarray) -> torch.Tensor:
            cov_tc = g.covariance(pos, t_pos).T  # (T, c): one block of columns at the targets
            var_c, var_t = g.variance(pos), g.variance(t_pos)
            if self.estimator == "gaussian":
                return epig_gaussian(var_c, var_t, cov_tc, g.scale * g.ridge, g.num_outputs)
            rows = torch.as_tensor([row[int(p)] for p in pos], dtype=torch.long)
            return epig_mc(g.mean(pos), var_c, g.mean(t_pos), var_t, cov_tc, eps_c[:, rows], eps_t, self.link)

        picked, values = select_with_gp(ctx, gp, cand, k, self.batch, score, self.name)
        ctx.info.update(batch=self.batch, estimator=self.estimator, link=self.link, num_targets=int(len(targets)),
                        target_set=self.targets if self.target_file is None else "file",
                        conditioned=len(gp.conditioned), score_max=max(values), score_mean=float(np.mean(values)))
        return picked
