"""The selection step of a round: candidates, round context, strategy, oracle answers.

:func:`select_round` is the one implementation; the loop (:func:`select_queries`) and the
library call :func:`entk_al.query` both use it, so a round selects the same ids either way.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ..data.pool import Pool
from ..errors import DataFormatError, EntkAlError, StrategyError
from ..executor import Executor
from ..progress import NullProgress
from ..round.context import RoundContext
from ..seeding import STRATEGY, SUBSET, TORCH_SELECT, int_seed, numpy_rng, torch_generator
from .labeled import PoolState, validate_selection
from .setup import RunSetup


def candidate_subset(unlabeled_ids: np.ndarray, subset: int, seed: int, round_idx: int) -> np.ndarray:
    """The round's random candidate subset: ``subset`` of the unlabeled ids (all when fewer),
    sorted, from the (seed, round, :data:`~entk_al.seeding.SUBSET`) stream (the paper's per-round subset).

    Args:
        unlabeled_ids: (N − n,) int64 increasing unlabeled ids.
        subset: candidates per round (>= 1).
        seed: run seed.
        round_idx: round index.
    """
    if len(unlabeled_ids) <= subset:
        return unlabeled_ids
    return np.sort(numpy_rng(seed, round_idx, SUBSET).choice(unlabeled_ids, subset, replace=False))


def select_round(strategy: Any, *, model: torch.nn.Module, pool: Any, labeled_ids: np.ndarray,
                 labeled_targets: np.ndarray, num_classes: int, k: int, seed: int, round_idx: int, subset: int,
                 candidates: np.ndarray | None = None, oracle: Callable[[np.ndarray], np.ndarray] | None = None,
                 deferred: bool = False, kernel_fn: Callable[..., torch.Tensor] | None = None,
                 device: torch.device | None = None, executor: Executor | None = None,
                 progress: NullProgress | None = None,
                 observe: Callable[[RoundContext, np.ndarray], None] | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None, RoundContext]:
    """Run one round's selection: draw the candidates, build the round context, call the strategy.

    Leaves out candidates with non-finite outputs or embeddings
    (:meth:`RoundContext.screen_candidates`), calls ``strategy.select(ctx, k)`` and checks its
    answer (exactly ``k`` distinct unlabeled ids, none left out for non-finite values, the
    oracle asked only about returned ids).

    Args:
        strategy: the query strategy (``name`` and ``select``).
        model: the trained network.
        pool: the pool (:class:`~entk_al.data.pool.Pool`).
        labeled_ids: (n,) int64 labeled ids.
        labeled_targets: (n,) int64 their labels.
        num_classes: O.
        k: ids to select (at most the number of unlabeled ids).
        seed: run seed.
        round_idx: round index.
        subset: random candidates per round when ``candidates`` is None.
        candidates: (S,) int64 candidate ids (unlabeled), or None for the random subset.
        oracle: ``oracle(ids) -> labels``; None (or ``deferred``): no labels are asked for.
        deferred: the oracle answers later (``--oracle files``): do not ask it.
        kernel_fn: the kernel (default :data:`entk_al.ntk.PNTK`).
        device: where the model runs (default: its own device).
        executor: where the round's pool scans run; the round context begins its round with
            ``model``. Default: an in-process local executor.
        progress: progress reporter handed to the strategy.
        observe: ``observe(ctx, queried)``, called with the round context and the checked
            selection before any label is asked for (the loop's stop rules, :mod:`entk_al.run.stopping`);
            what it adds to the context is not part of the strategy's info or kernel time.

    Returns:
        (queried (k,) int64 ids in the strategy's order, their labels (k,) int64 or None when
        no oracle answers, the round context: ``info``, ``kernel_seconds``, ``scores``).

    Raises:
        StrategyError: the strategy fails, returns invalid ids, or too few finite candidates remain.
        DataFormatError: a labeled point's input is not finite.
    """
    labeled_ids = np.asarray(labeled_ids, dtype=np.int64)
    mask = np.zeros(len(pool), dtype=bool)
    mask[labeled_ids] = True
    unl = np.flatnonzero(~mask)
    cand = candidate_subset(unl, subset, seed, round_idx) if candidates is None else np.asarray(candidates, np.int64)
    answers: dict[int, int] = {}
    ask_oracle = oracle is not None and not deferred

    def ask(ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if mask[ids].any():
            raise StrategyError(f"strategy {strategy.name!r} asked the oracle for an already-labeled id")
        if not ask_oracle:
            if oracle is not None:
                return oracle(ids)  # a deferred oracle raises its own message
            raise StrategyError(f"strategy {strategy.name!r} asks for labels during selection; pass an oracle")
        got = oracle(ids)
        answers.update(zip(ids.tolist(), np.asarray(got).tolist()))
        return got

    check_labeled_inputs(pool, labeled_ids)
    # Re-seeded here too, so that a selection resumed on its own (more --rounds) draws
    # the same global numbers as one that followed training in the same process.
    torch.manual_seed(int_seed(seed, round_idx, TORCH_SELECT))
    ctx = RoundContext(round=round_idx, seed=seed, model=model, device=device, pool=pool, num_classes=num_classes,
                       labeled_ids=labeled_ids, labeled_targets=labeled_targets, unlabeled_ids=unl,
                       candidate_ids=cand, rng=numpy_rng(seed, round_idx, STRATEGY),
                       torch_generator=torch_generator(seed, round_idx, STRATEGY), oracle=ask,
                       progress=progress, executor=executor, **({} if kernel_fn is None else {"kernel_fn": kernel_fn}))
    model.eval()
    k = min(k, len(unl))
    ctx.screen_candidates(k)
    try:
        with ctx.progress.task(f"selecting ({strategy.name})", total=None):
            answer = strategy.select(ctx, k)
    except EntkAlError:
        raise
    except Exception as exc:
        # A user's strategy failing is a user-facing error that must name the strategy.
        raise StrategyError(f"strategy {strategy.name!r} failed in round {round_idx}: "
                            f"{type(exc).__name__}: {exc}") from exc
    queried = validate_selection(strategy.name, answer, k, mask)
    if ctx.excluded and np.isin(queried, np.fromiter(ctx.excluded, dtype=np.int64)).any():
        raise StrategyError(f"strategy {strategy.name!r} selected ids with non-finite values "
                            f"(listed in strategy_info)")
    stray = set(answers) - set(queried.tolist())
    if stray:
        raise StrategyError(f"strategy {strategy.name!r} asked the oracle for ids it did not select")
    if observe is not None:
        # The loop's stop rules look at the selection; what they compute is not the strategy's.
        info, kernel_s = dict(ctx.info), ctx.kernel_seconds
        observe(ctx, queried)
        ctx.info, ctx.kernel_seconds = info, kernel_s
    if not ask_oracle:
        return queried, None, ctx
    missing = np.array([i for i in queried.tolist() if i not in answers], dtype=np.int64)
    if missing.size:
        answers.update(zip(missing.tolist(), np.asarray(oracle(missing)).tolist()))
    labels = np.array([answers[i] for i in queried.tolist()], dtype=np.int64)
    return queried, labels, ctx


def select_queries(setup: RunSetup, round_idx: int, model: torch.nn.Module, pool: PoolState,
                   oracle: Callable[[np.ndarray], np.ndarray], *, progress: NullProgress | None = None,
                   executor: Executor | None = None, scores_out: dict[int, float] | None = None,
                   observe: Callable[[RoundContext, np.ndarray], None] | None = None
                   ) -> tuple[np.ndarray, np.ndarray | None, dict, float]:
    """Let the run's strategy choose this round's queries and label them (:func:`select_round`).

    Args:
        setup: the run's device, data, strategy and kernel.
        round_idx: round index (0-based).
        model: the network trained this round.
        pool: labeled/unlabeled bookkeeping (not modified here).
        oracle: ``oracle(ids) -> labels``; a ``deferred`` oracle (``--oracle files``, ``label-studio``) is not asked.
        progress: progress reporter handed to the strategy (default: none).
        executor: where the round's pool scans run (default: an in-process local executor).
        scores_out: a dict to receive ``pool id -> acquisition score`` of the queried ids the
            strategy scored (:meth:`RoundContext.record_scores`), e.g. to order an annotation queue.
        observe: see :func:`select_round`.

    Returns:
        (queried (k,) int64 ids in the strategy's order, their labels (k,) int64 or None for a
        deferred oracle, the strategy's info dict, seconds spent in kernels).

    Raises:
        StrategyError: the strategy fails, returns invalid ids, or too few finite candidates remain.
    """
    cfg = setup.cfg
    lab = pool.labeled_ids()
    queried, labels, ctx = select_round(
        setup.strategy, model=model, pool=setup.pool, labeled_ids=lab, labeled_targets=pool.labels[lab],
        num_classes=setup.data.num_classes, k=cfg.query, seed=cfg.seed, round_idx=round_idx, subset=cfg.subset,
        oracle=oracle, deferred=getattr(oracle, "deferred", False), kernel_fn=setup.kernel_fn, device=setup.device,
        executor=executor, progress=progress, observe=observe)
    if scores_out is not None and ctx.scores is not None:
        score_of = dict(zip(ctx.scores[0].tolist(), ctx.scores[1].tolist()))
        scores_out.update((i, score_of[i]) for i in queried.tolist() if i in score_of)
    return queried, labels, ctx.info, ctx.kernel_seconds


def check_labeled_inputs(pool: Pool, labeled_ids: np.ndarray) -> None:
    """Refuse labeled points whose inputs hold NaN or inf.

    An unlabeled point with a non-finite value is left out of the round (:mod:`entk_al.round.nonfinite`),
    but a labeled one enters every strategy's outputs and the kernel system K itself, so it
    would fail deep inside a strategy with a message that names no id.

    Args:
        pool: the pool (its inputs for the labeled ids are read once).
        labeled_ids: (n,) int64 labeled pool ids.

    Raises:
        DataFormatError: the first few such ids.
    """
    if not len(labeled_ids):
        return
    x = pool.get(labeled_ids)
    if not x.is_floating_point():
        return
    bad = ~torch.isfinite(x.reshape(len(labeled_ids), -1)).all(dim=1)
    if bool(bad.any()):
        ids = labeled_ids[bad.cpu().numpy()]
        shown = ", ".join(str(int(i)) for i in ids[:5]) + (", …" if len(ids) > 5 else "")
        raise DataFormatError(f"labeled id(s) {shown} have non-finite inputs (NaN or inf); labeled points enter "
                              f"every strategy's outputs and kernels: fix those inputs or leave the ids out")
