"""Training recipe for one round: SGD with momentum, OneCycle, MSE on one-hot targets.

Follows the look-ahead paper's recipe (Mohamadi, Bae & Sutherland 2022, Sec. 5): squared
loss on one-hot targets (the loss the NTK linearization assumes), SGD momentum 0.9, weight
decay 1e-4, a OneCycle schedule, warm start between rounds. Cross-entropy is an option.
A minimum number of optimizer steps per round keeps tiny labeled sets trained (Lüth et al.
2023).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TrainingDivergedError

#: Learning rate of the models without a per-model default
#: (:data:`entk_al.run.config.MODEL_DEFAULTS`): mlp, cnn.
DEFAULT_LR = 0.05


@dataclass
class TrainConfig:
    """Hyper-parameters of one round of training.

    These are the one source of the training defaults: :class:`entk_al.run.config.RunConfig`
    takes its training options' defaults from here (``lr``: :data:`DEFAULT_LR`, the models
    without a per-model default).

    Attributes:
        loss: ``"mse"`` (0.5 * squared error on one-hot targets, summed over classes,
            averaged over the batch) or ``"ce"`` (cross-entropy).
        epochs: passes over the labeled set; the step count is
            ``max(min_steps, epochs * ceil(n / batch_size))``.
        min_steps: minimum optimizer steps per round.
        batch_size: mini-batch size.
        lr: OneCycle maximum learning rate.
        momentum: SGD momentum.
        weight_decay: L2 weight decay.
        threads: CPU threads for training; 0 = :func:`auto_threads`.
    """

    loss: str = "mse"
    epochs: int = 20
    min_steps: int = 200
    batch_size: int = 64
    lr: float = DEFAULT_LR
    momentum: float = 0.9
    weight_decay: float = 1e-4
    threads: int = 0

    def steps_for(self, n: int) -> int:
        return max(self.min_steps, self.epochs * math.ceil(n / self.batch_size))


def loss_fn(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Training loss. ``logits`` (B, O) float, ``y`` (B,) int64 class indices.

    Args:
        logits: (B, O) float outputs.
        y: (B,) int64 class indices.
        kind: ``mse`` (0.5 ‖f − onehot‖², the loss the NTK linearization assumes) or ``ce``
            (cross-entropy).

    Returns:
        Scalar tensor: the batch mean of the per-sample loss.

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind == "mse":
        onehot = F.one_hot(y, logits.shape[1]).to(logits.dtype)
        return 0.5 * ((logits - onehot) ** 2).sum(dim=1).mean()
    if kind == "ce":
        return F.cross_entropy(logits, y)
    raise ValueError(f"unknown loss {kind!r}; choose 'mse' or 'ce'")


#: Below this many parameter×sample products per step, training runs on one CPU thread.
SMALL_STEP = 10**8


def auto_threads(model: nn.Module, batch_size: int) -> int:
    """CPU threads for a training step: 1 when a step is small, else torch's default.

    A small model's step is thousands of tiny ops; on a busy machine each parallel op waits
    for every OpenMP thread to be scheduled, and one step costs 100× more with 2 threads
    than with 1 (a digits MLP: 29 s vs 0.14 s for 200 steps beside one other busy process).
    Large steps (ResNet-sized) keep all threads.

    Args:
        model: the network (its parameter count sizes a step).
        batch_size: samples per training step.
    """
    n_params = sum(p.numel() for p in model.parameters())
    return 1 if n_params * batch_size < SMALL_STEP else torch.get_num_threads()


def train_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                generator: torch.Generator, on_step: Callable[[int], None] | None = None) -> dict[str, float]:
    """Train ``model`` in place on (x, y).

    Args:
        x: (n, *input_shape) inputs (any device; batches move to the model's device).
        y: (n,) int64 labels.
        generator: CPU generator that draws the mini-batches (seeded per round).
        on_step: called with 1 after each optimizer step (progress display); the step count
            is ``cfg.steps_for(n)``.

    Returns:
        ``{"steps": int, "final_loss": float}`` (loss averaged over the last 10% of steps).

    Raises:
        TrainingDivergedError: the loss became NaN or infinite (checked every
            :data:`DIVERGENCE_CHECK_STEPS` steps and at the end, so training stops soon after),
            or a weight or buffer (BatchNorm statistics) is not finite after training. The
            model is then unusable; its ``step`` and ``steps`` attributes say when it happened.
    """
    on_cpu = next(model.parameters()).device.type == "cpu"
    threads = cfg.threads or (auto_threads(model, cfg.batch_size) if on_cpu else 0)
    previous = torch.get_num_threads()
    if threads and threads != previous:
        torch.set_num_threads(threads)
    try:
        return _train(model, x, y, cfg, generator, on_step)
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


#: How often (in optimizer steps) training checks for a non-finite loss. Checking reads the
#: loss back from the device, so it is not done every step (a GPU would wait each time).
DIVERGENCE_CHECK_STEPS = 25


def _diverged(step: int, steps: int, what: str) -> TrainingDivergedError:
    exc = TrainingDivergedError(f"training diverged: {what} at step {step + 1} of {steps}")
    exc.step, exc.steps = step, steps
    return exc


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
           generator: torch.Generator, on_step: Callable[[int], None] | None = None) -> dict[str, float]:
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    n = len(x)
    steps = cfg.steps_for(n)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    model.train()
    bs = min(cfg.batch_size, n)
    tail, tail_n = 0.0, 0
    perm, pos = torch.randperm(n, generator=generator), 0
    # First step with a non-finite loss (-1: none yet), kept on the device between checks.
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    for step in range(steps):
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=generator), 0
        idx = perm[pos:pos + bs]
        pos += bs
        xb = x[idx].to(device=device, dtype=dtype)
        yb = y[idx].to(device)
        loss = loss_fn(model(xb), yb, cfg.loss)
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), step, first_bad)
        if (step + 1) % DIVERGENCE_CHECK_STEPS == 0 or step == steps - 1:
            bad = int(first_bad)
            if bad >= 0:
                model.eval()
                raise _diverged(bad, steps, "the training loss became NaN or infinite")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step >= steps - max(1, steps // 10):
            tail += loss.item()
            tail_n += 1
        if on_step is not None:
            on_step(1)
    model.eval()
    state = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    if not all(bool(torch.isfinite(t).all()) for t in state):
        raise _diverged(steps - 1, steps, "weights or BatchNorm statistics became NaN or infinite")
    return {"steps": steps, "final_loss": tail / max(tail_n, 1)}
