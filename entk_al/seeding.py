"""Derivation of every random stream from (seed, round, component).

No code in entk-al draws from a global RNG: each random choice asks for a generator
keyed by the run seed, the round index and a component name, so that runs are
reproducible and resuming from a checkpoint gives the same draws as an uninterrupted run.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def _entropy(seed: int, round_idx: int, component: str) -> list[int]:
    # crc32 (not hash()) so the key is stable across processes and Python versions.
    return [int(seed) & 0xFFFFFFFF, int(round_idx) + 1, zlib.crc32(component.encode("utf-8"))]


def numpy_rng(seed: int, round_idx: int, component: str) -> np.random.Generator:
    """A NumPy generator for one (seed, round, component) stream.

    Args:
        seed: run seed (int).
        round_idx: round index; use -1 for things drawn before round 0.
        component: a short name of what draws, e.g. ``"initial"``, ``"subset"``, ``"train"``.
    """
    return np.random.default_rng(np.random.SeedSequence(_entropy(seed, round_idx, component)))


def int_seed(seed: int, round_idx: int, component: str) -> int:
    """A 63-bit integer seed for one (seed, round, component) stream."""
    ss = np.random.SeedSequence(_entropy(seed, round_idx, component))
    return int(ss.generate_state(2, dtype=np.uint32).astype(np.uint64) @ np.array([1 << 31, 1], dtype=np.uint64))


def torch_generator(seed: int, round_idx: int, component: str, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded for one (seed, round, component) stream."""
    g = torch.Generator(device=device)
    g.manual_seed(int_seed(seed, round_idx, component))
    return g
