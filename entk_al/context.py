"""What a query strategy sees each round, and the protocol it implements.

A strategy is any object with ``name`` and ``select(ctx, k) -> np.ndarray`` of global pool
ids. The loop builds one :class:`RoundContext` per round; its cached accessors compute
predictions, penultimate embeddings and kernels once per round, whichever strategy (or
plugin) asks first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import StrategyError
from .executor import LocalExecutor
from .executor.kernel_rows import kernel_rows
from .executor.scan import predict
from .executor.sharded_posterior import fit_on_shards
from .lookahead import cholesky_with_jitter, relative_ridge
from .ntk import PNTK
from .progress import NullProgress


@runtime_checkable
class QueryStrategy(Protocol):
    """The protocol every query strategy implements, built-in or user-written.

    ``select`` returns exactly ``k`` distinct global pool ids, all currently unlabeled; the
    loop checks this and raises :class:`~entk_al.errors.StrategyError` otherwise.
    """

    name: str

    def select(self, ctx: "RoundContext", k: int) -> np.ndarray: ...


@dataclass
class RoundContext:
    """Everything a strategy may use in one round.

    Attributes:
        round: round index (0-based).
        seed: run seed.
        model: the network trained this round (eval mode; do not train it in place).
        device: the model's device.
        x_pool: (N, *input_shape) float32 tensor of all pool inputs (CPU); index with ids.
        num_classes: O.
        labeled_ids: (n,) int64 global ids labeled so far (increasing).
        labeled_targets: (n,) int64 their labels.
        unlabeled_ids: (N - n,) int64 global ids not yet labeled (increasing).
        candidate_ids: (S,) int64 this round's random candidate subset of ``unlabeled_ids``
            (the paper's per-round subset; the whole pool when it is smaller). Strategies
            should select from it.
        rng: NumPy generator for this (seed, round, "strategy") stream.
        torch_generator: CPU torch generator for the same stream.
        oracle: ``oracle(ids) -> labels``: ask for true labels mid-selection (sequential
            look-ahead). Ids asked must be among those the strategy then returns.
        info: dict a strategy may fill; it is written to the round's log as ``strategy_info``.
        kernel_fn: ``kernel_fn(model, x1, x2) -> (N1, N2)`` the pNTK implementation used
            (wrapped so that its time counts in :attr:`kernel_seconds`); default
            :data:`entk_al.ntk.PNTK`, a feature kernel, with which :meth:`kernel` and the
            look-ahead compute each input's features once per round and shard.
        progress: the run's progress reporter; ``with ctx.progress.task(name, total) as advance``.
        excluded: ids left out this round for non-finite values (see :meth:`finite_ids`).
        eval_batch_size: kept for compatibility; forward passes now run per tile of the
            executor's plan (:data:`entk_al.executor.TILE_SIZE` ids).
        executor: where pool scans run (:mod:`entk_al.executor`); default: a
            :class:`~entk_al.executor.LocalExecutor` over ``x_pool`` on ``device``, its round
            begun with ``model``. Strategies hand it to the scan functions of that package.
    """

    round: int
    seed: int
    model: nn.Module
    device: torch.device
    x_pool: torch.Tensor
    num_classes: int
    labeled_ids: np.ndarray
    labeled_targets: np.ndarray
    unlabeled_ids: np.ndarray
    candidate_ids: np.ndarray
    rng: np.random.Generator
    torch_generator: torch.Generator
    oracle: Callable[[np.ndarray], np.ndarray]
    kernel_fn: Callable[..., torch.Tensor] = PNTK
    info: dict[str, Any] = field(default_factory=dict)
    eval_batch_size: int = 1024
    #: progress reporter (:mod:`entk_al.progress`); kernels and strategies open tasks on it.
    progress: NullProgress = field(default_factory=NullProgress)
    #: seconds spent in ``kernel_fn`` this round (every call through the context counts).
    kernel_seconds: float = 0.0
    #: pool id -> why it was left out this round ("outputs", "embeddings", "kernel", "score").
    excluded: dict[int, str] = field(default_factory=dict)
    executor: Any = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        raw = self.kernel_fn

        def timed_kernel(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None, **kw: Any) -> torch.Tensor:
            n2 = len(x1) if x2 is None else len(x2)
            t0 = time.perf_counter()
            with self.progress.task(f"kernel {len(x1)}x{n2}", total=1) as advance:
                out = raw(model, x1, x2, **kw)
                advance(1)
            self.kernel_seconds += time.perf_counter() - t0
            return out

        self.kernel_fn = timed_kernel
        self._raw_kernel_fn = raw
        if self.executor is None:
            self.executor = LocalExecutor(self.x_pool, self.device)
            self.executor.begin_round(self.round, self.seed, self.model)

    # -- cached per-round quantities ------------------------------------------------
    def _ensure_predictions(self, ids: np.ndarray) -> np.ndarray:
        """Compute logits and features for ids not yet cached; return their cache rows.

        One copy of each is held on the driver; the forward passes run tile by tile on the
        executor's shards (:func:`entk_al.executor.scan.predict`).
        """
        if "row_of" not in self._cache:
            self._cache["row_of"] = np.full(len(self.x_pool), -1, dtype=np.int64)
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
            logits, feats = predict(self.executor, ids)
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
        return self.x_pool[torch.from_numpy(np.asarray(ids, dtype=np.int64))].to(self.device)

    def kernel(self, ids1: np.ndarray, ids2: np.ndarray | None = None) -> torch.Tensor:
        """pNTK between pool ids (cached for the round): (len(ids1), len(ids2)) on ``device``.

        Computed by row tiles on the executor's shards (:func:`entk_al.executor.kernel_rows.kernel_rows`),
        so a symmetric kernel (``ids2`` None) is symmetric up to round-off only.

        Ids whose kernel rows (or columns) are non-finite (e.g. float32 overflow) are added to
        :attr:`excluded`; the matrix is returned as computed, so callers drop them with
        :meth:`keep_mask`. Source: sum-of-logits pNTK, Mohamadi, Bae & Sutherland, arXiv 2206.12543.
        """
        ids1 = np.asarray(ids1, dtype=np.int64)
        ids2 = None if ids2 is None else np.asarray(ids2, dtype=np.int64)
        key = ("kernel", ids1.tobytes(), None if ids2 is None else ids2.tobytes())
        if key not in self._cache:
            # Row tiles on the executor's shards; the columns' inputs travel once.
            cols = ids1 if ids2 is None else ids2
            t0 = time.perf_counter()
            with self.progress.task(f"kernel {len(ids1)}x{len(cols)}", total=1) as advance:
                k = kernel_rows(self.executor, self._raw_kernel_fn, ids1, self.x_pool[torch.from_numpy(cols)],
                                col_ids=ids2, probe=self.kernel_probe()).to(self.device)
                advance(1)
            self.kernel_seconds += time.perf_counter() - t0
            self._note_nonfinite_kernel(k, ids1, ids1 if ids2 is None else ids2)
            self._cache[key] = k
        return self._cache[key]

    def posterior(self, u_ids: np.ndarray, cand_ids: np.ndarray, *, ridge_rel: float = 1e-3, dense_max: int = 8000,
                  reference: str = "network") -> tuple[Any, np.ndarray, np.ndarray]:
        """The linearized network's posterior on an evaluation set U, its kernel rows on the shards.

        Source: Mohamadi, Bae & Sutherland, NeurIPS 2022 (arXiv 2206.12569), Eq. 11–12, with
        the pNTK ⊗ I_O kernel: K = k(L, L), A = k(U, L), B = k(U, U), base = f(U) + A(K+λI)⁻¹R,
        M = B − A(K+λI)⁻¹Aᵀ. ``base`` and M are the mean and (per-class) covariance of the
        linearized network's Gaussian-process posterior. The driver factors K + λI once (float64
        Cholesky, jitter added if needed); A and B stay on the executor's shards
        (:func:`entk_al.executor.sharded_posterior.fit_on_shards`). Ids of U or the candidates
        with non-finite kernel values are left out (see :meth:`finite_ids`) and the system refit.
        ``info`` gets ``ridge`` (absolute λ) and ``jitter``.

        Args:
            u_ids: (m,) int64 global ids of U (the candidates must be among them).
            cand_ids: (C,) int64 global ids of the candidates (the posterior's kernel columns).
            ridge_rel: λ relative to the kernel scale: λ = ridge_rel · trace(K)/n.
            dense_max: above this |U| + n, B's column blocks are recomputed per use instead of kept.
            reference: ``network`` (changes measured from f(U)) | ``base``.

        Returns:
            (posterior, u_ids, cand_ids): a :class:`~entk_al.executor.sharded_posterior.ShardedPosterior`
            (positions index the returned ``u_ids``), and the ids actually used (non-finite ones removed).

        Raises:
            StrategyError: the labeled set's kernel is not finite.
        """
        lab = self.labeled_ids
        k_ll = self.kernel(lab)
        if not self.keep_mask(lab).all() or not bool(torch.isfinite(k_ll).all()):
            raise StrategyError("the kernel of the labeled set has non-finite entries (float32 overflow?); "
                                "check the inputs for huge values")
        ridge = relative_ridge(k_ll, ridge_rel)
        chol, jitter = cholesky_with_jitter(k_ll, ridge)
        resid = (self.labeled_onehot().double() - self.logits(lab).double()).to(chol.device)
        alpha = torch.cholesky_solve(resid, chol) if len(lab) else resid
        x_lab = self.x_pool[torch.from_numpy(lab)]
        u, cand = np.asarray(u_ids, dtype=np.int64), np.asarray(cand_ids, dtype=np.int64)
        while True:
            u, cand = u[self.keep_mask(u)], cand[self.keep_mask(cand)]
            pos_of = {int(i): p for p, i in enumerate(u.tolist())}
            cand_pos = np.fromiter((pos_of[int(i)] for i in cand), dtype=np.int64, count=len(cand))
            with self.progress.task(f"posterior setup, |U| = {len(u)}", total=1) as advance:
                t0 = time.perf_counter()
                post, bad = fit_on_shards(self.executor, self._raw_kernel_fn, u_ids=u, cand_pos=cand_pos,
                                          x_lab=x_lab, x_cand=self.x_pool[torch.from_numpy(cand)], chol=chol,
                                          alpha=alpha, ridge=ridge + jitter, jitter=jitter,
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
        return self.x_pool[:4]

    def _note_nonfinite_kernel(self, k: torch.Tensor, ids1: np.ndarray, ids2: np.ndarray) -> None:
        bad = ~torch.isfinite(k)
        if not bool(bad.any()):
            return
        bad = bad.cpu().numpy()
        if ids1 is ids2 or (len(ids1) == len(ids2) and np.array_equal(ids1, ids2)):
            rows = bad.diagonal().copy()
            cols = rows
        else:
            rows, cols = bad.all(1), bad.all(0)
        rest = bad & ~rows[:, None] & ~cols[None, :]
        rows = rows | rest.any(1)  # entries bad without a bad row or column: blame the row
        for i in np.concatenate([ids1[rows], ids2[cols]]).tolist():
            self.excluded.setdefault(int(i), "kernel")
        self.record_excluded()

    # -- non-finite values ----------------------------------------------------------------
    def keep_mask(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids),) bool: True where the id has not been left out for a non-finite value."""
        if not self.excluded:
            return np.ones(len(ids), dtype=bool)
        return ~np.isin(np.asarray(ids, dtype=np.int64), np.fromiter(self.excluded, dtype=np.int64))

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
        for i in np.asarray(ids, dtype=np.int64).tolist():
            self.excluded.setdefault(int(i), reason)
        self.record_excluded()

    def record_excluded(self, cap: int = 20) -> None:
        """Write how many ids were left out, and the first ``cap`` (with reasons), to ``info``."""
        if self.excluded:
            self.info["nonfinite_excluded"] = len(self.excluded)
            self.info["nonfinite_ids"] = {str(i): why for i, why in list(sorted(self.excluded.items()))[:cap]}

    def screen_candidates(self, k: int) -> None:
        """Drop non-finite candidates from :attr:`candidate_ids` (the loop calls this first).

        Raises:
            StrategyError: fewer than ``k`` candidates with finite outputs and embeddings remain.
        """
        kept = self.finite_ids(self.candidate_ids)
        if len(kept) < k:
            raise StrategyError(f"round {self.round}: only {len(kept)} of {len(self.candidate_ids)} candidates "
                                f"have finite model outputs and embeddings, fewer than the {k} to query "
                                f"(check the inputs for huge or non-finite values, and that training did not diverge: "
                                f"the round's train_loss, --lr)")
        self.candidate_ids = kept

    def labeled_onehot(self) -> torch.Tensor:
        """One-hot targets of the labeled set: (n, O) float32 on ``device``."""
        y = torch.from_numpy(self.labeled_targets).to(self.device)
        return F.one_hot(y, self.num_classes).float()
