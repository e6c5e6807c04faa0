"""Shared base for strategies that score candidates and take the top k."""

from __future__ import annotations

import numpy as np
import torch

from entk_al.errors import StrategyError
from entk_al.round.context import RoundContext
from entk_al.scans.outputs import top_scores
from entk_al.seeding import rank_descending, tie_keys


def top_k(ids: np.ndarray, scores: np.ndarray | torch.Tensor, k: int,
          ctx: RoundContext | None = None) -> np.ndarray:
    """The ``k`` ids with the highest finite scores.

    Equal scores are ordered by the round's seeded tie-break keys of the ids
    (:func:`entk_al.seeding.tie_keys` of ``ctx.seed``, ``ctx.round``), so ties do not go to the
    lowest ids (on a pool sorted by class, one class); without ``ctx``, by position (stable).
    Ids with a non-finite score (NaN, ±inf) are left out, never ranked: with ``ctx`` they are
    recorded in ``ctx.info`` as excluded (:meth:`RoundContext.exclude`).

    Args:
        ids: (S,) int64 global ids.
        scores: (S,) scores, higher = more informative.
        ctx: the round context, for the tie-break keys and to record excluded ids (optional).

    Raises:
        ValueError: ``k`` exceeds the number of ids, or shapes differ.
        StrategyError: fewer than ``k`` ids have a finite score.
    """
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().double().numpy()
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != ids.shape:
        raise ValueError(f"scores shape {scores.shape} does not match ids shape {ids.shape}")
    if k > len(ids):
        raise ValueError(f"cannot select {k} from {len(ids)} candidates")
    finite = np.isfinite(scores)
    if not finite.all():
        if ctx is not None:
            ctx.exclude(ids[~finite], "score")
        if finite.sum() < k:
            raise StrategyError(f"only {int(finite.sum())} of {len(ids)} candidates have a finite score, "
                                f"fewer than the {k} to query")
        ids, scores = ids[finite], scores[finite]
    if ctx is None:
        return ids[np.argsort(-scores, kind="stable")[:k]]
    return ids[rank_descending(scores, tie_keys(ctx.seed, ctx.round, ids), ids)[:k]]


def executor_top_k(ctx: RoundContext, kind: str, k: int, **options) -> tuple[np.ndarray, dict]:
    """:func:`top_k` of the candidates under an executor score, computed tile by tile on the
    shards (:func:`entk_al.scans.outputs.top_scores`); non-finite scores are excluded as in
    :func:`top_k`.

    Args:
        ctx: the round context (its ``candidate_ids`` and ``executor``).
        kind: ``entropy``, ``margin``, ``least_confidence`` or ``bald``.
        k: how many ids to return.
        options: score options (BALD: ``samples``, ``dropout``, ``model_dropout``).

    Returns:
        (the k ids, the merge's dict: ``scores``, ``mean``, ...).

    Raises:
        StrategyError: fewer than ``k`` candidates have a finite score.
    """
    ids = ctx.candidate_ids
    got = top_scores(ctx.executor, kind, ids, k, **options)
    if got["nonfinite"].size:
        ctx.exclude(got["nonfinite"], "score")
    if got["count"] < k:
        raise StrategyError(f"only {got['count']} of {len(ids)} candidates have a finite score, "
                            f"fewer than the {k} to query")
    ctx.record_scores(got["all_ids"], got["all_scores"])
    return got["ids"], got


class ScoreStrategy:
    """Select the top-k candidates under ``score(ctx, ids)``; subclasses define ``score``.

    A subclass that sets ``tile_score`` to a name of :data:`entk_al.lookahead.uncertainty.CHEAP_SCORES`
    is scored tile by tile on the run's executor instead (same ids, same order); ``score``
    then stays available for callers that want every candidate's value.
    """

    name = "score"
    description = ""
    #: an executor score name (entropy, margin, least_confidence), or None to call ``score``.
    tile_score: str | None = None

    def score(self, ctx: RoundContext, ids: np.ndarray) -> torch.Tensor | np.ndarray:
        raise NotImplementedError

    def _uses_tile_score(self) -> bool:
        """True when ``tile_score`` is set by the class that also defines the ``score`` in use
        (a subclass overriding ``score`` gets its own ``score`` called)."""
        owner = next((c for c in type(self).__mro__ if "tile_score" in vars(c)), None)
        return (self.tile_score is not None and owner is not None
                and vars(owner).get("score") is type(self).score)

    def select(self, ctx: RoundContext, k: int) -> np.ndarray:
        if self._uses_tile_score():
            return executor_top_k(ctx, self.tile_score, k)[0]
        ids = ctx.candidate_ids
        scores = self.score(ctx, ids)
        ctx.record_scores(ids, scores)
        return top_k(ids, scores, k, ctx)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
