"""One shared round context for strategy tests: a small MLP really trained on digits.

The context is built the way ``entk_al.run.loop`` builds it in ``select`` (same fields, same
(seed, round, component) streams, the pNTK kernel function, an oracle answering from the
ground truth), so a strategy sees here what it sees in a run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from entk_al.data import load_dataset
from entk_al.nets.models import build_model
from entk_al.nets.train import TrainConfig, train_model
from entk_al.ntk import PNTK
from entk_al.round.context import RoundContext
from entk_al.seeding import INITIAL, STRATEGY, TRAIN, numpy_rng, torch_generator


@dataclass(frozen=True)
class DigitsRound:
    """A trained model and pool split; :meth:`context` makes a fresh RoundContext from it."""

    x_pool: torch.Tensor
    y_pool: torch.Tensor
    num_classes: int
    model: torch.nn.Module
    labeled_ids: np.ndarray
    candidate_ids: np.ndarray
    seed: int

    def context(self, round_idx: int = 1, model: torch.nn.Module | None = None, *, kernel_fn=PNTK,
                executor=None) -> RoundContext:
        """A fresh context (empty cache) on a copy of the trained model unless ``model`` is given.

        ``kernel_fn`` defaults to the run's (:data:`entk_al.ntk.PNTK`); ``executor`` (its round
        begun by the context) to the context's own local executor.
        """
        model = copy.deepcopy(self.model) if model is None else model
        model.eval()
        pool_mask = np.zeros(len(self.x_pool), dtype=bool)
        pool_mask[self.labeled_ids] = True
        unl = np.flatnonzero(~pool_mask)
        y = self.y_pool.numpy()
        asked: list[int] = []

        def oracle(ids: np.ndarray) -> np.ndarray:
            asked.extend(np.asarray(ids).tolist())
            return y[np.asarray(ids, dtype=np.int64)]

        ctx = RoundContext(round=round_idx, seed=self.seed, model=model, device=torch.device("cpu"),
                           pool=self.x_pool, num_classes=self.num_classes, labeled_ids=self.labeled_ids,
                           labeled_targets=y[self.labeled_ids], unlabeled_ids=unl,
                           candidate_ids=self.candidate_ids, rng=numpy_rng(self.seed, round_idx, STRATEGY),
                           torch_generator=torch_generator(self.seed, round_idx, STRATEGY), oracle=oracle,
                           kernel_fn=kernel_fn, executor=executor)
        ctx.oracle_calls = asked  # test-only record: the ids the strategy asked the oracle for
        return ctx


@lru_cache(maxsize=4)
def digits_round(seed: int = 0, n_labeled: int = 30, n_candidates: int = 150, width: int = 32,
                 steps: int = 60) -> DigitsRound:
    """Train an MLP(``width``) on ``n_labeled`` random digits for ``steps`` SGD steps (cached per arguments).

    The candidates are ``n_candidates`` random unlabeled ids (sorted), as the loop's subset is.
    """
    data = load_dataset("digits")
    rng = numpy_rng(seed, -1, INITIAL)
    order = rng.permutation(data.pool_size)
    labeled = np.sort(order[:n_labeled])
    candidates = np.sort(order[n_labeled:n_labeled + n_candidates])
    model = build_model("mlp", data.input_shape, data.num_classes, width, seed=seed)
    cfg = TrainConfig(epochs=1, min_steps=steps, batch_size=16, threads=1)
    with torch.random.fork_rng():
        train_model(model, data.x_train[labeled], data.y_train[labeled], cfg, torch_generator(seed, 0, TRAIN))
    model.eval()
    return DigitsRound(x_pool=data.x_train, y_pool=data.y_train, num_classes=data.num_classes, model=model,
                       labeled_ids=labeled, candidate_ids=candidates, seed=seed)
