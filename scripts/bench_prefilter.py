"""Benchmark: faiss prefilter on a large synthetic pool (default 1,000,000 × 128 float32).

Not a test. Generates clustered embeddings in chunks, a random labeled set and a cheap score,
then runs the prefilter's steps (shortlist, :func:`entk_al.lookahead.prefilter.diverse_subset`, neighbours,
:func:`entk_al.lookahead.prefilter.eval_set`) against one single-process faiss index (IVF above 100k
points) and reports wall time per stage, peak RSS (ru_maxrss) against the embeddings' own size,
and the IVF neighbour recall against exact search on a sample of queries. A run searches per
tile of the executor's plan instead (:mod:`entk_al.scans.knn`); this measures the
faiss index and the driver's steps, not the tiles.

It also measures the round cache in front of the prefilter (``RoundContext.embeddings`` and
``probs`` of every unlabeled id, as ``lookahead`` with ``prefilter=knn`` asks for them), each in
a fresh child process so that ru_maxrss is that path's own peak: the current context against a
replica of the former one (per-batch list + concatenation + indexed copy), on a ``--hidden``-wide
feature matrix (256: 0.95 GiB for 1M items).

Usage: python scripts/bench_prefilter.py [--pool 1000000] [--dim 128] [--candidates 1000] [--hidden 256]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _round_cache_peak(pool: int, dim: int, hidden: int, former: bool) -> dict:
    """Peak RSS of one round's outputs + embeddings for every pool id (run in a child process)."""
    import torch
    from torch import nn

    from entk_al.nets.models import predict_with_features
    from entk_al.round.context import RoundContext

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(pool, dim)
    model = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 10)).eval()
    ids = np.arange(pool, dtype=np.int64)
    rss_inputs = peak_rss_mb()
    t0 = time.perf_counter()
    if former:  # the former cache: gather copy, per-batch list, its concatenation, indexed copy
        logits, feats = predict_with_features(model, x[torch.from_numpy(ids)], 1024)
        emb = feats[torch.from_numpy(ids)]
        probs = torch.softmax(logits[torch.from_numpy(ids)], dim=1)
    else:
        ctx = RoundContext(round=0, seed=0, model=model, device=torch.device("cpu"), pool=x, num_classes=10,
                           labeled_ids=np.empty(0, dtype=np.int64), labeled_targets=np.empty(0, dtype=np.int64),
                           unlabeled_ids=ids, candidate_ids=ids, rng=np.random.default_rng(0),
                           torch_generator=torch.Generator(), oracle=lambda i: i, kernel_fn=lambda *a: None)
        emb = ctx.embeddings(ids)
        probs = ctx.probs(ids)
    seconds = time.perf_counter() - t0
    features_mb = emb.numel() * 4 / 2**20
    peak = peak_rss_mb()
    del emb, probs
    return {"features_mb": features_mb, "inputs_mb": x.numel() * 4 / 2**20, "rss_after_inputs_mb": rss_inputs,
            "peak_rss_mb": peak, "extra_over_features": (peak - rss_inputs) / features_mb, "seconds": seconds}


def round_cache_comparison(pool: int, dim: int, hidden: int) -> dict:
    import multiprocessing

    mp = multiprocessing.get_context("spawn")
    out = {}
    for name, former in (("former", True), ("current", False)):
        with mp.Pool(1) as workers:
            out[name] = workers.apply(_round_cache_peak, (pool, dim, hidden, former))
    out["peak_ratio_current_over_former"] = ((out["current"]["peak_rss_mb"] - out["current"]["rss_after_inputs_mb"])
                                             / (out["former"]["peak_rss_mb"] - out["former"]["rss_after_inputs_mb"]))
    return out


