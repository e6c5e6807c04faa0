"""faiss prefilter for large pools: a diverse candidate shortlist and a local evaluation set.

The look-ahead costs O(m²) per round in the evaluation-set size m, so on pools far larger
than the paper's random 4000-point subset (arXiv 2206.12569, Sec. 5) we choose instead:

1. a shortlist of the unlabeled pool by a cheap score (e.g. margin), ``shortlist`` long;
2. ``num_candidates`` diverse members of it: faiss k-means on their embeddings, the member
   nearest each centroid;
3. the evaluation set U = the candidates plus their faiss nearest neighbours in the unlabeled
   pool, since kernel influence M_ij is largest near the candidate.

Embeddings are penultimate features or random projections of pNTK features
(:func:`pntk_random_features`). The searches of step 3 run per tile of the executor's plan
(:mod:`entk_al.scans.knn`): an exact ``IndexFlatL2`` per tile up to
:data:`EXACT_MAX` unlabeled points, ``IndexIVFFlat`` cells of one shared quantizer above.
All faiss k-means runs take an explicit seed, so the prefilter is reproducible.
"""

from __future__ import annotations

import math

import faiss
import numpy as np
import torch
from torch import nn

from ..nets.models import eval_mode
from ..seeding import direction_seed

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
        seed: direction t is drawn from seed :func:`entk_al.seeding.direction_seed` (seed, t).
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
                    gen.manual_seed(direction_seed(seed, t))
                    r = {k: torch.randn(v.shape, generator=gen, dtype=dtype).to(dev) for k, v in params.items()}
                    with warnings.catch_warnings():
                        # torch's forward-AD path warns about its own use of torch.jit.script.
                        warnings.simplefilter("ignore", FutureWarning)
                        out[s:s + len(xb), t] = jvp(s_of, (params,), (r,))[1].float() / math.sqrt(dim)
    return out
