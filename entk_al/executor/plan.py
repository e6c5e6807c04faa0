"""The fixed tile plan every executor runs: which pool ids form a tile, which shard owns it.

A tile is a block of ``tile_size`` consecutive global pool ids: tile t holds ids
[t·tile_size, (t+1)·tile_size). Every per-id computation (forward passes, scores, kernel rows,
distance updates) runs tile by tile, and every cross-tile reduction happens on the driver in
increasing tile order, in float64. Tile sizes never depend on the number of workers, so one
process and a cluster of any size compute the same numbers in the same order; shards only
decide *where* a tile runs. Ties break on (value, global id).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Pool ids per tile. Fixed: changing it changes the order of float64 reductions.
TILE_SIZE = 512


@dataclass(frozen=True)
class TilePlan:
    """Tiles of a pool of ``pool_size`` ids and their owners among ``num_shards`` shards.

    Shards own contiguous ranges of whole tiles (so contiguous id ranges), as even as possible.

    Attributes:
        pool_size: N, the number of pool ids.
        num_shards: shards (workers) the tiles are spread over (>= 1).
        tile_size: ids per tile (>= 1).

    Raises:
        ValueError: a size below 1.
    """

    pool_size: int
    num_shards: int = 1
    tile_size: int = TILE_SIZE

    def __post_init__(self) -> None:
        if self.pool_size < 1 or self.num_shards < 1 or self.tile_size < 1:
            raise ValueError(f"pool_size, num_shards and tile_size must be >= 1, got "
                             f"{self.pool_size}, {self.num_shards}, {self.tile_size}")

    @property
    def num_tiles(self) -> int:
        return -(-self.pool_size // self.tile_size)

    def tile_ids(self, tile: int) -> tuple[int, int]:
        """[start, stop) global ids of ``tile``."""
        return tile * self.tile_size, min(self.pool_size, (tile + 1) * self.tile_size)

    def shard_tiles(self, shard: int) -> range:
        """Tiles owned by ``shard``: a contiguous range (possibly empty when shards > tiles)."""
        per, extra = divmod(self.num_tiles, self.num_shards)
        start = shard * per + min(shard, extra)
        return range(start, start + per + (shard < extra))

    def shard_ids(self, shard: int) -> tuple[int, int]:
        """[start, stop) global ids owned by ``shard`` (start == stop when it owns no tile)."""
        tiles = self.shard_tiles(shard)
        if not len(tiles):
            return 0, 0
        return self.tile_ids(tiles.start)[0], self.tile_ids(tiles.stop - 1)[1]

    def owner(self, tile: int) -> int:
        """The shard that owns ``tile``."""
        for s in range(self.num_shards):
            if tile in self.shard_tiles(s):
                return s
        raise ValueError(f"tile {tile} outside the plan's {self.num_tiles} tiles")

    def split(self, ids: np.ndarray) -> dict[int, np.ndarray]:
        """Positions into ``ids`` grouped by tile: {tile: (n_t,) int64 positions}, tiles ascending.

        Within a tile the positions keep the order of ``ids`` (increasing ids stay increasing).

        Raises:
            ValueError: ids outside [0, pool_size).
        """
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.pool_size):
            raise ValueError(f"pool ids must lie in [0, {self.pool_size})")
        tiles = ids // self.tile_size
        order = np.argsort(tiles, kind="stable")
        bounds = np.flatnonzero(np.diff(tiles[order])) + 1
        return {int(tiles[g[0]]): g for g in np.split(order, bounds) if g.size}
