"""Built-in models and the penultimate-feature hook every strategy can use.

Built-ins are plain ``torch.nn`` modules: ``mlp``, a small ``cnn``, ``resnet18`` (32×32 stem)
and the look-ahead paper's ``wide_resnet`` / ``wide_resnet2`` (1 or 2 blocks per group). Any user model
works with entk-al as long as it maps (N, *input_shape) to (N, O) logits; strategies that
need penultimate features get them from the input of the model's last ``nn.Linear``.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Callable, Iterator

import torch
from torch import nn

from ..errors import ConfigError


class MLP(nn.Sequential):
    """Flatten -> [Linear(width) -> ReLU] * depth -> Linear(num_classes), for inputs of ``input_shape``."""

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

    ``input_shape`` is (C, H, W).

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


def resnet18_32(input_shape: tuple[int, ...], num_classes: int, width: int | None = None) -> nn.Module:
    """torchvision ResNet-18 adapted to 32×32 inputs: 3×3 stride-1 stem, no max-pool.

    The usual CIFAR adaptation (He et al. 2016, Sec. 4.2 uses a 3×3 stem on CIFAR), as in the
    look-ahead paper's ResNet-18 baselines. ``input_shape`` is (C, H, W); ``num_classes`` sets
    the readout. ``width`` is not supported (fixed 64..512 channels).

    Raises:
        ConfigError: non-image input shape, or a ``width`` given.
    """
    from torchvision.models import resnet18

    if len(input_shape) != 3:
        raise ConfigError(f"model 'resnet18' needs image inputs (C, H, W), got shape {input_shape}")
    if width is not None:
        raise ConfigError("model 'resnet18' has fixed widths; leave --width unset (use wide_resnet to vary width)")
    net = resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


class _WideBlock(nn.Module):
    """Pre-activation wide basic block: BN-ReLU-conv3×3-BN-ReLU-conv3×3 plus shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out
                         else nn.Conv2d(c_in, c_out, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        short = x if isinstance(self.shortcut, nn.Identity) else self.shortcut(out)
        out = self.conv2(torch.relu(self.bn2(self.conv1(out))))
        return out + short


class WideResNet(nn.Module):
    """Wide ResNet (Zagoruyko & Komodakis 2016) as in the look-ahead paper: conv(16), then three
    groups of ``blocks`` wide blocks with widths width/4, width/2, width (strides 1, 2, 2),
    BN-ReLU, global average pool, linear readout. The paper uses 1–2 blocks and width ≤ 640
    (WRN-k=10: 160, 320, 640). ``input_shape`` is (C, H, W); ``num_classes`` sets the readout.

    Raises:
        ConfigError: non-image input, width not a positive multiple of 4, blocks < 1.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 640, blocks: int = 1):
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(f"model 'wide_resnet' needs image inputs (C, H, W), got shape {input_shape}")
        if width < 4 or width % 4:
            raise ConfigError(f"wide_resnet --width is the widest group's channels, a multiple of 4; got {width}")
        if blocks < 1:
            raise ConfigError(f"wide_resnet needs >= 1 block per group, got {blocks}")
        widths = (width // 4, width // 2, width)
        layers: list[nn.Module] = [nn.Conv2d(input_shape[0], 16, 3, 1, 1, bias=False)]
        c_in = 16
        for group, c_out in enumerate(widths):
            for b in range(blocks):
                layers.append(_WideBlock(c_in, c_out, 2 if group > 0 and b == 0 else 1))
                c_in = c_out
        layers += [nn.BatchNorm2d(c_in), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


#: name -> factory(input_shape, num_classes, width) -> nn.Module
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": lambda shape, o, width=None: MLP(shape, o, width or 256),
    "cnn": lambda shape, o, width=None: CNN(shape, o, width or 32),
    "resnet18": resnet18_32,
    "wide_resnet": lambda shape, o, width=None: WideResNet(shape, o, width or 640, blocks=1),
    "wide_resnet2": lambda shape, o, width=None: WideResNet(shape, o, width or 640, blocks=2),
}


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, width: int | None = None,
                *, seed: int = 0) -> nn.Module:
    """Build the model ``name`` with parameters initialized from ``seed``.

    ``name`` is a key of :data:`MODELS` or a user's class, ``package.module:Class`` or
    ``path/file.py:Class`` (loaded as strategies are, :func:`entk_al.specs.load_object`),
    called as ``Class(input_shape, num_classes)``, plus ``width=width`` only when a width is
    given. The class must build an ``nn.Module`` mapping (N, *input_shape) inputs to (N,
    num_classes) logits; its parameters are initialized from the global torch RNG, seeded here.

    Args:
        name: a key of :data:`MODELS`, or ``module:Class`` / ``path/file.py:Class``.
        input_shape: one input's shape, (D,) or (C, H, W).
        num_classes: O, the number of outputs.
        width: the model's width (hidden units / first conv channels); None: its default.
        seed: initialization seed.

    Raises:
        ConfigError: unknown model name, a class that cannot be loaded or fails to build
            (e.g. a width for a class without a ``width`` parameter), something other than an
            ``nn.Module``, or an input shape a built-in model cannot take.
    """
    if name not in MODELS and ":" not in name:
        raise ConfigError(f"unknown model {name!r}; choose from {', '.join(sorted(MODELS))}, "
                          f"or give module:Class or path/file.py:Class")
    build = MODELS.get(name) or user_model_class(name)
    kwargs = {} if width is None or name in MODELS else {"width": width}
    # fork_rng keeps the global torch RNG untouched: initialization depends on `seed` only.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name in MODELS:
            return build(input_shape, num_classes, width)
        try:
            net = build(input_shape, num_classes, **kwargs)
        except ConfigError:
            raise
        except Exception as exc:  # the user's constructor: one line, naming the spec
            hint = " (does it take a width= argument? leave --width unset otherwise)" if kwargs else ""
            if isinstance(exc, TypeError) and not isinstance(build, type):
                hint += (f"; {build.__name__} is a function, and --model takes a class (or factory) called as "
                         f"Class(input_shape, num_classes) (a training step goes to --train)")
            raise ConfigError(f"model {name!r}: {build.__name__}{(tuple(input_shape), num_classes)} failed: "
                              f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}{hint}") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"model {name!r} built a {type(net).__name__}, not a torch.nn.Module")
    if not any(True for _ in net.parameters()):
        raise ConfigError(f"model {name!r} has no parameters; the kernels and the training need some")
    return net


#: (spec, file stamp) -> class: a user's file runs once per process unless it changes.
_USER_CLASSES: dict[tuple, Callable[..., nn.Module]] = {}


def user_model_class(spec: str) -> Callable[..., nn.Module]:
    """The class named by ``module:Class`` / ``path/file.py:Class``.

    A file is run once per process and again only when it changes (its modification time or
    size), so building a model every round does not re-run the user's file.

    Raises:
        ConfigError: the spec, module, file or attribute cannot be loaded, or is not callable.
    """
    from ..specs import load_object

    where = spec.rpartition(":")[0]
    try:
        st = os.stat(where) if where.endswith(".py") else None
    except OSError:
        st = None
    key = (spec, None if st is None else (st.st_mtime_ns, st.st_size))
    if key not in _USER_CLASSES:
        cls = load_object(spec, "model")
        if not callable(cls):
            raise ConfigError(f"model {spec!r} is a {type(cls).__name__}, not a class")
        _USER_CLASSES[key] = cls
    return _USER_CLASSES[key]


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
        batch_size: inputs per forward pass.
        device: where to run; default: the model's device.

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
    """Logits (N, O) of ``model`` on ``x`` in eval mode, in batches of ``batch_size``, on ``device``
    (default: the model's device)."""
    device = device or next(model.parameters()).device
    return _batched_eval(model, x, batch_size, device)


def _batched_eval(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    with eval_mode(model):
        dtype = next(model.parameters()).dtype
        outs = [model(x[i:i + batch_size].to(device=device, dtype=dtype)) for i in range(0, len(x), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0, device=device)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's own flag afterwards.

    A model may mix modes (a frozen BatchNorm inside a model in training mode), so restoring
    ``model.train(previous)`` alone would be wrong.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in modes:
            m.training = flag
