"""What a run is made of, built once from a :class:`~entk_al.run.config.RunConfig`.

:class:`RunSetup` holds the device, dataset, model factory, training settings, strategy and
kernel function; the loop and ``entk-al fidelity`` both build one, and neither needs the other.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..data import ALDataset, load_dataset
from ..data.pool import Pool, TensorPool
from ..errors import ConfigError, EntkAlError, TrainingDivergedError
from ..nets.models import build_model, eval_mode
from ..nets.train import TrainConfig, train_model
from ..ntk import PNTK
from ..seeding import INIT, INITIAL, TORCH_GLOBAL, TRAIN, int_seed, numpy_rng, torch_generator
from ..specs import load_object
from .config import RunConfig
from .plugins import load_strategy


def resolve_device(name: str | torch.device, what: str = "--device") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; any other name (or a ``torch.device``) checked.

    Args:
        name: ``auto``, ``cpu``, ``cuda``, ``cuda:<index>``, ... or a ``torch.device``.
        what: how the messages name the setting (``--device`` on the command line,
            ``device`` for :func:`entk_al.query`).

    Raises:
        ConfigError: not a torch device, or a CUDA device on a machine without CUDA.
    """
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"{what} {name!r} is not a torch device ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{what} {name}: CUDA is not available on this machine")
    return dev


#: Keyword arguments a ``--train`` function may declare (each is passed only when declared).
TRAIN_FN_KEYWORDS = ("round", "generator", "config", "device")


def load_train_fn(spec: str) -> Callable[..., Any]:
    """The user's training function named by ``module:function`` / ``path/file.py:function``.

    Raises:
        ConfigError: the spec, module, file or attribute cannot be loaded, is a class, or is
            not callable.
    """
    fn = load_object(spec, "training function")
    if isinstance(fn, type):  # callable too, but calling it would build an object, not train the model
        raise ConfigError(f"--train {spec!r} is a class; --train takes a function "
                          f"fn(model, x, y, *, round, generator, config, device) (a model class goes to --model)")
    if not callable(fn):
        raise ConfigError(f"--train {spec!r} is a {type(fn).__name__}, not a function")
    return fn


def call_train_fn(fn: Callable[..., Any], spec: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                  round: int, generator: torch.Generator, config: TrainConfig,
                  device: torch.device) -> torch.nn.Module:
    """Run a user's training step (``entk-al run --train SPEC``) and check what it returns.

    The function's contract::

        def train(model, x, y, *, round, generator, config, device) -> nn.Module

    - ``model``: the run's network, on ``device``, warm-started from the last round (or freshly
      initialized with ``--retrain scratch``); train it as you like (cross-entropy,
      augmentation, your own optimizer and schedule).
    - ``x``: (n, *input_shape) float32 CPU tensor, the labeled inputs; ``y``: (n,) int64 CPU
      tensor, their labels in [0, O).
    - keyword arguments, each passed only if the function declares it (or ``**kwargs``):
      ``round`` (int, 0-based), ``generator`` (a CPU ``torch.Generator`` seeded from
      (seed, round, "train"): draw mini-batches and augmentations from it and the run is
      reproducible), ``config`` (the run's :class:`~entk_al.nets.train.TrainConfig`: ``--epochs``,
      ``--batch-size``, ``--lr``, ``--loss``, ...), ``device`` (``torch.device``).
    - returns the trained model: ``model`` itself, or a module with the same parameters and
      buffers (its state is copied into the run's model).

    The global torch RNG is seeded per round before the call, so ``torch.randn`` without a
    generator is reproducible too.

    Args:
        fn: the function (:func:`load_train_fn`).
        spec: its spec, for the messages.
        model: the network to train.
        x: (n, *input_shape) labeled inputs.
        y: (n,) int64 labels.
        round: round index.
        generator: the round's training generator.
        config: the run's training settings.
        device: where the model is.

    Returns:
        ``model``, trained (in eval mode).

    Raises:
        ConfigError: the function raises, returns nothing or something other than an
            ``nn.Module``, or returns a module whose state does not fit the run's model.
        TrainingDivergedError: the trained weights or buffers are not finite.
    """
    offered = {"round": round, "generator": generator, "config": config, "device": device}
    try:
        sig = inspect.signature(fn).parameters
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.values())
        kwargs = offered if takes_all else {k: v for k, v in offered.items() if k in sig}
    except (TypeError, ValueError):
        kwargs = offered
    try:
        got = fn(model, x, y, **kwargs)
    except EntkAlError:
        raise
    except Exception as exc:  # the user's code: one line, naming it and the round
        raise ConfigError(f"--train {spec!r} failed in round {round}: {type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:300]}") from None
    if got is None:
        raise ConfigError(f"--train {spec!r} returned nothing in round {round}; it must return the trained "
                          f"model (end it with 'return model')")
    if not isinstance(got, torch.nn.Module):
        raise ConfigError(f"--train {spec!r} returned a {type(got).__name__} in round {round}; it must return "
                          f"the trained model (a torch.nn.Module)")
    if got is not model:
        try:
            model.load_state_dict(got.state_dict())
        except RuntimeError as exc:
            raise ConfigError(f"--train {spec!r} returned another model whose parameters do not fit the run's "
                              f"{type(model).__name__} ({' '.join(str(exc).split())[:200]}); return the model "
                              f"it was given") from None
    model.eval()
    state = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    if not all(bool(torch.isfinite(t).all()) for t in state):
        raise TrainingDivergedError(f"training diverged: weights or BatchNorm statistics became NaN or infinite "
                                    f"in --train {spec!r}")
    return model


