"""A shard: the pool ids one worker owns, the round's model, and per-tile state.

The same class runs in the driver process (the ``local`` executor) and inside each Ray actor
(the ``ray`` executor), so both compute every tile with the same code. Per-round state (cached
outputs and features, running minima of the diversity steps, look-ahead rows) is kept per
tile and dropped when the next round begins.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..data.pool import Pool, TensorPool
from ..nets.models import eval_mode, last_linear

#: Give the C heap's free pages back to the OS after each tile task (:func:`trim_heap`).
TRIM_HEAP = True
_malloc_trim: Callable[[int], int] | None | bool = False  # False: not looked up yet


def trim_heap() -> None:
    """Return the C heap's free pages to the OS (glibc ``malloc_trim(0)``; elsewhere nothing).

    Why: a tile's forward pass allocates large transient tensors (the inputs, the
    activations), while the tile's cached outputs and results are small and live on. glibc's
    adaptive mmap threshold soon puts the transients on the heap too, where the survivors
    pin the holes they leave: over a 60,000-id scan of a small CNN the resident memory grew
    by ≈ 16 KB per id (≈ 16 GB for a 1M-id pool) although the live data is ≈ 0.3 KB per id.
    Trimming after each tile keeps the resident set at the live data (``scripts/bench_pool.py``).
    """
    global _malloc_trim
    if _malloc_trim is False:
        _malloc_trim = None
        try:
            fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
            fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
            _malloc_trim = fn
        except (OSError, AttributeError):  # not glibc (macOS, musl): its allocator does its own thing
            pass
    if _malloc_trim is not None:
        _malloc_trim(0)


def worker_threads(cpus_per_worker: float) -> int:
    """Torch intra-op threads of a worker given ``cpus_per_worker`` CPUs: the whole part, at least 1.

    Args:
        cpus_per_worker: CPUs per worker (``--cpus-per-worker``), > 0.
    """
    return max(1, int(cpus_per_worker))


@contextlib.contextmanager
def tile_numerics(threads: int | None) -> Iterator[None]:
    """The numerics every tile task runs under, in the driver (``local``) and in each Ray actor
    alike: ``threads`` torch intra-op threads (None: the process's setting), deterministic
    cuDNN without autotuning, and no TF32 (cuBLAS matmuls and cuDNN). The previous settings
    come back afterwards, so the driver's own training is not affected.

    Args:
        threads: torch intra-op threads (>= 1), or None.
    """
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (torch.get_num_threads(), cudnn.deterministic, cudnn.benchmark, matmul.allow_tf32, cudnn.allow_tf32)
    if threads is not None:
        torch.set_num_threads(threads)
    cudnn.deterministic, cudnn.benchmark, matmul.allow_tf32, cudnn.allow_tf32 = True, False, False, False
    try:
        yield
    finally:
        if threads is not None:
            torch.set_num_threads(before[0])
        cudnn.deterministic, cudnn.benchmark, matmul.allow_tf32, cudnn.allow_tf32 = before[1:]


def per_shard(fn: Callable) -> Callable:
    """Mark a task function as called once per shard (decorator).

    A task is a module-level function (Ray sends it to the actors by reference). A per-tile
    task is called once per tile: ``fn(shard, tile, payload, shared) -> result``. A
    ``per_shard`` task is called once per shard with all of the shard's tiles of the call,
    ``fn(shard, [(tile, payload), ...], shared) -> [(tile, result), ...]``, for work that
    shares something across the tiles (kernel features of the columns); its per-tile results
    must still not depend on which other tiles the shard holds.
    """
    fn.per_shard = True
    return fn


class Shard:
    """The pool a worker reads its ids from, and the per-tile state of one round.

    Args:
        pool: the pool (:class:`~entk_al.data.pool.Pool`, read by global id), or a CPU tensor of
            the owned ids' inputs (n, *input_shape) in id order, the first being ``id_start``.
        id_start: global id of a tensor ``pool``'s first row (ignored for a Pool).
        tile_size: ids per tile of the run's :class:`~entk_al.executor.plan.TilePlan`.
        device: where the model runs on this shard.
        threads: torch intra-op threads while a task runs (None: leave the process's setting);
            the other numerics of :func:`tile_numerics` hold for every task.
    """

    def __init__(self, pool: Pool | torch.Tensor, id_start: int, tile_size: int, device: str | torch.device = "cpu",
                 threads: int | None = None):
        self.pool = pool if isinstance(pool, Pool) else TensorPool(pool, offset=id_start)
        self.tile_size = int(tile_size)
        self.device = torch.device(device)
        self.threads = threads
        self.model: nn.Module | None = None
        self.round = self.seed = -1
        self.tiles: dict[int, dict[str, Any]] = {}
        #: per-round state shared by the shard's tiles (e.g. the kernel feature store).
        self.cache: dict[str, Any] = {}

    def begin_round(self, round_idx: int, seed: int, model: nn.Module) -> None:
        """Take this round's model (moved to the shard's device) and drop last round's state."""
        self.model = model.to(self.device)
        self.round, self.seed = int(round_idx), int(seed)
        self.tiles = {}
        self.cache = {}

    def state(self, tile: int) -> dict[str, Any]:
        """The mutable per-round state of ``tile`` (a dict, created empty)."""
        return self.tiles.setdefault(tile, {})

    def inputs(self, ids: np.ndarray) -> torch.Tensor:
        """Inputs at global ``ids`` (owned by this shard), on the shard's device in the model dtype."""
        x = self.pool.get(np.asarray(ids, dtype=np.int64))
        dtype = next(self.model.parameters()).dtype
        return x.to(device=self.device, dtype=dtype if x.is_floating_point() else x.dtype)

    @torch.no_grad()
    def outputs(self, tile: int, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (n, O), penultimate features (n, H)) at ``ids`` of ``tile``, cached for the round.

        Ids not yet cached go through one forward pass together, in the order given; the
        features are the input of the model's last ``nn.Linear``.
        """
        st = self.state(tile)
        base = tile * self.tile_size
        rows = np.asarray(ids, dtype=np.int64) - base
        if "have" not in st:
            st["have"] = np.zeros(self.tile_size, dtype=bool)
        missing = rows[~st["have"][rows]]
        if missing.size:
            missing = missing[np.sort(np.unique(missing, return_index=True)[1])]
            captured: list[torch.Tensor] = []
            handle = last_linear(self.model).register_forward_hook(
                lambda m, inp, out: captured.append(inp[0].flatten(1)))
            try:
                with eval_mode(self.model):
                    out = self.model(self.inputs(missing + base))
            finally:
                handle.remove()
            feats = captured.pop()
            if "logits" not in st:
                st["logits"] = out.new_zeros((self.tile_size, out.shape[1]))
                st["feats"] = feats.new_zeros((self.tile_size, feats.shape[1]))
            idx = torch.from_numpy(missing).to(out.device)
            st["logits"][idx] = out
            st["feats"][idx] = feats
            st["have"][missing] = True
        if "logits" not in st:  # nothing asked of this tile yet, and nothing asked now
            return torch.zeros(0, 0), torch.zeros(0, 0)
        idx = torch.from_numpy(rows).to(st["logits"].device)
        return st["logits"][idx], st["feats"][idx]

    def run(self, fn: Callable, jobs: list[tuple[int, Any]], shared: Any = None) -> list[tuple[int, Any]]:
        """Run the task function ``fn`` (see :func:`per_shard`) on each (tile, payload) of
        ``jobs``; [(tile, result)] in the same order."""
        with tile_numerics(self.threads):
            if getattr(fn, "per_shard", False):
                out = fn(self, jobs, shared)
                if TRIM_HEAP:
                    trim_heap()
                return out
            results = []
            for t, payload in jobs:
                results.append((t, fn(self, t, payload, shared)))
                if TRIM_HEAP:
                    trim_heap()
            return results
