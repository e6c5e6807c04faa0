"""Jacobian NTK path (``method="jacobian"``, and the gram engine's fallback for unsupported
parameters): per-sample gradients with torch.func (vmap of grad / jacrev).

Features of a tile are the materialized per-sample gradients J_V(x) = V J(x), shape (K, N, P),
and a kernel block is J_V(x) J_V(x')^T (empirical NTK, Jacot et al. 2018 eq. 3 / Novak et al.
2022 "Fast finite width NTK" eq. 1). Memory per tile is K * tile * P floats, so the default
tile size is chosen from a memory budget.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

from .tiling import nbytes

JACOBIAN_BUDGET_BYTES = 1 << 29  # 512 MiB of per-sample gradients per tile


def default_tile(n_params: int, k: int, itemsize: int, cap: int = 512) -> int:
    """Samples per tile so that one tile's (K, tile, P) gradients fit ``JACOBIAN_BUDGET_BYTES``; between 1 and ``cap``.

    Args:
        n_params: P, the number of trainable parameters.
        k: K, the number of output directions.
        itemsize: bytes per element of the model dtype.
        cap: largest tile returned.
    """
    return int(max(1, min(cap, JACOBIAN_BUDGET_BYTES // max(1, n_params * k * itemsize))))


def per_sample_grads(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    V: torch.Tensor,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Per-sample gradients of V_k . f(x_n) w.r.t. ``params`` only (other parameters and
    buffers are held at the module's own values).

    Args:
        params: name -> tensor (subset of ``model.named_parameters()``).
        x: (N, ...) inputs; each sample is run as a batch of one, so the model must be in eval mode.
        V: (K, O) directions.
        model: the network, in eval mode.
        chunk_size: samples per vmap chunk (None: all at once); bounds peak memory.
    Returns:
        (K, N, P) with P = total size of ``params`` (flattened in dict order).
    """
    names = list(params)
    detached = {n: params[n].detach() for n in names}

    def f(p, xi):
        out = functional_call(model, p, (xi.unsqueeze(0),), strict=False)
        return V @ out.reshape(-1)

    n = x.shape[0]
    if V.shape[0] == 1:
        g = vmap(grad(lambda p, xi: f(p, xi)[0]), in_dims=(None, 0), chunk_size=chunk_size)(
            detached, x)
        flat = torch.cat([g[nm].reshape(n, -1) for nm in names], dim=1)
        return flat.unsqueeze(0)
    j = vmap(jacrev(f), in_dims=(None, 0), chunk_size=chunk_size)(detached, x)
    flat = torch.cat([j[nm].reshape(n, V.shape[0], -1) for nm in names], dim=2)
    return flat.transpose(0, 1)


def pair_materialized(a: torch.Tensor, b: torch.Tensor, full: bool) -> torch.Tensor:
    """(K, Na, P) x (K, Nb, P) -> (K, K, Na, Nb) if full else (K, Na, Nb).

    Args:
        a: (K, Na, P) per-sample gradients of the row tile.
        b: (K, Nb, P) per-sample gradients of the column tile.
        full: True for all K x K direction pairs, False for matching directions only.
    """
    if full:
        return torch.einsum("knp,lmp->klnm", a, b)
    return torch.bmm(a, b.transpose(1, 2))


def make_features(model, params, V, chunk_size):
    """``features(x) -> ((K, N, P) per-sample gradients, bytes)`` for :func:`~entk_al.ntk.tiling.tiled_kernel`.

    Args:
        model: the network, in eval mode.
        params: name -> trainable parameter.
        V: (K, O) output directions.
        chunk_size: vmap chunk size, or None.
    """
    def features(x):
        g = per_sample_grads(model, params, x, V, chunk_size)
        return g, nbytes(g)

    return features