def check_kernel_params(strategy: Any, model: torch.nn.Module) -> None:
    """Fail before any work if the strategy's ``kernel_params`` select no parameter of ``model``.

    Raises:
        ConfigError: naming the strategy, its spec and some of the model's parameter names.
    """
    params = getattr(strategy, "kernel_params", None)
    if params is None or params == "trainable":
        return
    from ..ntk.common import select_params

    try:
        select_params(model, params)
    except ValueError as exc:
        spec = params if isinstance(params, str) else ",".join(params)
        raise ConfigError(f"strategy {getattr(strategy, 'name', '?')!r}: kernel_params={spec!r}: {exc}") from None


#: The run's kernel: the sum-of-logits pNTK, as a feature kernel so that the shards compute
#: each input's features once per round (:mod:`entk_al.scans.feature_store`).
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
        train_fn: the user's training function (``cfg.train``), or None for the built-in recipe.
    """

    cfg: RunConfig
    device: torch.device
    data: ALDataset
    strategy: Any
    train_cfg: TrainConfig
    kernel_fn: Callable[..., torch.Tensor]
    train_fn: Callable[..., Any] | None = field(default=None)

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
        train_fn = load_train_fn(cfg.train) if cfg.train is not None else None
        device = resolve_device(cfg.device)
        data = dataset if dataset is not None else load_dataset(cfg.dataset, cfg.data_dir, cfg.download)
        train_cfg = TrainConfig(loss=cfg.loss, epochs=cfg.epochs, min_steps=cfg.min_steps, batch_size=cfg.batch_size,
                                lr=cfg.lr, weight_decay=cfg.weight_decay, threads=cfg.threads)
        return cls(cfg, device, data, strategy, train_cfg, kernel_fn or _default_kernel, train_fn)

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
                    on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Train ``model`` in place as the loop's round ``round_idx`` does: the global torch RNG
        (dropout, user code) re-seeded from the (seed, round, :data:`~entk_al.seeding.TORCH_GLOBAL`)
        stream, then the built-in recipe (:func:`entk_al.nets.train.train_model` with :attr:`train_cfg`)
        or the user's ``--train`` function (:func:`call_train_fn`), either given
        :meth:`train_generator`. ``entk-al fidelity`` trains its θ_L with it, so it linearizes
        around the model a run's round 0 trains.

        Args:
            model: the network (on :attr:`device`).
            round_idx: round index (0-based).
            x: (n, *input_shape) labeled inputs.
            y: (n,) int64 their labels.
            on_step: called with 1 after each optimizer step of the built-in recipe (progress).

        Returns:
            ``{"steps": int | None, "final_loss": float | None}`` (None for a user's function).

        Raises:
            TrainingDivergedError: the loss or the weights became non-finite.
            ConfigError: the user's function fails or returns no model.
        """
        torch.manual_seed(int_seed(self.cfg.seed, round_idx, TORCH_GLOBAL))
        gen = self.train_generator(round_idx)
        if self.train_fn is None:
            return train_model(model, x, y, self.train_cfg, gen, on_step=on_step)
        call_train_fn(self.train_fn, self.cfg.train, model, x, y, round=round_idx, generator=gen,
                      config=self.train_cfg, device=self.device)
        return {"steps": None, "final_loss": None}

    def check_model(self, model: torch.nn.Module) -> None:
        """Fail fast, before any file is written, if the model cannot take the dataset's inputs
        or the strategy's ``kernel_params`` select none of its parameters.

        Raises:
            ConfigError: the forward pass fails, returns no tensor (a tuple, ...), or not
                (N, num_classes) outputs; ``kernel_params`` that match no parameter.
        """
        x = self.data.x_train[:2]
        dtype = next(model.parameters()).dtype
        try:
            with torch.no_grad(), eval_mode(model):
                out = model(x.to(device=self.device, dtype=dtype))
        except EntkAlError:
            raise
        except Exception as exc:  # a user's model may raise anything
            raise ConfigError(f"model {self.cfg.model!r} cannot take {self.cfg.dataset} inputs of shape "
                              f"{tuple(self.data.input_shape)} ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:200]})") from None
        if not isinstance(out, torch.Tensor):
            raise ConfigError(f"model {self.cfg.model!r}: model must return an (N, O) tensor of logits, "
                              f"got a {type(out).__name__}; make forward return the logits only")
        if tuple(out.shape) != (len(x), self.data.num_classes):
            raise ConfigError(f"model {self.cfg.model!r} gives outputs of shape {tuple(out.shape[1:])}, "
                              f"expected ({self.data.num_classes},) for {self.cfg.dataset}")
        if self.strategy is not None:
            check_kernel_params(self.strategy, model)

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
