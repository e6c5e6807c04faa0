"""What a query strategy sees each round (the protocol it implements is in :mod:`.strategy`,
re-exported here; the non-finite rule in :mod:`.nonfinite`).

A strategy is any object with ``name`` and ``select(ctx, k) -> np.ndarray`` of global pool
ids. The loop builds one :class:`RoundContext` per round; its cached accessors compute
predictions, penultimate embeddings and kernels once per round, whichever strategy (or
plugin) asks first.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.pool import Pool, as_pool
from ..errors import StrategyError
from ..executor import make_executor
from ..lookahead.system import cholesky_with_jitter, relative_ridge
from ..ntk import PNTK, FeatureKernel
from ..ntk.common import parse_params
from ..progress import NullProgress
from ..scans.kernel_rows import kernel_rows
from ..scans.outputs import outputs_on_shards
from ..scans.sharded_posterior import fit_on_shards
from ..seeding import STRATEGY, numpy_rng
from ..seeding import torch_generator as make_torch_generator
from . import nonfinite
from .strategy import QueryStrategy

__all__ = ["RoundContext", "QueryStrategy"]


def _no_oracle(ids: np.ndarray) -> np.ndarray:
    raise StrategyError("this strategy asks for labels during selection (e.g. the look-ahead's sequential mode); "
                        "pass an oracle")


class RoundContext:
    """Everything a strategy may use in one round.

    Built by the loop (:func:`entk_al.run.query_step.select_queries`) and by :func:`entk_al.query`;
    every argument is keyword-only, and only the model, the pool, the labeled set and the
    number of classes are required.

    Args:
        model: the network trained this round (used in eval mode; do not train it in place).
        pool: the pool (:class:`~entk_al.data.pool.Pool`, or an (N, *input_shape) tensor or array).
        labeled_ids: (n,) int64 global ids labeled so far.
        labeled_targets: (n,) int64 their labels in [0, num_classes).
        num_classes: O, the number of classes (outputs of the model).
        round: round index (0-based).
        seed: run seed.
        device: where the model runs (default: the model's device).
        unlabeled_ids: (N − n,) int64 ids not yet labeled (default: all others, increasing).
        candidate_ids: (S,) int64 this round's candidates among the unlabeled ids (default: all).
        rng: NumPy generator (default: the (seed, round, "strategy") stream).
        torch_generator: CPU torch generator (default: the same stream).
        oracle: ``oracle(ids) -> labels`` for labels mid-selection (sequential look-ahead);
            default: none (asking raises :class:`~entk_al.errors.StrategyError`).
        kernel_fn: ``kernel_fn(model, x1, x2=None) -> (N1, N2)``; default
            :data:`entk_al.ntk.PNTK`, a feature kernel, with which :meth:`kernel` and
            :meth:`posterior` compute each input's features once per round and shard.
        progress: the run's progress reporter (default: none).
        executor: where pool scans run (:mod:`entk_al.executor`); default: a ``local`` one over
            ``pool`` (:func:`~entk_al.executor.make_executor`). Its round is begun here, with
            ``model``, ``round`` and ``seed``: the one place a round's seed reaches the executor.
        x_pool: deprecated name of ``pool`` (a tensor); removed in 0.3.

    Attributes:
        round, seed, model, device, pool, num_classes, labeled_ids, labeled_targets,
            unlabeled_ids, candidate_ids, rng, torch_generator, oracle, progress, executor:
            as given (or their defaults). Strategies should select from ``candidate_ids``.
        kernel_fn: the kernel function, wrapped so that its time counts in ``kernel_seconds``.
        info: dict a strategy may fill; it is written to the round's log as ``strategy_info``.
        kernel_seconds: seconds spent in kernels this round (every call through the context).
        excluded: pool id -> why it was left out this round ("outputs", "embeddings", "kernel",
            "score"; see :meth:`finite_ids`).
        scores: (candidate ids, scores) a strategy reported with :meth:`record_scores`, or None.

    Raises:
        StrategyError: a labeled id out of range, or labels and ids of different lengths.
    """

    def __init__(self, *, model: nn.Module, pool: Any = None, labeled_ids: Any, labeled_targets: Any,
                 num_classes: int, round: int = 0, seed: int = 0, device: torch.device | str | None = None,
                 unlabeled_ids: Any = None, candidate_ids: Any = None, rng: np.random.Generator | None = None,
                 torch_generator: torch.Generator | None = None,
                 oracle: Callable[[np.ndarray], np.ndarray] | None = None,
                 kernel_fn: Callable[..., torch.Tensor] = PNTK, progress: NullProgress | None = None,
                 executor: Any = None, x_pool: torch.Tensor | None = None, info: dict | None = None):
        if x_pool is not None:
            warnings.warn("RoundContext(x_pool=...) is deprecated and will be removed in 0.3; pass pool=",
                          FutureWarning, stacklevel=2)
            pool = x_pool if pool is None else pool
        if pool is None:
            raise TypeError("RoundContext() needs pool=")
        self.pool: Pool = as_pool(pool)
        self.model, self.num_classes = model, int(num_classes)
        self.round, self.seed = int(round), int(seed)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.labeled_ids = np.asarray(labeled_ids, dtype=np.int64)
        self.labeled_targets = np.asarray(labeled_targets, dtype=np.int64)
        if self.labeled_ids.shape != self.labeled_targets.shape:
            raise StrategyError(f"{len(self.labeled_ids)} labeled ids but {len(self.labeled_targets)} labels")
        if unlabeled_ids is None:
            mask = np.ones(len(self.pool), dtype=bool)
            mask[self.labeled_ids] = False
            unlabeled_ids = np.flatnonzero(mask)
        self.unlabeled_ids = np.asarray(unlabeled_ids, dtype=np.int64)
        self.candidate_ids = self.unlabeled_ids if candidate_ids is None else np.asarray(candidate_ids, dtype=np.int64)
        self.rng = rng if rng is not None else numpy_rng(self.seed, self.round, STRATEGY)
        self.torch_generator = (torch_generator if torch_generator is not None
                                else make_torch_generator(self.seed, self.round, STRATEGY))
        self.oracle = oracle if oracle is not None else _no_oracle
        self.info: dict[str, Any] = {} if info is None else info
        self.progress = progress or NullProgress()
        self.kernel_seconds = 0.0
        self.excluded: dict[int, str] = {}
        self.scores: tuple[np.ndarray, np.ndarray] | None = None
        self._cache: dict[Any, Any] = {}
        raw = kernel_fn

        def timed_kernel(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None, **kw: Any) -> torch.Tensor:
            n2 = len(x1) if x2 is None else len(x2)
            t0 = time.perf_counter()
            with self.progress.task(f"kernel {len(x1)}x{n2}", total=1) as advance, torch.enable_grad():
                out = raw(model, x1, x2, **kw).detach()
                advance(1)
            self.kernel_seconds += time.perf_counter() - t0
            return out

        self.kernel_fn = timed_kernel
        self._raw_kernel_fn = raw
        self.executor = executor if executor is not None else make_executor("local", self.pool, self.device)
        self.executor.begin_round(self.round, self.seed, self.model)

    @property
    def x_pool(self) -> torch.Tensor:
        """Deprecated (removed in 0.3): the pool as one tensor when it is in memory; use :meth:`inputs`.

        Raises:
            StrategyError: the pool is not an in-memory tensor.
        """
        warnings.warn("RoundContext.x_pool is deprecated and will be removed in 0.3; use ctx.inputs(ids)",
                      FutureWarning, stacklevel=2)
        x = self.pool.tensor()
        if x is None:
            raise StrategyError("the pool is not held in memory; read inputs with ctx.inputs(ids)")
        return x

    def record_scores(self, ids: np.ndarray, scores: Any) -> None:
        """Report the acquisition scores of candidates ``ids`` (higher = queried first); they come
        back as :attr:`entk_al.Query.scores` from :func:`entk_al.query`.

        Args:
            ids: (S,) int64 global ids.
            scores: (S,) scores (tensor or array), converted to float64.
        """
        ids = np.asarray(ids, dtype=np.int64)
        if isinstance(scores, torch.Tensor):
            scores = scores.detach().cpu().double().numpy()
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if scores.shape != ids.shape:
            raise ValueError(f"{len(scores)} scores for {len(ids)} ids")
        self.scores = (ids, scores)

    # -- cached per-round quantities ------------------------------------------------
    def _ensure_predictions(self, ids: np.ndarray) -> np.ndarray:
        """Compute logits and features for ids not yet cached; return their cache rows.

        One copy of each is held on the driver; the forward passes run tile by tile on the
        executor's shards (:func:`entk_al.scans.outputs.outputs_on_shards`).
        """
        if "row_of" not in self._cache:
            self._cache["row_of"] = np.full(len(self.pool), -1, dtype=np.int64)
        row_of = self._cache["row_of"]
        new = ids[row_of[ids] < 0]
        if new.size:
            missing = new[np.sort(np.unique(new, return_index=True)[1])]  # first-seen order
            logits, feats, fin = self._predict_into(missing)
            old_l, old_f = self._cache.get("logits"), self._cache.get("feats")
            start = 0 if old_l is None else len(old_l)
            if old_l is not None:
                logits, feats = torch.cat([old_l, logits]), torch.cat([old_f, feats])
            self._cache["logits"], self._cache["feats"] = logits, feats
            row_of[missing] = np.arange(start, start + len(missing))
            for i in missing[~fin].tolist():
                bad_out = not bool(torch.isfinite(logits[row_of[i]]).all())
                self.excluded.setdefault(i, "outputs" if bad_out else "embeddings")
        return row_of[ids]

    @torch.no_grad()
    def _predict_into(self, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(logits, features, finite mask (len(ids),) bool) for ``ids``, from the executor."""
        with self.progress.task("outputs", total=len(ids)) as advance:
            logits, feats = outputs_on_shards(self.executor, ids)
            advance(len(ids))
        logits, feats = logits.to(self.device), feats.to(self.device)
        finite = (torch.isfinite(logits).all(1) & torch.isfinite(feats).all(1)).cpu().numpy()
        return logits, feats, finite

    def _rows(self, name: str, ids: np.ndarray) -> torch.Tensor:
        rows = self._ensure_predictions(np.asarray(ids, dtype=np.int64))
        store = self._cache[name]
        if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and (np.diff(rows) == 1).all():
            return store[int(rows[0]):int(rows[-1]) + 1]  # a view, no copy
        return store[torch.from_numpy(rows).to(store.device)]

    def logits(self, ids: np.ndarray) -> torch.Tensor:
        """Network outputs f(x) at pool ``ids``: (len(ids), O) float32 on ``device``, eval mode.

        May be a view of the round's cache: do not modify it in place.
        """
        return self._rows("logits", ids)

    def probs(self, ids: np.ndarray) -> torch.Tensor:
        """Softmax of :meth:`logits`: (len(ids), O) float32 class probabilities."""
        return F.softmax(self.logits(ids), dim=1)

    def embeddings(self, ids: np.ndarray) -> torch.Tensor:
        """Penultimate features (input of the last ``nn.Linear``): (len(ids), H) float32.

        May be a view of the round's cache: do not modify it in place.
        """
        return self._rows("feats", ids)

    def inputs(self, ids: np.ndarray) -> torch.Tensor:
        """Pool inputs at ``ids`` on ``device``: (len(ids), *input_shape) float32."""
        x = self.pool.get(np.asarray(ids, dtype=np.int64))
        return x.to(self.device)

    def kernel_function(self, params: Any = None) -> Callable[..., torch.Tensor]:
        """The round's kernel function, over the parameters ``params`` when given.

        Args:
            params: None (the kernel as given), or a parameter subset
                (:func:`entk_al.ntk.common.select_params`: ``"trainable"``, ``"all"``,
                ``"last:N"``, name prefixes as a list or a comma-separated string).

        Raises:
            StrategyError: ``params`` given for a kernel function that is not a
                :class:`~entk_al.ntk.FeatureKernel`, or a malformed spec.
        """
        fn = self._raw_kernel_fn
        if params is None:
            return fn
        if not isinstance(fn, FeatureKernel):
            raise StrategyError("kernel_params needs the run's kernel to be an entk_al.ntk.FeatureKernel")
        try:
            return dataclasses.replace(fn, params=parse_params(params))
        except ValueError as exc:
            raise StrategyError(f"kernel_params: {exc}") from None

    def kernel(self, ids1: np.ndarray, ids2: np.ndarray | None = None, *, params: Any = None) -> torch.Tensor:
        """pNTK between pool ids (cached for the round): (len(ids1), len(ids2)) on ``device``.

        Computed by row tiles on the executor's shards (:func:`entk_al.scans.kernel_rows.kernel_rows`),
        each input's features once per round and shard; a symmetric kernel (``ids2`` None) is
        exactly symmetric.

        Ids whose kernel rows (or columns) are non-finite (e.g. float32 overflow) are added to
        :attr:`excluded`; the matrix is returned as computed, so callers drop them with
        :meth:`keep_mask`. Source: sum-of-logits pNTK, Mohamadi, Bae & Sutherland, arXiv 2206.12543.

        Args:
            ids1: (N1,) int64 global ids of the rows.
            ids2: (N2,) int64 global ids of the columns, or None for ``ids1``.
            params: the parameters the kernel differentiates (:meth:`kernel_function`), or None.

        Raises:
            StrategyError: as :meth:`kernel_function`.
        """
        ids1 = np.asarray(ids1, dtype=np.int64)
        ids2 = None if ids2 is None else np.asarray(ids2, dtype=np.int64)
        fn = self.kernel_function(params)
        key = ("kernel", ids1.tobytes(), None if ids2 is None else ids2.tobytes(), None if params is None else fn)
        if key not in self._cache:
            # Row tiles on the executor's shards; the columns' inputs travel once.
            cols = ids1 if ids2 is None else ids2
            t0 = time.perf_counter()
            with self.progress.task(f"kernel {len(ids1)}x{len(cols)}", total=1) as advance:
                k = kernel_rows(self.executor, fn, ids1, self.pool.get(cols),
                                col_ids=ids2, probe=self.kernel_probe()).to(self.device)
                advance(1)
            self.kernel_seconds += time.perf_counter() - t0
            self._note_nonfinite_kernel(k, ids1, ids1 if ids2 is None else ids2)
            self._cache[key] = k
        return self._cache[key]

    def posterior(self, u_ids: np.ndarray, cand_ids: np.ndarray, *, ridge_rel: float = 1e-3, dense_max: int = 8000,
                  reference: str = "network", params: Any = None) -> tuple[Any, np.ndarray, np.ndarray]:
        """The linearized network's posterior on an evaluation set U, its kernel rows on the shards.

        Source: Mohamadi, Bae & Sutherland, NeurIPS 2022 (arXiv 2206.12569), Eq. 11–12, with
        the pNTK ⊗ I_O kernel: K = k(L, L), A = k(U, L), B = k(U, U), base = f(U) + A(K+λI)⁻¹R,
        M = B − A(K+λI)⁻¹Aᵀ. ``base`` and M are the mean and (per-class) covariance of the
        linearized network's Gaussian-process posterior. The driver factors K + λI once (float64
        Cholesky, jitter added if needed); A and B stay on the executor's shards
        (:func:`entk_al.scans.sharded_posterior.fit_on_shards`). Ids of U or the candidates
        with non-finite kernel values are left out (see :meth:`finite_ids`) and the system refit.
        ``info`` gets ``ridge`` (absolute λ) and ``jitter``.

        Args:
            u_ids: (m,) int64 global ids of U (the candidates must be among them).
            cand_ids: (C,) int64 global ids of the candidates (the posterior's kernel columns).
            ridge_rel: λ relative to the kernel scale: λ = ridge_rel · trace(K)/n.
            dense_max: above this |U| + n, B's column blocks are recomputed per use instead of kept.
            reference: ``network`` (changes measured from f(U)) | ``base``.
            params: the parameters the kernel differentiates (:meth:`kernel_function`), or None.

        Returns:
            (posterior, u_ids, cand_ids): a :class:`~entk_al.scans.sharded_posterior.ShardedPosterior`
            (positions index the returned ``u_ids``), and the ids actually used (non-finite ones removed).

        Raises:
            StrategyError: the labeled set's kernel is not finite, or no candidate's is.
        """
        lab = self.labeled_ids
        fn = self.kernel_function(params)
        k_ll = self.kernel(lab, params=params)
        if not self.keep_mask(lab).all() or not bool(torch.isfinite(k_ll).all()):
            raise StrategyError("the kernel of the labeled set has non-finite entries (float32 overflow?); "
                                "check the inputs for huge values")
        ridge = relative_ridge(k_ll, ridge_rel)
        chol, jitter = cholesky_with_jitter(k_ll, ridge)
        resid = (self.labeled_onehot().double() - self.logits(lab).double()).to(chol.device)
        alpha = torch.cholesky_solve(resid, chol) if len(lab) else resid
        x_lab = self.pool.get(lab)
        u, cand = np.asarray(u_ids, dtype=np.int64), np.asarray(cand_ids, dtype=np.int64)
        while True:
            u, cand = u[self.keep_mask(u)], cand[self.keep_mask(cand)]
            if not len(cand):
                raise StrategyError("no candidate has a finite kernel (float32 overflow?); "
                                    "check the inputs for huge values")
            pos_of = {int(i): p for p, i in enumerate(u.tolist())}
            cand_pos = np.fromiter((pos_of[int(i)] for i in cand), dtype=np.int64, count=len(cand))
            with self.progress.task(f"posterior setup, |U| = {len(u)}", total=1) as advance:
                t0 = time.perf_counter()
                post, bad = fit_on_shards(self.executor, fn, u_ids=u, cand_pos=cand_pos,
                                          x_lab=x_lab, x_cand=self.pool.get(cand), chol=chol,
                                          alpha=alpha, ridge_eff=ridge + jitter, jitter=jitter,
                                          dense=len(u) + len(lab) <= dense_max, reference=reference,
                                          lab_ids=lab, cand_ids=cand, probe=self.kernel_probe())
                self.kernel_seconds += time.perf_counter() - t0
                advance(1)
            if post is not None:
                self.info.update(ridge=ridge, jitter=jitter)
                return post, u, cand
            self.exclude(bad, "kernel")

    def kernel_probe(self) -> torch.Tensor:
        """(≤4, *input_shape) CPU inputs (the pool's first ids) every shard traces the kernel's
        layer plan on, so that all kernel blocks of a run are computed alike."""
        return self.pool.get(np.arange(min(4, len(self.pool))))

    def _note_nonfinite_kernel(self, k: torch.Tensor, ids1: np.ndarray, ids2: np.ndarray) -> None:
        if nonfinite.blame_kernel(self.excluded, k, ids1, ids2):
            self.record_excluded()

    # -- non-finite values ----------------------------------------------------------------
    def keep_mask(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids),) bool: True where the id has not been left out for a non-finite value."""
        return nonfinite.keep_mask(self.excluded, ids)

    def finite_ids(self, ids: np.ndarray) -> np.ndarray:
        """``ids`` without those whose outputs or embeddings (or known kernel rows) are non-finite.

        The rule for the whole kind: a pool id with a non-finite output, embedding, kernel
        entry or score is left out of the candidates and evaluation sets this round and
        listed in ``info`` (see :meth:`record_excluded`).
        """
        ids = np.asarray(ids, dtype=np.int64)
        self._ensure_predictions(ids)
        keep = self.keep_mask(ids)
        self.record_excluded()
        return ids if keep.all() else ids[keep]

    def exclude(self, ids: np.ndarray, reason: str) -> None:
        """Leave ``ids`` out this round because of a non-finite ``reason`` ("score", ...)."""
        nonfinite.exclude(self.excluded, ids, reason)
        self.record_excluded()

    def record_excluded(self, cap: int = 20) -> None:
        """Write how many ids were left out, and the first ``cap`` (with reasons), to ``info``."""
        self.info.update(nonfinite.summary(self.excluded, cap))

    def screen_candidates(self, k: int) -> None:
        """Drop non-finite candidates from :attr:`candidate_ids` (the loop calls this first).

        Raises:
            StrategyError: fewer than ``k`` candidates with finite outputs and embeddings remain.
        """
        kept = self.finite_ids(self.candidate_ids)
        nonfinite.check_enough(kept, len(self.candidate_ids), k, self.round)
        self.candidate_ids = kept

    def labeled_onehot(self) -> torch.Tensor:
        """One-hot targets of the labeled set: (n, O) float32 on ``device``."""
        y = torch.from_numpy(self.labeled_targets).to(self.device)
        return F.one_hot(y, self.num_classes).float()
