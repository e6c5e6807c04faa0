"""Argument checking, eval-mode handling and output "directions" shared by both kernel engines.

Every kernel kind is expressed through a direction matrix ``V`` of shape (K, O): the engines
compute, for each direction k, per-sample gradients of ``V_k . f(x)`` and the kernel block
``<grad V_k.f(x), grad V_l.f(x')> = V_k Theta(x, x') V_l^T`` where Theta is the eNTK
(Jacot et al. 2018, eq. 3; empirical form Theta = J(x) J(x')^T).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import torch
from torch import nn

from ..nets.models import eval_mode  # noqa: F401  (re-exported: the kernel runs in eval mode)

KINDS = ("pntk", "entk", "first_logit", "trace", "block_diag")
METHODS = ("auto", "gram", "jacobian")


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the first floating parameter (float32 if none is floating).

    Args:
        model: the network whose parameters are inspected.
    """
    device, dtype = None, torch.float32
    for p in model.parameters():
        device = p.device if device is None else device
        if p.is_floating_point():
            return p.device, p.dtype
    return (device or torch.device("cpu")), dtype


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """Named parameters with ``requires_grad`` (shared parameters appear once).

    Args:
        model: the network; parameters with ``requires_grad=False`` are left out.

    Raises:
        ValueError: no parameter requires a gradient (the NTK would be empty).
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("model has no parameters with requires_grad=True; the NTK is empty")
    return params


#: ``params`` values: every parameter, or those with ``requires_grad`` (the default).
PARAM_SETS = ("all", "trainable")


def select_params(model: nn.Module, params: Any = "trainable") -> dict[str, nn.Parameter]:
    """The parameters a kernel differentiates: the NTK is a sum over them (Jacot et al. 2018, eq. 3),
    so a subset gives the kernel of the network linearized in that subset only.

    Args:
        model: the network.
        params: ``"trainable"`` (default: those with ``requires_grad``), ``"all"`` (every
            parameter, frozen ones too), ``"last:N"`` (the parameters of the last N modules that
            own parameters, in ``model.modules()`` order: e.g. the head of a fine-tuned
            backbone), or a list/tuple of parameter-name prefixes (``["fc.", "layer4."]``).

    Returns:
        {name: parameter} in ``model.named_parameters()`` order (shared parameters once).

    Raises:
        ValueError: an unknown spec, or one that matches no parameter.
    """
    check_params_spec(params)
    named = dict(model.named_parameters())
    if params is None or params == "trainable":
        chosen = {n: p for n, p in named.items() if p.requires_grad}
        if not chosen:
            raise ValueError("model has no parameters with requires_grad=True; the NTK is empty "
                             "(pass params='all' to differentiate frozen parameters too)")
        return chosen
    if params == "all":
        chosen = named
    elif isinstance(params, str):
        n = int(params[len("last:"):])
        owners = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
        ids = {id(p) for m in owners[-n:] for p in m.parameters(recurse=False)}
        chosen = {nm: p for nm, p in named.items() if id(p) in ids}
    else:
        chosen = {nm: p for nm, p in named.items() if nm.startswith(tuple(params))}
    if not chosen:
        some = ", ".join(list(named)[:4])
        raise ValueError(f"params {params!r} match no parameter of the model (its parameters: {some}, ...)")
    return chosen


def check_params_spec(params: Any) -> None:
    """Check the form of a ``params`` spec (:func:`select_params`), before any model is seen.

    Raises:
        ValueError: anything but None, ``"trainable"``, ``"all"``, ``"last:N"`` with N >= 1, or
            a non-empty list/tuple of strings.
    """
    if params is None or params in PARAM_SETS:
        return
    if isinstance(params, str) and params.startswith("last:"):
        n = params[len("last:"):]
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"params {params!r}: give last:N with N >= 1")
        return
    if isinstance(params, (list, tuple)) and params and all(isinstance(x, str) for x in params):
        return
    raise ValueError(f"params must be 'trainable', 'all', 'last:N' or a list of parameter-name prefixes, "
                     f"got {params!r}")


def parse_params(spec: Any) -> Any:
    """A ``params`` spec from a command-line or config value: ``"trainable"``, ``"all"`` and
    ``"last:N"`` as they are; any other string is a comma-separated list of name prefixes
    (``"fc.,layer4."``); lists become tuples (hashable).

    Raises:
        ValueError: an empty spec.
    """
    if isinstance(spec, list):
        spec = tuple(spec)
    if isinstance(spec, str):
        if spec in PARAM_SETS or spec.startswith("last:"):
            return spec
        prefixes = tuple(p.strip() for p in spec.split(",") if p.strip())
        if not prefixes:
            raise ValueError(f"empty parameter spec {spec!r}")
        return prefixes
    return spec


@contextlib.contextmanager
def differentiating(model: nn.Module, params: dict[str, nn.Parameter]) -> Iterator[None]:
    """Within the block, exactly ``params`` require gradients (restored afterwards): autograd then
    reaches the chosen parameters, frozen or not, and stops where nothing upstream is chosen.

    Args:
        model: the network whose parameters' ``requires_grad`` flags are set.
        params: {name: parameter} that require gradients inside the block (:func:`select_params`).
    """
    chosen = {id(p) for p in params.values()}
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(id(p) in chosen)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def prepare_inputs(model: nn.Module, x1, x2) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Move inputs to the model device (floating inputs also to the model dtype) and check shapes.

    Raises:
        ValueError: empty input, 0-d input, or ``x1.shape[1:] != x2.shape[1:]``.
    """
    device, dtype = model_device_dtype(model)

    def conv(x, name):
        x = torch.as_tensor(x)
        if x.dim() == 0:
            raise ValueError(f"{name} must have a leading sample dimension, got a 0-d tensor")
        if x.shape[0] == 0:
            raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); need at least one sample")
        x = x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)
        return x.clone() if x.is_inference() else x  # inference tensors cannot enter autograd

    x1 = conv(x1, "x1")
    if x2 is None:
        return x1, None
    x2 = conv(x2, "x2")
    if x1.shape[1:] != x2.shape[1:]:
        raise ValueError(
            f"feature shapes of x1 {tuple(x1.shape[1:])} and x2 {tuple(x2.shape[1:])} differ")
    return x1, x2


