"""faiss prefilter for large pools: a diverse candidate shortlist and a local evaluation set.

The look-ahead costs O(m²) per round in the evaluation-set size m, so on pools far larger
than the paper's random 4000-point subset (arXiv 2206.12569, Sec. 5) we choose instead:

1. a shortlist of the unlabeled pool by a cheap score (e.g. margin), ``shortlist`` long;
2. ``num_candidates`` diverse members of it: faiss k-means on their embeddings, the member
   nearest each centroid;
3. the evaluation set U = the candidates plus their faiss nearest neighbours in the unlabeled
   pool, since kernel influence M_ij is largest near the candidate.

Embeddings are penultimate features or random projections of pNTK features
(:func:`pntk_random_features`). Indexes: exact ``IndexFlatL2`` up to ``exact_max`` points,
``IndexIVFFlat`` above; moved to the GPU when faiss-gpu is installed and asked for.
All faiss k-means runs take an explicit seed, so the prefilter is reproducible.
"""

from __future__ import annotations

import math

import faiss
import numpy as np
import torch
from torch import nn

from .models import eval_mode

#: Pools up to this size get an exact IndexFlatL2; larger ones an IVF index.
EXACT_MAX = 100_000


#: PyPI distributions that install the ``faiss`` package (they share its folder: install one).
FAISS_DISTRIBUTIONS = ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu11", "faiss-gpu-cu12", "faiss-gpu-cu12-cuvs",
                       "faiss-cuda")
_warned_conflict = False


def faiss_build() -> str:
    """Which faiss this process imported, for logs: version, CPU or GPU build, and the installed
    distribution(s) that provide it (e.g. ``"faiss 1.15.1, CPU build (faiss-cpu)"``).

    Warns (once per process) when more than one distribution of :data:`FAISS_DISTRIBUTIONS`
    is installed: they unpack into the same ``faiss`` folder, so which one imports depends on
    the install order, and uninstalling either breaks the other.
    """
    global _warned_conflict
    from importlib import metadata

    installed = []
    for name in FAISS_DISTRIBUTIONS:
        try:
            installed.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    if len(installed) > 1 and not _warned_conflict:
        import warnings

        _warned_conflict = True
        names = " ".join(i.split()[0] for i in installed)
        warnings.warn(f"{' and '.join(installed)} are installed; they share the faiss package folder, so which "
                      f"one imports depends on the install order and uninstalling either breaks the other: keep "
                      f"one (pip uninstall -y {names} && pip install faiss-cpu, or a GPU build instead of "
                      f"faiss-cpu)", RuntimeWarning, stacklevel=2)
    kind = "GPU" if hasattr(faiss, "StandardGpuResources") else "CPU"
    return f"faiss {getattr(faiss, '__version__', '?')}, {kind} build ({', '.join(installed) or 'not from PyPI'})"


def _gpu_ok(use_gpu: bool | str) -> bool:
    if use_gpu == "auto":
        return hasattr(faiss, "StandardGpuResources") and torch.cuda.is_available()
    return bool(use_gpu)


