"""Benchmark: faiss prefilter on a large synthetic pool (default 1,000,000 × 128 float32).

Not a test. Generates clustered embeddings in chunks, a random labeled set and a cheap score,
then runs :func:`entk_al.prefilter.prefilter_knn` (IVF index above 100k points) and reports
wall time per stage, peak RSS (ru_maxrss) against the embeddings' own size, and the IVF
neighbour recall against exact search on a sample of queries.

Usage: python scripts/bench_prefilter.py [--pool 1000000] [--dim 128] [--candidates 1000]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pool", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--labeled", type=int, default=1000)
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--eval-size", type=int, default=4000)
    ap.add_argument("--neighbours", type=int, default=10)
    ap.add_argument("--recall-queries", type=int, default=200)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import faiss

    from entk_al.prefilter import build_index, knn, prefilter_knn

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
           "embeddings_mb": emb.nbytes / 2**20, "recall_at_k_vs_exact": recall, "faiss_threads": faiss.omp_get_max_threads()}
    print(f"pool {args.pool:,} x {args.dim}: {res['index']} (nlist {res['nlist']}, nprobe {res['nprobe']}) built in "
          f"{res['build_index_seconds']:.1f}s, prefilter {res['prefilter_seconds']:.1f}s -> {len(cand)} candidates, "
          f"|U| = {len(ev)}; peak RSS {rss_peak:.0f} MiB (embeddings {res['embeddings_mb']:.0f} MiB, "
          f"{rss_data:.0f} MiB before indexing); recall@{args.neighbours} vs exact {recall:.3f}")
    if args.json:
        from entk_al.fileio import write_json

        write_json(args.json, res)


if __name__ == "__main__":
    main()
