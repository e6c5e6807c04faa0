"""The selection step of a round: candidates, round context, strategy, oracle answers."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .context import RoundContext
from .errors import EntkAlError, StrategyError
from .executor import Executor
from .pool import PoolState, validate_selection
from .progress import NullProgress
from .run_setup import RunSetup
from .seeding import int_seed, numpy_rng, torch_generator


def select_queries(setup: RunSetup, round_idx: int, model: torch.nn.Module, pool: PoolState,
                   oracle: Callable[[np.ndarray], np.ndarray], *, progress: NullProgress | None = None,
                   executor: Executor | None = None, observe: Callable[[RoundContext, np.ndarray], None] | None = None
                   ) -> tuple[np.ndarray, np.ndarray | None, dict, float]:
    """Let the strategy choose this round's queries and label them.

    Draws the round's random candidate subset (``cfg.subset`` of the unlabeled ids), leaves
    out candidates with non-finite outputs or embeddings (:meth:`RoundContext.screen_candidates`),
    calls ``setup.strategy.select(ctx, k)`` and checks its answer.

    Args:
        oracle: ``oracle(ids) -> labels``; a ``deferred`` oracle (``--oracle files``) is not asked.
        setup: the run's device, data, strategy and kernel.
        round_idx: round index (0-based).
        model: the network trained this round.
        pool: labeled/unlabeled bookkeeping (not modified here).
        progress: progress reporter handed to the strategy (default: none).
        executor: where the round's pool scans run (:mod:`entk_al.executor`); its round is begun
            here with ``model``. Default: an in-process local executor.
        observe: ``observe(ctx, queried)``, called with the round context and the checked
            selection before any label is asked for (the loop's stop rules, :mod:`entk_al.stopping`);
            what it does to the context is not part of the strategy's info or kernel time.

    Returns:
        (queried (k,) int64 ids in the strategy's order, their labels (k,) int64 or None for a
        deferred oracle, the strategy's info dict, seconds spent in the kernel function).

    Raises:
        StrategyError: the strategy fails, returns invalid ids, or too few finite candidates remain.
    """
    cfg, strategy = setup.cfg, setup.strategy
    deferred = getattr(oracle, "deferred", False)
    unl = pool.unlabeled_ids()
    cand = unl
    if len(unl) > cfg.subset:
        cand = np.sort(numpy_rng(cfg.seed, round_idx, "subset").choice(unl, cfg.subset, replace=False))
    answers: dict[int, int] = {}

    def ask(ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if pool.labeled_mask[ids].any():
            raise StrategyError(f"strategy {strategy.name!r} asked the oracle for an already-labeled id")
        got = oracle(ids)
        answers.update(zip(ids.tolist(), np.asarray(got).tolist()))
        return got

    # Re-seeded here too, so that a selection resumed on its own (more --rounds) draws
    # the same global numbers as one that followed training in the same process.
    torch.manual_seed(int_seed(cfg.seed, round_idx, "torch-select"))
    lab = pool.labeled_ids()
    if executor is not None:
        executor.begin_round(round_idx, cfg.seed, model)
    ctx = RoundContext(round=round_idx, seed=cfg.seed, model=model, device=setup.device, x_pool=setup.data.x_train,
                       num_classes=setup.data.num_classes, labeled_ids=lab, labeled_targets=pool.labels[lab],
                       unlabeled_ids=unl, candidate_ids=cand, rng=numpy_rng(cfg.seed, round_idx, "strategy"),
                       torch_generator=torch_generator(cfg.seed, round_idx, "strategy"), oracle=ask,
                       kernel_fn=setup.kernel_fn, progress=progress or NullProgress(), executor=executor)
    model.eval()
    k = min(cfg.query, len(unl))
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
    queried = validate_selection(strategy.name, answer, k, pool)
    if ctx.excluded and np.isin(queried, np.fromiter(ctx.excluded, dtype=np.int64)).any():
        raise StrategyError(f"strategy {strategy.name!r} selected ids with non-finite values "
                            f"(listed in strategy_info)")
    stray = set(answers) - set(queried.tolist())
    if stray:
        raise StrategyError(f"strategy {strategy.name!r} asked the oracle for ids it did not select")
    info, kernel_s = dict(ctx.info), ctx.kernel_seconds
    if observe is not None:
        observe(ctx, queried)
    if deferred:
        return queried, None, info, kernel_s
    missing = np.array([i for i in queried.tolist() if i not in answers], dtype=np.int64)
    if missing.size:
        answers.update(zip(missing.tolist(), np.asarray(oracle(missing)).tolist()))
    labels = np.array([answers[i] for i in queried.tolist()], dtype=np.int64)
    return queried, labels, info, kernel_s
