"""NTK look-ahead: query the points whose label would change the model most.

Source: Mohamadi, Bae & Sutherland, NeurIPS 2022 (arXiv 2206.12569), Eq. 11–13, with the
sum-of-logits pNTK (arXiv 2206.12543). Acquisitions ``mlmoc`` (Eq. 13), ``flip`` (their
code's default), ``emoc`` and the expected variance reduction of Cohn et al. 1996
(``variance_reduction``, ``variance_reduction_error``); modes ``batch``, ``sequential`` (fold
each true label in by a rank-one update, the paper's sequential setting) and ``hybrid``
(sub-batches); batch rules ``topk``, ``gumbel`` (Kool et al. 2019) and ``kmeanspp`` (BADGE's
seeding, Ash et al. 2020); modifiers ``reference``, ``variance_power``, ``eval_weight``
(Roy & McCallum 2001). Formulas and sources: :mod:`entk_al.lookahead.acquisition`,
:mod:`entk_al.lookahead.batch`, :mod:`entk_al.lookahead.posterior`.
With ``prefilter=random`` the loop's random candidate subset is both the candidates and the
evaluation set U, as in the paper; ``prefilter=knn`` shortlists a large pool with faiss
(:mod:`entk_al.lookahead.prefilter`).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from entk_al.errors import StrategyError
from entk_al.lookahead.acquisition import ACQUISITIONS
from entk_al.lookahead.batch import SELECTIONS
from entk_al.lookahead.posterior import EVAL_WEIGHTS, MODES, REFERENCES, select_lookahead
from entk_al.lookahead.prefilter import EXACT_MAX, diverse_subset, eval_set, faiss_build
from entk_al.ntk import FeatureKernel
from entk_al.ntk.common import parse_params
from entk_al.round.context import RoundContext
from entk_al.scans.knn import embeddings, knn_on_shards, train_quantizer
from entk_al.scans.outputs import top_scores
from entk_al.seeding import child_rng, tie_keys


class LookaheadSampling:
    """Look-ahead acquisition under the linearized retraining (pass options with ``-o key=value``).

    Args:
        ridge_rel: ridge relative to the kernel scale; the absolute λ is ``ridge_rel · trace(K)/n``
            (the authors' scaling). Jitter added to make K factor is logged per round.
        acquisition: ``mlmoc`` (default, Eq. 13) | ``flip`` | ``emoc`` | ``variance_reduction``
            (Σ_i M_ij²/(M_jj+λ), Cohn et al. 1996) | ``variance_reduction_error`` (the same
            × ‖ŷ_j − base_j‖).
        reference: ``network`` (default: change measured from f(U), Eq. 13) | ``base`` (from
            the linearized prediction base = f(U) + A(K+λI)⁻¹R).
        variance_power: p; scores × √(M_jj+λ)^p, the candidate's own posterior std (0 = off;
            1 cancels MLMOC's 1/√M_jj, see :mod:`entk_al.lookahead.acquisition`).
        eval_weight: ``none`` (default) | ``uncertainty``: weight U_i by 1 − margin of the
            simplex-projected outputs (expected error reduction, Roy & McCallum 2001).
        selection: batch rule: ``topk`` (default, the paper) | ``gumbel`` (Gumbel top-k on
            log-scores, Kool et al. 2019) | ``kmeanspp`` (k-means++ seeding on the change
            vectors Δf(U) of the top ``diversity_pool`` candidates, as BADGE, Ash et al. 2020).
            Random rules draw from the round's strategy RNG.
        diversity_pool: top-scored candidates ``kmeanspp`` seeds among (at least the batch).
        gumbel_temperature: τ of ``gumbel``: sampling ∝ score^(1/τ).
        ridge: deprecated name of ``ridge_rel`` (it was always relative; removed in 0.3, a
            FutureWarning when given); use ``ridge_rel``.
        mode: ``batch`` (default) | ``sequential`` | ``hybrid``.
        hybrid_size: sub-batch size c of ``hybrid`` mode.
        exclude_self: leave each candidate out of its own sum over U.
        probs: ``softmax`` | ``simplex``: label probabilities for ``emoc``.
        memory_budget_mb: MiB for the streamed scoring blocks.
        prefilter: ``random`` (the loop's random subset; default) | ``knn`` (faiss).
        num_candidates: candidates kept by ``knn``.
        shortlist: cheap-score shortlist length for ``knn`` (default 4 × num_candidates).
        eval_size: size cap of U for ``knn``.
        neighbours: faiss neighbours per candidate added to U.
        embedding: ``penultimate`` | ``pntk`` (random projection of pNTK features).
        embedding_dim: dimension of the ``pntk`` projection.
        faiss_gpu: deprecated and ignored (removed in 0.3; a FutureWarning when given): the
            prefilter's searches run per tile of the executor's plan on the CPU
            (:mod:`entk_al.scans.knn`), where an index holds at most 512 vectors;
            ``strategy_info["faiss"]`` names the faiss build in use.
        dense_max: above this |U| + n, k(U, U) is streamed in column blocks through the
            kernel function instead of being built whole.
        kernel_params: the parameters the pNTK differentiates: ``trainable`` (default: those
            with ``requires_grad``), ``all``, ``last:N`` (the last N modules with parameters),
            or comma-separated parameter-name prefixes (``fc.,layer4.``). When you fine-tune
            only some parameters (a frozen backbone and its head), the look-ahead over those
            predicts what your retraining changes, at a fraction of the cost
            (:func:`entk_al.ntk.common.select_params`).
    """

    name = "lookahead"
    description = "NTK look-ahead: mlmoc/flip/emoc, batch/sequential/hybrid, faiss prefilter (NeurIPS 2022)"

    def __init__(self, ridge_rel: float = 1e-3, acquisition: str = "mlmoc", mode: str = "batch", hybrid_size: int = 5,
                 exclude_self: bool = False, probs: str = "softmax", memory_budget_mb: int = 256,
                 prefilter: str = "random", num_candidates: int = 1000, shortlist: int | None = None,
                 eval_size: int = 4000, neighbours: int = 10, embedding: str = "penultimate",
                 embedding_dim: int = 128, faiss_gpu: bool | str | None = None, dense_max: int = 8000,
                 reference: str = "network", variance_power: float = 0.0, eval_weight: str = "none",
                 selection: str = "topk", diversity_pool: int = 100, gumbel_temperature: float = 1.0,
                 ridge: float | None = None, kernel_params: str = "trainable"):
        if ridge is not None:
            warnings.warn("lookahead option 'ridge' is deprecated and will be removed in 0.3: it is relative, "
                          "use ridge_rel", FutureWarning, stacklevel=2)
            ridge_rel = ridge
        if faiss_gpu is not None:
            warnings.warn("lookahead option 'faiss_gpu' is ignored (the prefilter searches per tile on the CPU) "
                          "and will be removed in 0.3", FutureWarning, stacklevel=2)
        if ridge_rel < 0:
            raise ValueError(f"ridge_rel must be >= 0, got {ridge_rel}")
        if gumbel_temperature <= 0:
            raise ValueError(f"gumbel_temperature must be > 0, got {gumbel_temperature}")
        checks = {"acquisition": (acquisition, ACQUISITIONS), "mode": (mode, MODES),
                  "probs": (probs, ("softmax", "simplex")), "prefilter": (prefilter, ("random", "knn")),
                  "embedding": (embedding, ("penultimate", "pntk")), "reference": (reference, REFERENCES),
                  "eval_weight": (eval_weight, EVAL_WEIGHTS), "selection": (selection, SELECTIONS)}
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
        minimums = {"hybrid_size": (hybrid_size, 1), "num_candidates": (num_candidates, 1),
                    "eval_size": (eval_size, 1), "embedding_dim": (embedding_dim, 1),
                    "memory_budget_mb": (memory_budget_mb, 1), "neighbours": (neighbours, 0),
                    "diversity_pool": (diversity_pool, 1)}
        for key, (value, low) in minimums.items():
            if value < low:
                raise ValueError(f"{key} must be >= {low}, got {value}")
        self.ridge_rel = float(ridge_rel)
        self.reference, self.variance_power, self.eval_weight = reference, float(variance_power), eval_weight
        self.selection, self.diversity_pool = selection, int(diversity_pool)
        self.gumbel_temperature = float(gumbel_temperature)
        self.acquisition, self.mode, self.hybrid_size = acquisition, mode, int(hybrid_size)
        self.exclude_self, self.probs = bool(exclude_self), probs
        self.memory_budget_bytes = int(memory_budget_mb) * 2**20
        self.prefilter, self.num_candidates, self.shortlist = prefilter, int(num_candidates), shortlist
        self.eval_size, self.neighbours = int(eval_size), int(neighbours)
        self.embedding, self.embedding_dim = embedding, int(embedding_dim)
        self.dense_max = int(dense_max)
        self.kernel_params = FeatureKernel(params=parse_params(kernel_params)).params  # checks the spec

    def check_sizes(self, *, query: int, subset: int, pool_size: int, **_: int) -> None:
        """Options that cannot work with the run's sizes (called by the loop before training).

        Raises:
            ValueError: ``knn`` keeps fewer candidates than ``query``, or shortlists fewer than
                ``num_candidates``.
        """
        if self.prefilter != "knn":
            return
        if self.num_candidates < query:
            raise ValueError(f"num_candidates={self.num_candidates} is smaller than --query {query}; "
                             f"knn must keep at least the queries as candidates")
        if self.shortlist is not None and self.shortlist < self.num_candidates:
            raise ValueError(f"shortlist={self.shortlist} is smaller than num_candidates={self.num_candidates}; "
                             f"the candidates are drawn from the shortlist")

    # -- candidates and evaluation set -------------------------------------------------
    def candidates(self, ctx: RoundContext) -> tuple[np.ndarray, np.ndarray]:
        """(candidate ids (C,), evaluation ids (m,)); the eval ids start with the candidates."""
        if self.prefilter == "random":
            return ctx.candidate_ids, ctx.candidate_ids
        # Scores, embeddings and faiss searches run on the executor's tiles; the driver holds
        # only the shortlist's embeddings and the merged (distance, id) neighbour lists.
        ex = ctx.executor
        unl = ctx.unlabeled_ids[ctx.keep_mask(ctx.unlabeled_ids)]
        spec = {"kind": "penultimate"}
        if self.embedding == "pntk":
            spec = {"kind": "pntk", "dim": self.embedding_dim, "seed": int(ctx.rng.integers(2**31))}
        seed = int(ctx.rng.integers(2**31))
        # margin score −(p_(1) − p_(2)): the highest are the least certain (ties in the round's seeded order).
        top = top_scores(ex, "margin", unl, min(len(unl), self.shortlist or 4 * self.num_candidates))
        ctx.exclude(top["nonfinite"], "outputs")
        short, short_emb = top["ids"], embeddings(ex, top["ids"], spec).numpy()
        finite = np.isfinite(short_emb).all(1)
        ctx.exclude(short[~finite], "embeddings")
        short, short_emb = short[finite], short_emb[finite]
        # Which faiss ran (a CPU build, per tile), and a warning when two are installed.
        ctx.info["faiss"] = faiss_build() + "; searches on the CPU, one index per tile"
        keep = short[diverse_subset(short_emb, min(self.num_candidates, len(short)), seed=seed)]
        if self.eval_size <= len(keep) or self.neighbours == 0:
            return keep, keep[:max(self.eval_size, len(keep))]
        centroids = None
        if len(unl) > EXACT_MAX:  # one IVF quantizer, trained here on a seeded sample, serves every tile
            nlist = max(16, int(math.sqrt(len(unl))))
            sample = np.sort(child_rng(seed).choice(len(unl), min(len(unl), 64 * nlist), replace=False))
            sample_emb = embeddings(ex, unl[sample], spec).numpy()
            centroids = train_quantizer(sample_emb[np.isfinite(sample_emb).all(1)], nlist, seed)
        emb_of = dict(zip(short.tolist(), short_emb))
        _, nbr, bad = knn_on_shards(ex, unl, np.stack([emb_of[i] for i in keep.tolist()]), self.neighbours + 1,
                                    spec, centroids=centroids)
        ctx.exclude(bad, "embeddings")
        return keep, eval_set(keep, nbr, self.eval_size)

    # -- one round -------------------------------------------------------------------
    def select(self, ctx: RoundContext, k: int) -> np.ndarray:
        cand_ids, u = self.candidates(ctx)
        # K + λI factored on the driver; A, B and the score sums stay on the shards by row tile of U.
        params = None if self.kernel_params == "trainable" else self.kernel_params
        post, u, cand_ids = ctx.posterior(u, cand_ids, ridge_rel=self.ridge_rel, dense_max=self.dense_max,
                                          reference=self.reference, params=params)
        if params is not None:
            ctx.info["kernel_params"] = params if isinstance(params, str) else ",".join(params)
        if len(cand_ids) < k:
            raise StrategyError(f"only {len(cand_ids)} candidates have a finite kernel, fewer than the {k} to query")
        m = len(u)
        pos_of = {int(i): p for p, i in enumerate(u.tolist())}
        cand_pos = np.fromiter((pos_of[int(i)] for i in cand_ids), dtype=np.int64, count=len(cand_ids))
        # Folding modes score the remaining candidates once per fold: no known total there.
        total = len(cand_pos) if self.mode == "batch" else None
        with ctx.progress.task(f"look-ahead scoring, |U| = {m}", total=total) as advance:
            done = [0]

            def on_block(n_scored: int) -> None:
                if n_scored < done[0]:  # a new pass after a fold
                    done[0] = 0
                advance(n_scored - done[0])
                done[0] = n_scored

            picked, info = select_lookahead(
                post, cand_pos, k, mode=self.mode, hybrid_size=self.hybrid_size, acquisition=self.acquisition,
                exclude_self=self.exclude_self, probs=self.probs, oracle=lambda pos: ctx.oracle(u[pos]),
                memory_budget_bytes=self.memory_budget_bytes, variance_power=self.variance_power,
                eval_weight=self.eval_weight, selection=self.selection, rng=ctx.rng,
                diversity_pool=self.diversity_pool, gumbel_temperature=self.gumbel_temperature,
                tie_keys=tie_keys(ctx.seed, ctx.round, u), score_progress=on_block)
        first_pos, first_scores = info["first_scores"]
        ctx.record_scores(u[first_pos], first_scores)
        scores = info["pick_scores"]
        ctx.info.update(acquisition=self.acquisition, mode=self.mode,
                        selection=self.selection, reference=self.reference, eval_weight=self.eval_weight,
                        variance_power=self.variance_power,
                        num_candidates=int(len(cand_ids)), num_eval=int(m), folded=len(post.folded),
                        score_max=float(max(scores)) if scores else float("nan"),
                        score_mean=float(np.mean(scores)) if scores else float("nan"))
        return u[picked]
