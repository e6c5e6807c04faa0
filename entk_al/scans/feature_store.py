"""Kernel features on a shard: computed once per round and id batch, reused by every block.

A kernel block k(rows, cols) is an inner product of per-sample features
(:mod:`entk_al.ntk.features`). The shard computes the features of an id set in *canonical
batches*: the set's ids sorted, grouped by plan tile, each group cut into pieces of at most
``max_batch`` ids. A piece's features depend only on the round's model, the prepared kernel and
the piece's ids, so any shard that computes a piece gets the same bits, whatever the number of
workers, and a piece asked for again (the labeled set's features for K = k(L, L) and then for
every tile's A = k(U_t, L); a tile's rows that are also candidates) comes from the store.
Pieces stay in the store while it holds under :data:`STORE_BYTES`; beyond that they are
recomputed when asked for (memory, not results).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ..ntk.features import FeatureKernel, PreparedKernel

#: Feature bytes a shard keeps for the round (pieces beyond it are recomputed when needed).
STORE_BYTES = 1 << 30
#: Feature bytes of the column pieces one block multiplies at once (memory, not results).
CHUNK_BYTES = 1 << 29


def is_feature_kernel(fn: Any) -> bool:
    """Whether ``fn`` hands out per-sample features (:class:`~entk_al.ntk.features.FeatureKernel`)."""
    return isinstance(fn, FeatureKernel)


class IdSet:
    """A set of pool ids in canonical order, cut into canonical pieces.

    Args:
        ids: (n,) int64 global pool ids in the caller's order.
        tile_size: the plan's ids per tile.
        max_batch: largest piece.

    Attributes:
        ids: (n,) the ids in the caller's order.
        order: (n,) positions into ``ids`` that sort them (stable): canonical = ids[order].
        canon_of: (n,) canonical position of each caller position.
        pieces: list of (start, stop) canonical ranges, each inside one tile, at most max_batch long.
    """

    def __init__(self, ids: np.ndarray, tile_size: int, max_batch: int):
        self.ids = np.asarray(ids, dtype=np.int64)
        self.order = np.argsort(self.ids, kind="stable")
        self.sorted = self.ids[self.order]
        self.canon_of = np.empty(len(self.ids), dtype=np.int64)
        self.canon_of[self.order] = np.arange(len(self.ids))
        self.pieces: list[tuple[int, int]] = []
        tiles = self.sorted // tile_size
        bounds = np.flatnonzero(np.diff(tiles)) + 1
        for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(tiles)]):
            for s in range(int(start), int(stop), max_batch):
                self.pieces.append((s, min(int(stop), s + max_batch)))

    def __len__(self) -> int:
        return len(self.ids)

    def tile_of_piece(self, p: int, tile_size: int) -> int:
        return int(self.sorted[self.pieces[p][0]]) // tile_size

    def chunks(self, bytes_per_sample: int) -> list[tuple[int, int]]:
        """Piece index ranges [p0, p1) whose samples' features fit :data:`CHUNK_BYTES` (>= 1 piece each)."""
        out, p0, size = [], 0, 0
        for p, (s, e) in enumerate(self.pieces):
            n = (e - s) * bytes_per_sample
            if p > p0 and size + n > CHUNK_BYTES:
                out.append((p0, p))
                p0, size = p, 0
            size += n
        if self.pieces:
            out.append((p0, len(self.pieces)))
        return out