def build_index(emb: np.ndarray, *, seed: int = 0, nprobe: int = 16, add_chunk: int = 262_144):
    """One L2 faiss index over ``emb`` (N, d): exact up to EXACT_MAX rows, else IVFFlat with about
    √N cells trained on a seeded sample of 64 rows per cell (chunked adds bound its memory)."""
    import math

    import faiss

    from entk_al.lookahead.prefilter import EXACT_MAX

    n, d = emb.shape
    if n <= EXACT_MAX:
        index = faiss.IndexFlatL2(d)
    else:
        nlist = max(16, int(math.sqrt(n)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
        index.cp.seed = seed
        index.train(emb[np.sort(np.random.default_rng(seed).choice(n, min(n, 64 * nlist), replace=False))])
        index.nprobe = nprobe
    for s in range(0, n, add_chunk):
        index.add(emb[s:s + add_chunk])
    return index


def knn(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances² (Q, k), rows (Q, k); −1 = none) of the k nearest indexed rows."""
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, index.ntotal))


def prefilter_knn(emb, ids, scores, *, num_candidates: int, eval_size: int, neighbours: int, seed: int, index):
    """The look-ahead's knn prefilter on one index: (candidate ids, eval ids starting with them)."""
    from entk_al.lookahead.prefilter import diverse_subset, eval_set

    top = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")[:4 * num_candidates]
    keep = top[diverse_subset(emb[top], num_candidates, seed=seed)]
    _, rows = knn(index, emb[keep], neighbours + 1)
    return ids[keep], eval_set(ids[keep], np.where(rows >= 0, ids[np.maximum(rows, 0)], -1), eval_size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pool", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--labeled", type=int, default=1000)
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--eval-size", type=int, default=4000)
    ap.add_argument("--neighbours", type=int, default=10)
    ap.add_argument("--recall-queries", type=int, default=200)
    ap.add_argument("--hidden", type=int, default=256, help="feature width of the round-cache model")
    ap.add_argument("--skip-cache", action="store_true", help="skip the round-cache measurement")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cache = None if args.skip_cache else round_cache_comparison(args.pool, args.dim, args.hidden)
    if cache is not None:
        for name in ("former", "current"):
            c = cache[name]
            print(f"round cache ({name}): {args.pool:,} ids, features {c['features_mb']:.0f} MiB, inputs "
                  f"{c['inputs_mb']:.0f} MiB; peak RSS {c['peak_rss_mb']:.0f} MiB = inputs + "
                  f"{c['extra_over_features']:.2f} x features ({c['seconds']:.1f}s)")
        print(f"round cache: current/former memory above the inputs {cache['peak_ratio_current_over_former']:.2f}")

    import faiss

    rss0 = peak_rss_mb()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((256, args.dim)).astype(np.float32) * 4
    labeled = np.sort(rng.choice(args.pool, args.labeled, replace=False))
    mask = np.ones(args.pool, dtype=bool)
    mask[labeled] = False
    unl = np.flatnonzero(mask)
    emb = np.empty((len(unl), args.dim), dtype=np.float32)  # only the unlabeled rows are held
    for s in range(0, len(unl), 100_000):
        e = min(len(unl), s + 100_000)
        emb[s:e] = centres[rng.integers(0, 256, e - s)] + rng.standard_normal((e - s, args.dim), dtype=np.float32)
    scores = rng.random(len(unl))
    rss_data = peak_rss_mb()

    t0 = time.perf_counter()
    index = build_index(emb, seed=0)
    t1 = time.perf_counter()
    cand, ev = prefilter_knn(emb, unl, scores, num_candidates=args.candidates, eval_size=args.eval_size,
                             neighbours=args.neighbours, seed=0, index=index)
    t2 = time.perf_counter()
    rss_peak = peak_rss_mb()
    assert np.isin(cand, unl).all() and np.isin(ev, unl).all() and not np.isin(ev, labeled).any()

    q = emb[rng.choice(len(unl), args.recall_queries, replace=False)]
    _, got = knn(index, q, args.neighbours)
    exact = faiss.IndexFlatL2(args.dim)
    exact.add(emb)
    _, want = knn(exact, q, args.neighbours)
    recall = float(np.mean([len(set(a) & set(b)) / args.neighbours for a, b in zip(got, want)]))
    res = {"pool": args.pool, "dim": args.dim, "unlabeled": int(len(unl)), "index": type(index).__name__,
           "nlist": int(getattr(index, "nlist", 0)), "nprobe": int(getattr(index, "nprobe", 0)),
           "build_index_seconds": t1 - t0, "prefilter_seconds": t2 - t1, "total_seconds": t2 - t0,
           "candidates": int(len(cand)), "eval_size": int(len(ev)),
           "rss_start_mb": rss0, "rss_after_embeddings_mb": rss_data, "peak_rss_prefilter_mb": rss_peak,
           "embeddings_mb": emb.nbytes / 2**20, "recall_at_k_vs_exact": recall,
           "faiss_threads": faiss.omp_get_max_threads(),
           "round_cache": cache}
    print(f"pool {args.pool:,} x {args.dim}: {res['index']} (nlist {res['nlist']}, nprobe {res['nprobe']}) built in "
          f"{res['build_index_seconds']:.1f}s, prefilter {res['prefilter_seconds']:.1f}s -> {len(cand)} candidates, "
          f"|U| = {len(ev)}; peak RSS {rss_peak:.0f} MiB (embeddings {res['embeddings_mb']:.0f} MiB, "
          f"{rss_data:.0f} MiB before indexing); recall@{args.neighbours} vs exact {recall:.3f}")
    if args.json:
        from entk_al.fileio import write_json

        write_json(args.json, res)


if __name__ == "__main__":
    main()