def build_index(emb: np.ndarray, *, exact_max: int = EXACT_MAX, nlist: int | None = None, nprobe: int = 16,
                use_gpu: bool | str = False, seed: int = 0, add_chunk: int = 262_144) -> faiss.Index:
    """An L2 faiss index over ``emb`` (N, d) float32 (row r of ``emb`` = index label r).

    Exact ``IndexFlatL2`` when N ≤ ``exact_max``; else ``IndexIVFFlat`` with ``nlist`` cells
    (default ≈ √N, trained on a seeded sample of 64·nlist rows) searched with ``nprobe``.

    Args:
        emb: (N, d) float32 embeddings.
        exact_max: largest N indexed exactly.
        nlist: IVF cells, or None for about √N.
        nprobe: cells searched per query.
        use_gpu: False, True, or ``auto`` (GPU when faiss-gpu is installed).
        seed: seed of the IVF training sample and k-means.
        add_chunk: rows added per ``index.add`` call (bounds the temporary memory of IVF
            assignment).

    Raises:
        ValueError: ``emb`` is not 2-D, or ``use_gpu=True`` without faiss-gpu.
    """
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be (N, d), got shape {emb.shape}")
    n, d = emb.shape
    if n <= exact_max:
        index: faiss.Index = faiss.IndexFlatL2(d)
    else:
        nlist = nlist or max(16, int(math.sqrt(n)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
        index.cp.seed = seed
        sample = np.random.default_rng(seed).choice(n, min(n, 64 * nlist), replace=False)
        sample.sort()
        index.train(emb[sample])
        index.nprobe = nprobe
    if use_gpu is True and not hasattr(faiss, "StandardGpuResources"):
        raise ValueError("use_gpu=True but faiss-gpu is not installed")
    if _gpu_ok(use_gpu):
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    for s in range(0, n, add_chunk):  # chunks bound the temporary memory of IVF assignment
        index.add(emb[s:s + add_chunk])
    return index


def knn(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances² (Q, k) float32, rows (Q, k) int64) of the k nearest indexed rows; −1 = none.

    Args:
        index: a faiss index from :func:`build_index`.
        queries: (Q, d) float32 query vectors.
        k: neighbours per query.
    """
    k = min(k, index.ntotal)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def diverse_subset(emb: np.ndarray, n_keep: int, *, seed: int = 0, niter: int = 15,
                   order: np.ndarray | None = None) -> np.ndarray:
    """Rows of ``emb`` (S, d) that cover it: the member nearest each of ``n_keep`` k-means centroids.

    A centroid whose nearest members are all taken passes; the shortfall is filled in
    ``order`` (default: row order), e.g. by decreasing cheap score.

    Args:
        emb: (S, d) float32 embeddings.
        n_keep: rows to return (<= S).
        seed: k-means seed.
        niter: k-means iterations.
        order: (S,) fill order for the shortfall.

    Returns:
        (n_keep,) int64 distinct rows, centroid picks first.
    """
    s, d = emb.shape
    n_keep = min(n_keep, s)
    order = np.arange(s) if order is None else np.asarray(order)
    if n_keep == s:
        return order.astype(np.int64).copy()
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    km = faiss.Kmeans(d, n_keep, niter=niter, seed=seed, min_points_per_centroid=1,
                       max_points_per_centroid=max(256, s // n_keep + 1))
    km.train(emb)
    flat = faiss.IndexFlatL2(d)
    flat.add(emb)
    _, near = flat.search(km.centroids, min(8, s))
    taken = np.zeros(s, dtype=bool)
    out: list[int] = []
    for row in near:
        for r in row:
            if r >= 0 and not taken[r]:
                taken[r] = True
                out.append(int(r))
                break
    for r in order:
        if len(out) >= n_keep:
            break
        if not taken[r]:
            taken[r] = True
            out.append(int(r))
    return np.asarray(out[:n_keep], dtype=np.int64)


def prefilter_knn(emb: np.ndarray, ids: np.ndarray, scores: np.ndarray, *, num_candidates: int,
                  shortlist: int | None = None, eval_size: int = 4000, neighbours: int = 10, seed: int = 0,
                  index: faiss.Index | None = None, use_gpu: bool | str = False,
                  exact_max: int = EXACT_MAX) -> tuple[np.ndarray, np.ndarray]:
    """Candidates and evaluation set for the look-ahead on a large unlabeled pool.

    Args:
        emb: (N_u, d) embeddings of the unlabeled pool, row r ↔ ``ids[r]``.
        ids: (N_u,) int64 global ids of the unlabeled pool (the only ids ever returned).
        scores: (N_u,) cheap score, higher = more interesting (e.g. 1 − margin).
        num_candidates: candidates to keep.
        shortlist: top-score rows clustered for diversity (default 4 × num_candidates).
        eval_size: cap on |U|; U holds the candidates first, then neighbours nearest-first.
        neighbours: faiss neighbours per candidate added to U.
        index: a prebuilt index over ``emb`` (built here otherwise).
        seed: seed of the index training and the k-means diversity step.
        use_gpu: faiss on the GPU: False, True, or ``auto``.
        exact_max: largest pool indexed exactly (:func:`build_index`).

    Returns:
        (candidate ids (C,), eval ids (m,)) int64, eval ids starting with the candidates.

    Raises:
        ValueError: inconsistent lengths.
    """
    ids = np.asarray(ids, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if not (len(emb) == len(ids) == len(scores)):
        raise ValueError(f"emb, ids and scores differ in length: {len(emb)}, {len(ids)}, {len(scores)}")
    num_candidates = min(num_candidates, len(ids))
    shortlist = min(len(ids), shortlist or 4 * num_candidates)
    # Stable top by score: ties go to the smaller row, so the result is reproducible.
    top = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")[:shortlist]
    keep = top[diverse_subset(emb[top], num_candidates, seed=seed)]
    nbr = np.zeros((len(keep), 0), dtype=np.int64)
    if eval_size > len(keep) and neighbours > 0:
        index = index if index is not None else build_index(emb, use_gpu=use_gpu, seed=seed, exact_max=exact_max)
        _, rows = knn(index, emb[keep], neighbours + 1)
        nbr = np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)
    return ids[keep], eval_set(ids[keep], nbr, eval_size)


def eval_set(cand_ids: np.ndarray, nbr_ids: np.ndarray, eval_size: int) -> np.ndarray:
    """The look-ahead's evaluation set: the candidates, then their neighbours nearest-first.

    Args:
        cand_ids: (C,) int64 candidate ids.
        nbr_ids: (C, k) int64 each candidate's neighbours by increasing distance (−1 = none).
        eval_size: cap on the size (never below C).

    Returns:
        (m,) int64 distinct ids: ``cand_ids``, then column by column of ``nbr_ids`` the ids
        not yet in, until ``eval_size``.
    """
    out = list(np.asarray(cand_ids, dtype=np.int64).tolist())
    seen = set(out)
    for col in range(nbr_ids.shape[1] if len(out) < eval_size else 0):  # nearest-first across all candidates
        for i in nbr_ids[:, col].tolist():
            if i >= 0 and i not in seen:
                seen.add(i)
                out.append(i)
        if len(out) >= eval_size:
            break
    return np.asarray(out[:max(eval_size, len(cand_ids))], dtype=np.int64)


def random_projection_matrix(dim_in: int, dim_out: int, seed: int) -> np.ndarray:
    """(dim_in, dim_out) Gaussian JL projection scaled by 1/√dim_out (inner products kept in expectation).

    Args:
        dim_in: input dimension.
        dim_out: projected dimension.
        seed: seed of the Gaussian draw.
    """
    return (np.random.default_rng(seed).standard_normal((dim_in, dim_out)) / math.sqrt(dim_out)).astype(np.float32)


def pntk_random_features(model: nn.Module, x: torch.Tensor, dim: int = 128, *, seed: int = 0,
                         batch_size: int = 1024) -> torch.Tensor:
    """Random projection of pNTK features: z(x)_t = ⟨∇θ s(x), r_t⟩/√dim, r_t ∼ N(0, I_P).

    s(x) = Σ_k f_k(x)/√O (sum-of-logits pNTK, arXiv 2206.12543), so E[z(x)·z(x')] = pNTK(x, x')
    (Johnson–Lindenstrauss). Each coordinate is one forward-mode JVP along a seeded direction,
    so memory stays at one parameter-sized direction, never (N × P).

    Args:
        x: (N, *input_shape) inputs (any device; moved to the model's).
        model: the network, (N, *F) -> (N, O).
        dim: number of random directions.
        seed: direction t is drawn from seed ``seed * 1_000_003 + t``.
        batch_size: samples per JVP batch.
    Returns:
        (N, dim) float32 on the model's device. The model runs in eval mode.
    """
    import warnings

    from torch.func import functional_call, jvp

    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    dev = next(iter(params.values())).device
    dtype = next(iter(params.values())).dtype
    gen = torch.Generator(device="cpu")
    out = torch.empty(len(x), dim, dtype=torch.float32, device=dev)
    with eval_mode(model):
        for s in range(0, len(x), batch_size):
            xb = x[s:s + batch_size].to(device=dev, dtype=dtype)

            def s_of(p, xb=xb):
                f = functional_call(model, p, (xb,))
                return f.sum(dim=1) / math.sqrt(f.shape[1])

            with torch.no_grad():
                for t in range(dim):
                    # Direction t is regenerated from (seed, t) for each batch: no (dim × P) store.
                    gen.manual_seed(seed * 1_000_003 + t)
                    r = {k: torch.randn(v.shape, generator=gen, dtype=dtype).to(dev) for k, v in params.items()}
                    with warnings.catch_warnings():
                        # torch's forward-AD path warns about its own use of torch.jit.script.
                        warnings.simplefilter("ignore", FutureWarning)
                        out[s:s + len(xb), t] = jvp(s_of, (params,), (r,))[1].float() / math.sqrt(dim)
    return out