class FeatureStore:
    """The round's kernel features on one shard, for one kernel function.

    Args:
        shard: the shard (its model, device, inputs and tile size).
        fn: the feature kernel.
        probe: (4, *input_shape) inputs the layer plan is traced on: the same on every shard.
    """

    def __init__(self, shard: Any, fn: FeatureKernel, probe: torch.Tensor):
        self.shard = shard
        self.prep: PreparedKernel = fn.prepare(shard.model, probe.to(shard.device))
        self._pieces: dict[bytes, Any] = {}
        self._bytes = 0
        #: feature passes run (pieces computed), for the structural test of the kernel path.
        self.passes = 0

    @classmethod
    def of(cls, shard: Any, fn: FeatureKernel, probe: torch.Tensor) -> "FeatureStore":
        """The shard's store for ``fn`` this round (created on first use)."""
        stores = shard.cache.setdefault("feature_stores", {})
        if fn not in stores:
            stores[fn] = cls(shard, fn, probe)
        return stores[fn]

    def id_set(self, ids: np.ndarray) -> IdSet:
        return IdSet(ids, self.shard.tile_size, self.prep.max_batch)

    def piece(self, ids: np.ndarray, inputs: Callable[[], torch.Tensor]) -> Any:
        """Features of the canonical piece ``ids`` (sorted, one tile); ``inputs()`` gives their inputs."""
        key = ids.tobytes()
        got = self._pieces.get(key)
        if got is None:
            got = self.prep.features(inputs())
            self.passes += 1
            size = len(ids) * self.prep.bytes_per_sample
            if self._bytes + size <= STORE_BYTES:
                self._pieces[key] = got
                self._bytes += size
        return got

    def features(self, s: IdSet, p0: int, p1: int, x: torch.Tensor | None = None) -> Any:
        """Features of pieces [p0, p1) of ``s``, concatenated in canonical order.

        Args:
            s: the id set.
            p0: first piece.
            p1: one past the last piece.
            x: (len(s), *input_shape) inputs of ``s`` in the caller's order, for ids this shard
                does not own (None: every id is the shard's own).
        """
        fs = []
        for s0, s1 in s.pieces[p0:p1]:
            ids = s.sorted[s0:s1]
            if x is None:
                fs.append(self.piece(ids, lambda ids=ids: self.shard.inputs(ids)))
            else:
                rows = torch.from_numpy(s.order[s0:s1])
                fs.append(self.piece(ids, lambda rows=rows: x[rows]))
        return self.prep.cat(fs)

    def block(self, fa: Any, fb: Any) -> torch.Tensor:
        """k between two feature sets: (len(fa), len(fb)) detached, in the model dtype."""
        return self.prep.block(fa, fb)

    def features_at(self, s: IdSet, positions: np.ndarray, x: torch.Tensor | None = None) -> Any:
        """Features of the ids at caller ``positions`` of ``s``, in that order (from their canonical pieces)."""
        canon = s.canon_of[np.asarray(positions, dtype=np.int64)]
        starts = np.array([p[0] for p in s.pieces], dtype=np.int64)
        which = np.searchsorted(starts, canon, side="right") - 1
        need = np.unique(which)
        fs, offset, base = [], {}, 0
        for p in need.tolist():
            fs.append(self.features(s, p, p + 1, x))
            offset[p] = base - s.pieces[p][0]
            base += s.pieces[p][1] - s.pieces[p][0]
        local = canon + np.fromiter((offset[p] for p in which.tolist()), dtype=np.int64, count=len(which))
        return self.prep.cat(fs).rows(torch.from_numpy(local).to(self.shard.device))

    def blocks(self, rows: dict[int, IdSet], cols: IdSet, x_cols: torch.Tensor | None,
               start: dict[int, int] | None = None) -> dict[int, torch.Tensor]:
        """k(rows of each tile, cols): {tile: (len(rows[t]), len(cols) − start[t])} on the shard's
        device, rows in the caller's order, columns in canonical order from ``start[t]`` on.

        Column pieces are taken a chunk at a time (:data:`CHUNK_BYTES`) and every row tile is
        multiplied with the chunk before the next is computed, so columns are computed once per
        call even when the store cannot keep them.
        """
        start = start or {t: 0 for t in rows}
        dev = self.shard.device
        out = {t: torch.empty(len(r), len(cols) - start[t], dtype=self.prep.dtype, device=dev) for t, r in rows.items()}
        for p0, p1 in cols.chunks(self.prep.bytes_per_sample):
            c0, c1 = cols.pieces[p0][0], cols.pieces[p1 - 1][1]
            if all(c1 <= start[t] for t in rows):
                continue
            f_cols = self.features(cols, p0, p1, x_cols)
            for t, r in rows.items():
                if c1 <= start[t]:
                    continue
                lo = max(c0, start[t])
                f_c = f_cols.rows(slice(lo - c0, None))
                for q, (r0, r1) in enumerate(r.pieces):
                    blk = self.block(self.features(r, q, q + 1), f_c)
                    out[t][torch.from_numpy(r.order[r0:r1]).to(dev), lo - start[t]:c1 - start[t]] = blk
        return out
