"""Empirical neural tangent kernels of PyTorch models.

Public API: :func:`pntk`, :func:`entk`, :func:`kernel`.

Definitions (Jacot et al. 2018; Mohamadi, Bae & Sutherland 2022, arXiv 2206.12543):
    eNTK   Theta(x, x') = J(x) J(x')^T, an O x O block per pair, J = d f / d theta.
    pNTK   pNTK(x, x') = <grad s(x), grad s(x')>, s(x) = sum_k f_k(x) / sqrt(O)
                        = (1/O) 1^T Theta(x, x') 1                         (their eq. 3).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import common, gram, jacobian
from .features import FeatureKernel
from .tiling import tiled_kernel

__all__ = ["pntk", "entk", "kernel", "FeatureKernel", "PNTK"]

#: The sum-of-logits pNTK as a :class:`FeatureKernel`: ``PNTK(model, x1, x2)`` is
#: :func:`pntk`; callers that reuse features use :meth:`FeatureKernel.prepare`.
PNTK = FeatureKernel("pntk")


def kernel(
    model: nn.Module,
    x1,
    x2=None,
    *,
    kind: str = "pntk",
    method: str = "auto",
    batch_size: int | None = None,
    tile_size: int | None = None,
    params: Any = "trainable",
    precision: str = "full",
) -> torch.Tensor:
    """Empirical NTK-type kernel between two sets of inputs, over the parameters ``params``.

    Args:
        model: maps (N, *F) to (N, O) outputs (trailing output dims are flattened into O).
            Evaluated in eval mode (BatchNorm running stats, no dropout); each submodule's
            train/eval flag is restored afterwards.
        x1: (N1, *F) inputs. Floating inputs are cast to the model dtype; integer inputs (token
            ids) keep their dtype. Both are moved to the model device.
        x2: (N2, *F) inputs or None for x2 = x1 (symmetric; only upper tiles are computed).
        kind: "pntk" (N1, N2); "entk" (N1, N2, O, O); "first_logit" Theta_11 (N1, N2);
            "trace" (1/O) sum_k Theta_kk (N1, N2); "block_diag" Theta_kk (N1, N2, O).
        method: one of
            "gram" (:mod:`.gram`: layer-wise engine; one batched forward and K backward passes
                per tile, each layer's share either from materialized per-sample gradients or
                in factored form, whichever its cost model finds cheaper; exact; parameters of
                unsupported or shared modules go to the jacobian path).
                Use when: the model is built from Linear / Conv1d / Conv2d / Embedding /
                BatchNorm / LayerNorm / GroupNorm layers (MLPs, CNNs, ResNets), i.e. almost
                always; it is the fast path.
            "jacobian" (:mod:`.jacobian`: torch.func vmap(grad) per-sample gradients, J J^T).
                Use when: cross-checking the gram engine, or the model is mostly custom
                parameters / functional weight reuse that the gram engine would send to this
                path anyway; memory K * tile * P floats per tile, so tiles are small for big P.
            "auto" (= "gram").
                Use when: no reason to choose; it follows the recommended engine.
        batch_size: samples per vmap chunk in torch.func computations (None: whole tile).
        tile_size: samples per tile along N1 and N2; peak memory is O(K^2 N1 N2 + tile features).
            Default: for "gram" the largest tile (at most 1024) whose features fit in 1.5 GiB
            (CIFAR ResNet-18, float32: about 128); for "jacobian" the largest tile whose
            per-sample gradients fit in 512 MiB (at most 512).
        params: which parameters the kernel differentiates
            (:func:`~entk_al.ntk.common.select_params`): ``"trainable"`` (default, those with
            ``requires_grad``), ``"all"``, ``"last:N"`` (the last N modules with parameters) or
            a list of parameter-name prefixes. A subset gives the NTK of the network linearized
            in those parameters only: what a fine-tuning run that trains only them changes.
        precision: arithmetic of the Gram products (the per-sample gradients are always
            computed in the model dtype):
            "full" (default): exact in the model dtype.
            "tf32" (CUDA only): float32 GEMMs on TF32 tensor cores (10-bit mantissa inputs,
                float32 accumulation).
            "bf16": features stored in bfloat16 (half the feature memory), products
                accumulated in float32 (on the CPU: oneDNN's bfloat16 GEMM, whose partial
                products over 65536 columns are summed in float64). Only fast where the
                hardware has bfloat16 units (GPUs, CPUs with AMX / AVX-512 BF16); on an
                AVX2-only CPU it is several times slower than "full".
            Reduced precision trades exactness for speed: docs/ntk_bench.md reports the
            kernel's relative error and the look-ahead selection's overlap with "full".
    Returns:
        Tensor in the model dtype on the model device (float64 for float64 models).
    Raises:
        ValueError: unknown kind/method/precision, bad sizes, empty input, x1/x2 feature-shape
            mismatch, model without trainable parameters, a model whose forward returns no
            tensor (a tuple or dict: "model must return an (N, O) tensor"), ``params`` that
            match no parameter, precision "tf32" off CUDA, a reduced precision with method
            "jacobian".
    """
    common.check_kind_method(kind, method)
    common.check_sizes(batch_size, tile_size)
    # The kernel differentiates the model: it enables what it needs inside no_grad() and
    # inference_mode() (selection code is often wrapped in them) and returns a detached result.
    with torch.inference_mode(False), torch.enable_grad():
        x1, x2 = common.prepare_inputs(model, x1, x2)
        chosen = common.select_params(model, params)
        with common.differentiating(model, chosen):
            return _kernel(model, x1, x2, kind, method, batch_size, tile_size, chosen,
                           precision).detach()


def _kernel(model, x1, x2, kind, method, batch_size, tile_size, params, precision) -> torch.Tensor:
    device, dtype = common.model_device_dtype(model)
    gram.check_precision(precision, device, method)
    with common.eval_mode(model):
        n_out = _n_outputs(model, x1)
        V, full = common.directions(kind, n_out, device, dtype)
        if method in ("auto", "gram"):
            blocks = gram.gram_blocks(model, params, x1, x2, V, full, batch_size, tile_size,
                                      precision)
        else:
            P = sum(p.numel() for p in params.values())
            tile = tile_size or jacobian.default_tile(P, V.shape[0], V.element_size())
            feats = jacobian.make_features(model, params, V, batch_size)
            blocks = tiled_kernel(
                feats, lambda a, b: jacobian.pair_materialized(a, b, full), x1, x2, tile, full)
    return common.finish(blocks, kind)


def _n_outputs(model: nn.Module, x: torch.Tensor) -> int:
    """O, from one forward pass; a model returning anything but a tensor is refused here, at
    the first call, rather than deep inside the kernel code."""
    try:
        with torch.no_grad():
            out = model(x[:1])
    except RuntimeError as exc:  # shape mismatch inside the model: the caller's inputs are wrong
        raise ValueError(f"the model cannot take inputs of shape {tuple(x.shape[1:])} "
                         f"({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"model must return an (N, O) tensor, got a {type(out).__name__}")
    return out.reshape(1, -1).shape[1]


def pntk(model: nn.Module, x1, x2=None, *, method: str = "auto", batch_size: int | None = None,
         tile_size: int | None = None, params: Any = "trainable",
         precision: str = "full") -> torch.Tensor:
    """Sum-of-logits pseudo-NTK, shape (N1, N2): (1/O) 1^T Theta(x, x') 1
    (Mohamadi et al. 2022, arXiv 2206.12543, eq. 3). See :func:`kernel` for arguments/errors.

    Args:
        model: network mapping (N, *F) to (N, O).
        x1: (N1, *F) inputs.
        x2: (N2, *F) inputs, or None for x2 = x1.
        method: ``auto``, ``gram`` or ``jacobian`` (see :func:`kernel`).
        batch_size: vmap chunk size of the jacobian path, or None.
        tile_size: samples per kernel tile, or None for the default.
        params: parameters differentiated (see :func:`kernel`).
        precision: ``full`` (exact, default), ``tf32`` or ``bf16`` Gram products (see :func:`kernel`).
    """
    return kernel(model, x1, x2, kind="pntk", method=method, batch_size=batch_size,
                  tile_size=tile_size, params=params, precision=precision)


def entk(model: nn.Module, x1, x2=None, *, method: str = "auto", batch_size: int | None = None,
         tile_size: int | None = None, params: Any = "trainable",
         precision: str = "full") -> torch.Tensor:
    """Full empirical NTK, shape (N1, N2, O, O): Theta(x, x')_{kl} = <grad f_k(x), grad f_l(x')>
    (Jacot et al. 2018, eq. 3). See :func:`kernel` for arguments/errors.

    Args:
        model: network mapping (N, *F) to (N, O).
        x1: (N1, *F) inputs.
        x2: (N2, *F) inputs, or None for x2 = x1.
        method: ``auto``, ``gram`` or ``jacobian`` (see :func:`kernel`).
        batch_size: vmap chunk size of the jacobian path, or None.
        tile_size: samples per kernel tile, or None for the default.
        params: parameters differentiated (see :func:`kernel`).
        precision: ``full`` (exact, default), ``tf32`` or ``bf16`` Gram products (see :func:`kernel`).
    """
    return kernel(model, x1, x2, kind="entk", method=method, batch_size=batch_size,
                  tile_size=tile_size, params=params, precision=precision)