def check_kind_method(kind: str, method: str) -> None:
    """Validate a kernel kind and computation method.

    Args:
        kind: one of ``KINDS`` (``pntk``, ``entk``, ``first_logit``, ``trace``, ``block_diag``).
        method: one of ``METHODS`` (``auto``, ``gram``, ``jacobian``).

    Raises:
        ValueError: ``kind`` not in ``KINDS`` or ``method`` not in ``METHODS``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kernel kind {kind!r}; expected one of {KINDS}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def check_sizes(batch_size, tile_size) -> None:
    """Validate the optional chunk and tile sizes.

    Args:
        batch_size: samples per vmap chunk of the jacobian path (int >= 1) or None.
        tile_size: samples per kernel tile (int >= 1) or None for the default.

    Raises:
        ValueError: a size that is not None and not a positive int (bools rejected).
    """
    for name, v in (("batch_size", batch_size), ("tile_size", tile_size)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"{name} must be a positive int or None, got {v!r}")


def directions(kind: str, n_out: int, device, dtype) -> tuple[torch.Tensor, bool]:
    """Direction matrix V (K, O) and whether the full K x K block (True) or only the
    diagonal (False) is needed.

    pntk: V = 1^T / sqrt(O) (Mohamadi et al. 2022, arXiv 2206.12543, eq. 3: pNTK =
    (1/O) 1^T Theta 1); first_logit: V = e_1^T; entk / trace / block_diag: V = I_O.

    Args:
        kind: kernel kind (see :func:`check_kind_method`).
        n_out: O, the number of model outputs.
        device: device of the returned V (the model's).
        dtype: floating dtype of the returned V (the model's).
    """
    if kind == "pntk":
        return torch.full((1, n_out), 1.0 / math.sqrt(n_out), device=device, dtype=dtype), True
    if kind == "first_logit":
        v = torch.zeros(1, n_out, device=device, dtype=dtype)
        v[0, 0] = 1.0
        return v, True
    eye = torch.eye(n_out, device=device, dtype=dtype)
    return eye, kind == "entk"


def finish(blocks: torch.Tensor, kind: str) -> torch.Tensor:
    """Turn engine output (K, K, N1, N2) [full] or (K, N1, N2) [diag] into the public shape.

    Args:
        blocks: engine output in the model dtype, (K, K, N1, N2) when the kind needs the full block,
            else (K, N1, N2).
        kind: kernel kind: ``pntk``/``first_logit`` -> (N1, N2); ``entk`` -> (N1, N2, O, O);
            ``block_diag`` -> (N1, N2, O); ``trace`` -> (N1, N2), the mean over the K = O diagonal
            blocks.
    """
    if kind in ("pntk", "first_logit"):
        return blocks[0, 0]
    if kind == "entk":
        return blocks.permute(2, 3, 0, 1).contiguous()
    if kind == "block_diag":
        return blocks.permute(1, 2, 0).contiguous()
    return blocks.mean(0)  # trace: (1/O) sum_k Theta_kk
