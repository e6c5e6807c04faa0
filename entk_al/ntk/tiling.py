"""Tiled assembly of a kernel matrix from per-tile features.

Peak memory is O(K^2 N1 N2) for the result plus the features of two tiles (plus cached column
features while they fit in ``cache_bytes``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

DEFAULT_CACHE_BYTES = 1 << 30  # column-tile features kept across row tiles while under 1 GiB


def tiled_kernel(
    features: Callable[[torch.Tensor], tuple[Any, int]],
    pair: Callable[[Any, Any], torch.Tensor],
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    tile: int,
    full: bool,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> torch.Tensor:
    """Assemble the kernel from tiles.

    Args:
        features: x_tile -> (feats, nbytes); feats are opaque, handed to ``pair``.
        pair: (feats_a, feats_b) -> block (K, K, na, nb) if ``full`` else (K, na, nb).
        x2: None for the symmetric case, where only tiles j >= i are computed and the
            lower triangle is filled by transposition (Theta(x', x) = Theta(x, x')^T).
        x1: (N1, *F) inputs.
        tile: samples per tile (>= 1).
        full: True for (K, K, ...) blocks.
        cache_bytes: bytes of column-tile features kept across row tiles (recomputed beyond it).
    Returns:
        (K, K, N1, N2) if ``full`` else (K, N1, N2).
    """
    sym = x2 is None
    xb = x1 if sym else x2
    rows = [slice(i, min(i + tile, len(x1))) for i in range(0, len(x1), tile)]
    cols = [slice(i, min(i + tile, len(xb))) for i in range(0, len(xb), tile)]
    out = None
    cache: dict[int, Any] = {}
    sizes: dict[int, int] = {}
    cached = 0
    for i, r in enumerate(rows):
        if sym and i in cache:  # row tile i was already computed as column tile i
            fr = cache.pop(i)
            cached -= sizes.pop(i)
        else:
            fr, _ = features(x1[r])
        for j, c in enumerate(cols):
            if sym and j < i:
                continue
            if sym and j == i:
                fc = fr
            elif j in cache:
                fc = cache[j]
            else:
                fc, nb = features(xb[c])
                # Rows are visited once, so caching only pays when there are more row tiles.
                if i + 1 < len(rows) and cached + nb <= cache_bytes:
                    cache[j] = fc
                    sizes[j] = nb
                    cached += nb
            blk = pair(fr, fc)
            if sym and j == i:
                # BLAS results are not bitwise symmetric; callers (Cholesky, eigh) expect it
                t = blk.transpose(-1, -2)
                blk = 0.5 * (blk + (t.transpose(0, 1) if full else t))
            if out is None:
                out = blk.new_zeros(blk.shape[:-2] + (len(x1), len(xb)))
            out[..., r, c] = blk
            if sym and j > i:
                t = blk.transpose(-1, -2)
                out[..., c, r] = t.transpose(0, 1) if full else t
            del fc
    return out


def nbytes(*ts) -> int:
    total = 0
    for t in ts:
        if isinstance(t, torch.Tensor):
            total += t.numel() * t.element_size()
        elif isinstance(t, (list, tuple)):
            total += nbytes(*t)
        elif isinstance(t, dict):
            total += nbytes(*t.values())
        elif hasattr(t, "tensors"):
            total += nbytes(*t.tensors())
    return total
