"""What a query strategy sees each round, and the protocol it implements.

A strategy is any object with ``name`` and ``select(ctx, k) -> np.ndarray`` of global pool
ids. The loop builds one :class:`RoundContext` per round; its cached accessors compute
predictions, penultimate embeddings and kernels once per round, whichever strategy (or
plugin) asks first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .models import predict_with_features


@runtime_checkable
class QueryStrategy(Protocol):
    """The protocol every query strategy implements, built-in or user-written.

    ``select`` returns exactly ``k`` distinct global pool ids, all currently unlabeled; the
    loop checks this and raises :class:`~entk_al.errors.StrategyError` otherwise.
    """

    name: str

    def select(self, ctx: "RoundContext", k: int) -> np.ndarray: ...


@dataclass
class RoundContext:
    """Everything a strategy may use in one round.

    Attributes:
        round: round index (0-based).
        seed: run seed.
        model: the network trained this round (eval mode; do not train it in place).
        device: the model's device.
        x_pool: (N, *input_shape) float32 tensor of all pool inputs (CPU); index with ids.
        num_classes: O.
        labeled_ids: (n,) int64 global ids labeled so far (increasing).
        labeled_targets: (n,) int64 their labels.
        unlabeled_ids: (N - n,) int64 global ids not yet labeled (increasing).
        candidate_ids: (S,) int64 this round's random candidate subset of ``unlabeled_ids``
            (the paper's per-round subset; the whole pool when it is smaller). Strategies
            should select from it.
        rng: NumPy generator for this (seed, round, "strategy") stream.
        torch_generator: CPU torch generator for the same stream.
        oracle: ``oracle(ids) -> labels``: ask for true labels mid-selection (sequential
            look-ahead). Ids asked must be among those the strategy then returns.
        info: dict a strategy may fill; it is written to the round's log as ``strategy_info``.
        kernel_fn: ``kernel_fn(model, x1, x2) -> (N1, N2)`` the pNTK implementation used.
    """

    round: int
    seed: int
    model: nn.Module
    device: torch.device
    x_pool: torch.Tensor
    num_classes: int
    labeled_ids: np.ndarray
    labeled_targets: np.ndarray
    unlabeled_ids: np.ndarray
    candidate_ids: np.ndarray
    rng: np.random.Generator
    torch_generator: torch.Generator
    oracle: Callable[[np.ndarray], np.ndarray]
    kernel_fn: Callable[..., torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)
    eval_batch_size: int = 1024
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- cached per-round quantities ------------------------------------------------
    def _ensure_predictions(self, ids: np.ndarray) -> np.ndarray:
        """Compute logits and features for ids not yet cached; return their cache rows."""
        if "logits" not in self._cache:
            self._cache["rows"] = {}
            self._cache["logits"] = []
            self._cache["feats"] = []
        rows = self._cache["rows"]
        missing = np.array([i for i in dict.fromkeys(ids.tolist()) if i not in rows], dtype=np.int64)
        if missing.size:
            logits, feats = predict_with_features(self.model, self.x_pool[torch.from_numpy(missing)],
                                                  self.eval_batch_size, self.device)
            start = sum(len(t) for t in self._cache["logits"])
            self._cache["logits"].append(logits)
            self._cache["feats"].append(feats)
            for off, i in enumerate(missing.tolist()):
                rows[i] = start + off
            self._cache.pop("logits_cat", None)
        if "logits_cat" not in self._cache:
            self._cache["logits_cat"] = torch.cat(self._cache["logits"])
            self._cache["feats_cat"] = torch.cat(self._cache["feats"])
        return np.fromiter((rows[i] for i in ids.tolist()), dtype=np.int64, count=len(ids))

    def logits(self, ids: np.ndarray) -> torch.Tensor:
        """Network outputs f(x) at pool ``ids``: (len(ids), O) float32 on ``device``, eval mode."""
        rows = self._ensure_predictions(np.asarray(ids, dtype=np.int64))
        return self._cache["logits_cat"][torch.from_numpy(rows).to(self.device)]

    def probs(self, ids: np.ndarray) -> torch.Tensor:
        """Softmax of :meth:`logits`: (len(ids), O) float32 class probabilities."""
        return F.softmax(self.logits(ids), dim=1)

    def embeddings(self, ids: np.ndarray) -> torch.Tensor:
        """Penultimate features (input of the last ``nn.Linear``): (len(ids), H) float32."""
        rows = self._ensure_predictions(np.asarray(ids, dtype=np.int64))
        return self._cache["feats_cat"][torch.from_numpy(rows).to(self.device)]

    def inputs(self, ids: np.ndarray) -> torch.Tensor:
        """Pool inputs at ``ids`` on ``device``: (len(ids), *input_shape) float32."""
        return self.x_pool[torch.from_numpy(np.asarray(ids, dtype=np.int64))].to(self.device)

    def kernel(self, ids1: np.ndarray, ids2: np.ndarray | None = None) -> torch.Tensor:
        """pNTK between pool ids (cached for the round): (len(ids1), len(ids2)) on ``device``.

        Source: sum-of-logits pNTK, Mohamadi, Bae & Sutherland, arXiv 2206.12543.
        """
        ids1 = np.asarray(ids1, dtype=np.int64)
        key = ("kernel", ids1.tobytes(), None if ids2 is None else np.asarray(ids2, dtype=np.int64).tobytes())
        if key not in self._cache:
            x2 = None if ids2 is None else self.inputs(ids2)
            self._cache[key] = self.kernel_fn(self.model, self.inputs(ids1), x2)
        return self._cache[key]

    def labeled_onehot(self) -> torch.Tensor:
        """One-hot targets of the labeled set: (n, O) float32 on ``device``."""
        y = torch.from_numpy(self.labeled_targets).to(self.device)
        return F.one_hot(y, self.num_classes).float()
