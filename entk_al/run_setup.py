"""What a run is made of, built once from a :class:`~entk_al.config.RunConfig`.

:class:`RunSetup` holds the device, dataset, model factory, training settings, strategy and
kernel function; the loop and ``entk-al fidelity`` both build one, and neither needs the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from .config import RunConfig
from .data import ALDataset, load_dataset
from .data.pool import Pool, TensorPool
from .errors import ConfigError
from .models import build_model
from .ntk import PNTK
from .plugins import load_strategy
from .seeding import INIT, INITIAL, TORCH_GLOBAL, TRAIN, int_seed, numpy_rng, torch_generator
from .train import TrainConfig, train_model


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU. Raises ConfigError for missing CUDA.

    Args:
        name: ``auto``, ``cpu``, ``cuda`` or ``cuda:<index>``.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


#: The run's kernel: the sum-of-logits pNTK, as a feature kernel so that the shards compute
#: each input's features once per round (:mod:`entk_al.executor.feature_store`).
_default_kernel = PNTK


@dataclass
class RunSetup:
    """Device, dataset, strategy, kernel and training settings of one run configuration.

    Build with :meth:`from_config`. ``strategy`` is None when built with ``with_strategy=False``.

    Attributes:
        cfg: the validated run configuration.
        device: device models and kernels run on (:func:`resolve_device`).
        data: the loaded dataset.
        strategy: the strategy object, or None.
        train_cfg: training recipe derived from ``cfg``.
        kernel_fn: ``kernel_fn(model, x1, x2=None) -> (N1, N2)`` pNTK handed to strategies.
    """

    cfg: RunConfig
    device: torch.device
    data: ALDataset
    strategy: Any
    train_cfg: TrainConfig
    kernel_fn: Callable[..., torch.Tensor]

    @classmethod
    def from_config(cls, cfg: RunConfig, *, strategy: Any = None, dataset: ALDataset | None = None,
                    kernel_fn: Callable[..., torch.Tensor] | None = None, with_strategy: bool = True) -> "RunSetup":
        """Validate ``cfg`` and load what it names (strategy, dataset) unless given.

        Raises:
            ConfigError: invalid options or device.
            StrategyError: the strategy cannot be loaded.
            DataNotFoundError: the dataset's files are missing.
        """
        cfg = cfg.validate()
        if strategy is None and with_strategy:
            strategy = load_strategy(cfg.strategy, cfg.strategy_options)
        device = resolve_device(cfg.device)
        data = dataset if dataset is not None else load_dataset(cfg.dataset, cfg.data_dir, cfg.download)
        train_cfg = TrainConfig(loss=cfg.loss, epochs=cfg.epochs, min_steps=cfg.min_steps, batch_size=cfg.batch_size,
                                lr=cfg.lr, weight_decay=cfg.weight_decay, threads=cfg.threads)
        return cls(cfg, device, data, strategy, train_cfg, kernel_fn or _default_kernel)

    @property
    def pool(self) -> Pool:
        """The dataset's train split as a pool (:class:`~entk_al.data.pool.TensorPool`, with its labels)."""
        if getattr(self, "_pool", None) is None:
            self._pool = TensorPool(self.data.x_train, self.data.y_train.numpy())
        return self._pool

    def initial_ids(self) -> np.ndarray:
        """The seeded random initial labeled set: (cfg.initial,) int64 sorted global pool ids,
        drawn from the (seed, -1, :data:`~entk_al.seeding.INITIAL`) stream."""
        first = numpy_rng(self.cfg.seed, -1, INITIAL).choice(self.data.pool_size, self.cfg.initial, replace=False)
        first.sort()
        return first

    def new_model(self, round_idx: int) -> torch.nn.Module:
        """The network for ``round_idx`` (seeded init; warm runs share round -1's), on the device."""
        init_round = round_idx if self.cfg.retrain == "scratch" else -1
        model = build_model(self.cfg.model, self.data.input_shape, self.data.num_classes, self.cfg.width,
                            seed=int_seed(self.cfg.seed, init_round, INIT))
        return model.to(self.device)

    def train_generator(self, round_idx: int) -> torch.Generator:
        """The mini-batch generator of ``round_idx``'s training: the (seed, round,
        :data:`~entk_al.seeding.TRAIN`) stream.

        Args:
            round_idx: round index (0-based).
        """
        return torch_generator(self.cfg.seed, round_idx, TRAIN)

    def train_round(self, model: torch.nn.Module, round_idx: int, x: torch.Tensor, y: torch.Tensor, *,
                    on_step: Callable[[int], None] | None = None) -> dict:
        """Train ``model`` in place as the loop's round ``round_idx`` does: the global torch RNG
        (dropout, user code) re-seeded from the (seed, round, :data:`~entk_al.seeding.TORCH_GLOBAL`)
        stream, then :func:`entk_al.train.train_model` with :attr:`train_cfg` and
        :meth:`train_generator`. ``entk-al fidelity`` trains its θ_L with it, so it linearizes
        around the model a run's round 0 trains.

        Args:
            model: the network (on :attr:`device`).
            round_idx: round index (0-based).
            x: (n, *input_shape) labeled inputs.
            y: (n,) int64 their labels.
            on_step: called with 1 after each optimizer step (progress).

        Returns:
            ``{"steps": int, "final_loss": float}`` (:func:`entk_al.train.train_model`).

        Raises:
            TrainingDivergedError: the loss or the weights became non-finite.
        """
        torch.manual_seed(int_seed(self.cfg.seed, round_idx, TORCH_GLOBAL))
        return train_model(model, x, y, self.train_cfg, self.train_generator(round_idx), on_step=on_step)

    def check_model(self, model: torch.nn.Module) -> None:
        """Fail fast, before any file is written, if the model cannot take the dataset's inputs.

        Raises:
            ConfigError: the forward pass fails, returns no tensor, or not (N, num_classes) outputs.
        """
        from .models import eval_mode

        x = self.data.x_train[:2]
        dtype = next(model.parameters()).dtype
        try:
            with torch.no_grad(), eval_mode(model):
                out = model(x.to(device=self.device, dtype=dtype))
        except RuntimeError as exc:
            raise ConfigError(f"model {self.cfg.model!r} cannot take {self.cfg.dataset} inputs of shape "
                              f"{tuple(self.data.input_shape)} ({' '.join(str(exc).split())[:200]})") from None
        if not isinstance(out, torch.Tensor):
            raise ConfigError(f"model {self.cfg.model!r}: model must return an (N, O) tensor, "
                              f"got a {type(out).__name__}")
        if tuple(out.shape) != (len(x), self.data.num_classes):
            raise ConfigError(f"model {self.cfg.model!r} gives outputs of shape {tuple(out.shape[1:])}, "
                              f"expected ({self.data.num_classes},) for {self.cfg.dataset}")

    def check_sizes(self) -> None:
        """Check the strategy's options against the run's sizes, before any training.

        Calls the optional strategy hook ``check_sizes(*, query, subset, pool_size, initial,
        budget)``, which raises ValueError for options that cannot work with these sizes.

        Raises:
            ConfigError: the strategy's message, naming the strategy.
        """
        hook = getattr(self.strategy, "check_sizes", None)
        if hook is None:
            return
        cfg = self.cfg
        try:
            hook(query=cfg.query, subset=cfg.subset, pool_size=self.data.pool_size, initial=cfg.initial,
                 budget=cfg.budget)
        except ValueError as exc:
            raise ConfigError(f"strategy {getattr(self.strategy, 'name', cfg.strategy)!r}: {exc}") from None
