"""Built-in models and the penultimate-feature hook every strategy can use.

Built-ins are plain ``torch.nn`` modules: ``mlp`` and a small ``cnn``. Any user model
works with entk-al as long as it maps (N, *input_shape) to (N, O) logits; strategies that
need penultimate features get them from the input of the model's last ``nn.Linear``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .errors import ConfigError


class MLP(nn.Sequential):
    """Flatten -> [Linear(width) -> ReLU] * depth -> Linear(num_classes)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 256, depth: int = 2):
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = math.prod(input_shape)
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), nn.ReLU()]
            fan_in = width
        layers.append(nn.Linear(fan_in, num_classes))
        super().__init__(*layers)


class CNN(nn.Sequential):
    """conv(w)-BN-ReLU-pool -> conv(2w)-BN-ReLU-pool -> fc(4w)-ReLU -> fc(num_classes).

    ``width`` is the channel count of the first convolution (default 32, as in the classic
    conv32-pool-conv64-pool-fc128 network when width=32).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 32):
        if len(input_shape) != 3:
            raise ConfigError(f"model 'cnn' needs image inputs (C, H, W), got shape {input_shape}")
        c, h, w = input_shape
        super().__init__(
            nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * (h // 4) * (w // 4), 4 * width), nn.ReLU(),
            nn.Linear(4 * width, num_classes),
        )


#: name -> factory(input_shape, num_classes, width) -> nn.Module
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": lambda shape, o, width=None: MLP(shape, o, width or 256),
    "cnn": lambda shape, o, width=None: CNN(shape, o, width or 32),
}


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, width: int | None = None,
                *, seed: int = 0) -> nn.Module:
    """Build a registered model with parameters initialized from ``seed``.

    Raises:
        ConfigError: unknown model name, or an input shape the model cannot take.
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose from {', '.join(sorted(MODELS))}")
    # fork_rng keeps the global torch RNG untouched: initialization depends on `seed` only.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[name](input_shape, num_classes, width)


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's readout layer: the last ``nn.Linear`` in ``model.modules()`` order.

    Raises:
        ValueError: the model has no ``nn.Linear``.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("model has no nn.Linear readout layer; penultimate features are undefined")
    return linears[-1]


@torch.no_grad()
def predict_with_features(model: nn.Module, x: torch.Tensor, batch_size: int = 1024,
                          device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and penultimate features (input of the last ``nn.Linear``) in eval mode.

    Args:
        x: (N, *input_shape) inputs, any device.
    Returns:
        logits (N, O) and features (N, H), float32 on the model's device.
    """
    device = device or next(model.parameters()).device
    captured: list[torch.Tensor] = []
    handle = last_linear(model).register_forward_hook(lambda m, inp, out: captured.append(inp[0].flatten(1)))
    try:
        logits = _batched_eval(model, x, batch_size, device)
    finally:
        handle.remove()
    return logits, torch.cat(captured) if captured else torch.empty(0)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024,
            device: torch.device | None = None) -> torch.Tensor:
    """Logits (N, O) of ``model`` on ``x`` in eval mode, on the model's device."""
    device = device or next(model.parameters()).device
    return _batched_eval(model, x, batch_size, device)


def _batched_eval(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        dtype = next(model.parameters()).dtype
        outs = [model(x[i:i + batch_size].to(device=device, dtype=dtype)) for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0, device=device)
