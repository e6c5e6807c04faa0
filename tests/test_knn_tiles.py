"""faiss searches per tile, merged by (distance, id): exact neighbours, the same as one global
IVF index over the same quantizer, and bit-identical under scattered tiles (no Ray)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch
from test_executor import TILE, ScatteredExecutor
from torch import nn

from entk_al.executor import LocalExecutor
from entk_al.scans.knn import embeddings, knn_on_shards, train_quantizer
from entk_al.scans.outputs import outputs_on_shards

PEN = {"kind": "penultimate"}


@pytest.fixture(scope="module")
def pool():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(260, 8, generator=gen)
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    ids = np.sort(np.random.default_rng(1).choice(len(x), 200, replace=False))
    return x, model, ids


def _local(x, model):
    ex = LocalExecutor(x, tile_size=TILE)
    ex.begin_round(0, 3, model)
    return ex


def test_tiled_search_finds_the_exact_nearest_ids(pool):
    x, model, ids = pool
    ex = _local(x, model)
    emb = outputs_on_shards(ex, ids)[1].double().numpy()
    q = emb[[3, 50, 120]] + 0.01
    dist, nbr, bad = knn_on_shards(ex, ids, q.astype(np.float32), 6, PEN)
    d2 = ((q[:, None, :] - emb[None, :, :]) ** 2).sum(-1)
    want = ids[np.argsort(d2, axis=1, kind="stable")[:, :6]]
    assert nbr.tolist() == want.tolist() and bad.size == 0
    np.testing.assert_allclose(dist, np.sort(d2, axis=1)[:, :6], rtol=1e-4, atol=1e-5)


def test_tiled_ivf_equals_one_ivf_index_over_the_same_quantizer(pool):
    x, model, ids = pool
    ex = _local(x, model)
    emb = embeddings(ex, ids, PEN).numpy()
    cents = train_quantizer(emb, 8, seed=4)
    q = emb[::25].copy()
    _, nbr, _ = knn_on_shards(ex, ids, q, 5, PEN, centroids=cents, nprobe=2)
    quant = faiss.IndexFlatL2(emb.shape[1])
    quant.add(cents)
    ivf = faiss.IndexIVFFlat(quant, emb.shape[1], len(cents))
    ivf.is_trained = True
    ivf.nprobe = 2
    ivf.add(emb)
    d, rows = ivf.search(q, 5)
    # Same lists; equal distances (ties) may be ordered by id here and by row there, and rows are increasing ids.
    assert nbr.tolist() == np.where(rows >= 0, ids[np.maximum(rows, 0)], -1).tolist()


@pytest.mark.parametrize("spec", [PEN, {"kind": "pntk", "dim": 6, "seed": 9}])
def test_scattered_tiles_give_bit_identical_neighbours(pool, spec):
    x, model, ids = pool
    results = []
    for ex in [_local(x, model)] + [ScatteredExecutor(x, 3, s) for s in (0, 1)]:
        ex.begin_round(0, 3, model)
        emb = embeddings(ex, ids[::-1].copy(), spec).numpy()
        cents = train_quantizer(emb, 4, seed=1)
        results.append((emb, *knn_on_shards(ex, ids, emb[:7], 9, spec)[:2],
                        *knn_on_shards(ex, ids, emb[:7], 9, spec, centroids=cents, nprobe=2)[:2]))
    for got in results[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(got, results[0]))
