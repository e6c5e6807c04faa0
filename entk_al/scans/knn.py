"""The faiss prefilter's pool scans on the tile plan: embeddings and nearest-neighbour searches.

Each tile embeds its ids (penultimate features, or random projections of pNTK features,
:func:`entk_al.lookahead.prefilter.pntk_random_features`) and answers a search with its own faiss index:
exact ``IndexFlatL2``, or ``IndexIVFFlat`` over one quantizer trained on the driver and
broadcast, so every tile probes the same cells. The driver merges the tiles' k-nearest lists
by (distance, global id), in tile order, so the neighbours do not depend on the number of
workers. Only the queries go out and (Q, k) lists come back; the pool's embeddings stay on the
shards.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import faiss
import numpy as np
import torch

from ..executor.shard import Shard
from ..lookahead.prefilter import pntk_random_features


def _embed(shard: Shard, tile: int, ids: np.ndarray, spec: dict) -> torch.Tensor:
    """(n, d) float32 CPU embeddings of ``ids`` (in this tile) of kind ``spec``; cached for the round."""
    if spec["kind"] == "penultimate":
        return shard.outputs(tile, ids)[1].float().cpu()
    st = shard.state(tile)
    key = ("pntk", spec["dim"], spec["seed"])
    cache = st.setdefault(key, {})
    missing = [i for i in ids.tolist() if i not in cache]
    if missing:
        z = pntk_random_features(shard.model, shard.inputs(np.asarray(missing)), spec["dim"], seed=spec["seed"])
        for i, row in zip(missing, z.float().cpu()):
            cache[i] = row
    return torch.stack([cache[i] for i in ids.tolist()]) if len(ids) else torch.zeros(0, spec["dim"])


def _embed_task(shard: Shard, tile: int, ids: np.ndarray, spec: dict) -> torch.Tensor:
    return _embed(shard, tile, ids, spec)


@contextlib.contextmanager
def _faiss_threads(n: int) -> Iterator[None]:
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _knn_search(shard: Shard, tile: int, ids: np.ndarray, shared: dict) -> dict:
    """This tile's k nearest of ``ids`` to each query: distances² (Q, k') float32, global ids (Q, k')."""
    emb = _embed(shard, tile, ids, shared["spec"]).numpy()
    finite = np.isfinite(emb).all(1)
    emb, own = np.ascontiguousarray(emb[finite]), ids[finite]
    d = shared["queries"].shape[1]
    # One faiss thread: a tile's search must not depend on the worker's thread count.
    with _faiss_threads(1):
        if shared["centroids"] is None:
            index: faiss.Index = faiss.IndexFlatL2(d)
        else:
            quantizer = faiss.IndexFlatL2(d)
            quantizer.add(shared["centroids"])
            index = faiss.IndexIVFFlat(quantizer, d, len(shared["centroids"]))
            index.is_trained = True
            index.nprobe = shared["nprobe"]
        index.add(emb)
        k = min(shared["k"], len(own))
        if k:
            dist, rows = index.search(shared["queries"], k)
        else:
            dist, rows = np.zeros((len(shared["queries"]), 0)), np.zeros((len(shared["queries"]), 0))
    rows = np.asarray(rows, dtype=np.int64)
    return {"dist": np.asarray(dist, dtype=np.float32), "ids": np.where(rows >= 0, own[np.maximum(rows, 0)], -1),
            "nonfinite": ids[~finite]}


def embeddings(executor: Any, ids: np.ndarray, spec: dict) -> torch.Tensor:
    """Embeddings of pool ``ids`` computed on their tiles: (len(ids), d) float32 CPU, rows in ``ids`` order.

    Args:
        executor: the run's executor (round begun).
        ids: (n,) int64 global ids.
        spec: ``{"kind": "penultimate"}`` or ``{"kind": "pntk", "dim": d, "seed": s}``.
    """
    ids = np.asarray(ids, dtype=np.int64)
    groups = executor.plan.split(ids)
    got = executor.map(_embed_task, {t: ids[p] for t, p in groups.items()}, spec)
    out = None
    for t, p in groups.items():
        if out is None:
            out = got[t].new_empty((len(ids), got[t].shape[1]))
        out[torch.from_numpy(p)] = got[t]
    return out if out is not None else torch.zeros(0, 0)


def train_quantizer(sample: np.ndarray, nlist: int, seed: int) -> np.ndarray:
    """(nlist, d) float32 IVF cell centroids trained by faiss k-means on ``sample`` (S, d) with ``seed``."""
    d = sample.shape[1]
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
    ivf.cp.seed = seed
    ivf.train(np.ascontiguousarray(sample, dtype=np.float32))
    return ivf.quantizer.reconstruct_n(0, nlist)


def knn_on_shards(executor: Any, ids: np.ndarray, queries: np.ndarray, k: int, spec: dict, *,
                  centroids: np.ndarray | None = None, nprobe: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` nearest of pool ``ids`` to each query, searched per tile and merged on the driver.

    Args:
        executor: the run's executor (round begun).
        ids: (N,) int64 global ids searched (e.g. the unlabeled pool).
        queries: (Q, d) float32 query embeddings.
        k: neighbours per query.
        spec: embedding kind (:func:`embeddings`).
        centroids: (nlist, d) IVF quantizer (:func:`train_quantizer`), or None for exact search.
        nprobe: IVF cells searched per query.

    Returns:
        (distances² (Q, k) float32, global ids (Q, k) int64 (−1 = none), ids with non-finite
        embeddings), each query's list by increasing (distance, id).
    """
    ids = np.asarray(ids, dtype=np.int64)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    groups = executor.plan.split(ids)
    shared = {"queries": queries, "k": int(k), "spec": spec, "centroids": centroids, "nprobe": int(nprobe)}
    got = executor.map(_knn_search, {t: ids[p] for t, p in groups.items()}, shared)
    tiles = sorted(got)
    q = len(queries)
    dist = np.concatenate([got[t]["dist"] for t in tiles], axis=1) if tiles else np.zeros((q, 0), np.float32)
    nbr = np.concatenate([got[t]["ids"] for t in tiles], axis=1) if tiles else np.zeros((q, 0), np.int64)
    dist = np.where(nbr >= 0, dist, np.inf).astype(np.float32)
    out_d = np.full((q, k), np.inf, dtype=np.float32)
    out_i = np.full((q, k), -1, dtype=np.int64)
    for r in range(q):
        order = np.lexsort((nbr[r], dist[r]))[:k]
        order = order[nbr[r][order] >= 0]
        out_d[r, :len(order)], out_i[r, :len(order)] = dist[r][order], nbr[r][order]
    nonfinite = np.concatenate([got[t]["nonfinite"] for t in tiles]) if tiles else np.zeros(0, np.int64)
    return out_d, out_i, nonfinite
