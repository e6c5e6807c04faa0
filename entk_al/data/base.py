"""The in-memory dataset container every loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ALDataset:
    """A pool (train split) and a held-out test split, held in memory.

    Global pool ids are row indices of ``x_train``; the test split is never part of the pool.

    Attributes:
        name: dataset name as given on the command line.
        x_train: float32 tensor (N, C, H, W) or (N, D), already normalized.
        y_train: int64 tensor (N,), class indices in [0, num_classes).
        x_test: float32 tensor (N_test, ...), same feature shape as ``x_train``; N_test = 0
            means no test split (runs record ``test_accuracy`` None).
        y_test: int64 tensor (N_test,).
        num_classes: number of classes O.
        classes: class names, length ``num_classes``.
        sources: optional per-pool-item source (file path or original index), shown to
            human annotators; ``None`` means the pool id itself.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    classes: list[str] = field(default_factory=list)
    sources: list[str] | None = None

    def __post_init__(self) -> None:
        if not self.classes:
            self.classes = [str(c) for c in range(self.num_classes)]
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise ValueError(f"{self.name}: features and labels differ in length")
        if tuple(self.x_train.shape[1:]) != tuple(self.x_test.shape[1:]):
            raise ValueError(f"{self.name}: train and test feature shapes differ")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, without the batch dimension."""
        return tuple(self.x_train.shape[1:])

    @property
    def has_test_split(self) -> bool:
        """Whether there is a test split to evaluate on (N_test > 0)."""
        return len(self.x_test) > 0

    @property
    def pool_size(self) -> int:
        return len(self.x_train)

    def source_of(self, pool_id: int) -> str:
        """Where pool item ``pool_id`` came from (path or original index), for annotators."""
        return self.sources[pool_id] if self.sources is not None else str(pool_id)
