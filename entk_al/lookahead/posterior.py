"""The look-ahead posterior with rank-one label folding: batch, sequential and hybrid selection.

Source: Mohamadi, Bae & Sutherland, NeurIPS 2022 (arXiv 2206.12569), Sec. 3 (sequential
mode: query one point, fold its true label into the kernel system without SGD, repeat).

Folding candidate j (position in U) with its label y into the system is the block-inverse
update of the augmented kernel regression (Eq. 12 applied to the posterior itself):

    base' = base + M[:, j] / (M_jj + λ) · (y − base_j)                      (m, O)
    M'    = M − M[:, j] M[j, :] / (M_jj + λ)                                 (m, m)

which equals refitting on L ∪ {(U_j, y)} from scratch (tested in tests/test_sequential.py).
M' is never formed: the corrections are kept as rank-one factors u_t = M^{(t)}[:, j_t]/√(M_jj+λ),
so a block of M' costs one block of M plus an (r × t)(t × c) product. No refactorization of
K and no SGD happen between picks.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .acquisition import label_probabilities, lookahead_scores, project_simplex, pseudo_labels
from .batch import SELECTIONS, change_gram, gumbel_top_k, kmeanspp_seeding, top_k_positions
from .system import EvalSetPosterior, LookaheadSystem, safe_denominators

#: Selection modes of :func:`select_lookahead`.
MODES = ("batch", "sequential", "hybrid")
#: What scores measure the change from: the network outputs f(U) or the linearized base.
REFERENCES = ("network", "base")
#: Weights of the sum over U: none, or the predicted uncertainty of each U_i.
EVAL_WEIGHTS = ("none", "uncertainty")

KuuBlock = Callable[[slice, torch.Tensor], torch.Tensor]


class Posterior(EvalSetPosterior):
    """Current linearized model on U: ``base`` (m, O), ``ref`` (m, O) and blocks of M.

    ``ref`` is what scores compare against, plus the change that the labels folded so far made
    to the linearized prediction (ref − base stays constant): with ``reference="network"``
    the network outputs f(U) (Eq. 13 of arXiv 2206.12569: the change of the model), with
    ``"base"`` the linearized prediction from L, base = f(U) + A(K+λI)⁻¹R, so that the
    candidate-independent term g = base − f(U) drops out of every score.

    Args:
        sysm: the round's :class:`~entk_al.lookahead.system.LookaheadSystem` (one Cholesky).
        k_uu_block: ``k_uu_block(rows, cols) -> B[rows, cols]`` (r, c); default: slices of
            ``sysm.k_uu``. Supply it to stream B from a kernel function or features.
        reference: ``network`` (default) | ``base``.

    Attributes:
        ridge_eff: λ + jitter, the system's ridge (every denominator M'_jj + λ uses it).

    Raises:
        ValueError: no ``k_uu_block`` and the system holds no ``k_uu``; unknown reference.
    """

    def __init__(self, sysm: LookaheadSystem, k_uu_block: KuuBlock | None = None, reference: str = "network"):
        if reference not in REFERENCES:
            raise ValueError(f"reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
        if k_uu_block is None:
            if sysm.k_uu is None:
                raise ValueError("the system holds no k_uu; pass k_uu_block")
            k_uu = sysm.k_uu
            k_uu_block = lambda rows, cols: k_uu[rows][:, cols]  # noqa: E731
        self.sysm = sysm
        self.k_uu_block = k_uu_block
        self.base = sysm.base.clone()
        self.ref = (sysm.f_u if reference == "network" else sysm.base).clone()
        self.m_diag = sysm.m_diag.clone()
        self.ridge_eff = sysm.ridge_eff
        self._u = torch.zeros(sysm.num_eval, 0, dtype=torch.float64, device=sysm.base.device)
        self.folded: list[int] = []
        self.conditioned: list[int] = []

    def m_block(self, rows: slice, cols: torch.Tensor) -> torch.Tensor:
        """Block M'[rows, cols] of the current posterior, (r, c) float64 (a new tensor)."""
        s = self.sysm
        # addmm fuses B − A W into one pass and returns a new tensor (callers may edit it in place).
        out = torch.addmm(self.k_uu_block(rows, cols).to(torch.float64), s.k_ul[rows], s.w[:, cols], alpha=-1.0)
        if self._u.shape[1]:
            out.addmm_(self._u[rows], self._u[cols].T, alpha=-1.0)
        return out

    def denominators(self, cols: torch.Tensor) -> torch.Tensor:
        """M'_jj + λ for positions ``cols`` (c,); +inf where it is round-off (see
        :meth:`LookaheadSystem.denominators`)."""
        return safe_denominators(self.m_diag[cols] + self.ridge_eff, self.sysm.tol)

    def scores(self, cand: torch.Tensor, **options) -> torch.Tensor:
        """:func:`entk_al.lookahead.acquisition.lookahead_scores` of candidates ``cand`` (positions in U)
        under the current posterior; ``options`` are its keyword arguments."""
        return lookahead_scores(self, cand, **options)

    def columns(self, pos: torch.Tensor) -> torch.Tensor:
        """Columns M'[:, pos] of the current posterior, (m, c) float64 (a new tensor)."""
        return self.m_block(slice(None), torch.as_tensor(pos, dtype=torch.long, device=self.base.device))

    def column(self, j: int) -> torch.Tensor:
        """Column M'[:, j] of the current posterior, (m,) float64."""
        return self.columns(torch.tensor([int(j)]))[:, 0]

    def fold(self, j: int, y: torch.Tensor) -> None:
        """Add (U_j, y) to the labeled set by a rank-one update; ``y`` (O,) one-hot target."""
        col = self.column(j)
        den = self.denominators(torch.tensor([int(j)], device=self.base.device))[0]
        self._u = fold_update(self.base, self.ref, self.m_diag, self._u, col, den, j, y)
        self.folded.append(int(j))

    def condition(self, j: int) -> None:
        """Add U_j to the labeled set without its label: M' loses its rank-one term, base and
        ref stay (:func:`condition_update`). Later folds and blocks see the conditioned M'."""
        col = self.column(j)
        den = self.denominators(torch.tensor([int(j)], device=self.base.device))[0]
        self._u = condition_update(self.m_diag, self._u, col, den)
        self.conditioned.append(int(j))


def fold_update(base: torch.Tensor, ref: torch.Tensor, m_diag: torch.Tensor, u: torch.Tensor, col: torch.Tensor,
                den: torch.Tensor, j: int, y: torch.Tensor) -> torch.Tensor:
    """The rank-one fold of (U_j, y) shared by :class:`Posterior` and the sharded posterior.

    base and ref move by M'[:, j] (y − base_j) / (M'_jj + λ) (Mohamadi et al. 2022, Eq. 12);
    diag M' loses u², u = M'[:, j] / √(M'_jj + λ), clamped at 0 against round-off. Updates
    ``base``, ``ref`` and ``m_diag`` in place.

    Args:
        base: (m, O) float64 linearized predictions on U.
        ref: (m, O) float64 reference outputs (moved with base).
        m_diag: (m,) float64 diag M'.
        u: (m, F) float64 columns of the folds so far.
        col: (m,) float64 column M'[:, j].
        den: 0-d float64 M'_jj + λ.
        j: position of the folded point in U.
        y: (O,) its one-hot target.

    Returns:
        (m, F + 1) u with this fold's column appended.
    """
    step = torch.outer(col / den, y.to(base) - base[j])
    base += step
    ref += step
    return condition_update(m_diag, u, col, den)


def condition_update(m_diag: torch.Tensor, u: torch.Tensor, col: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """The covariance half of a fold: M' = M − M[:, j] M[j, :] / (M_jj + λ), no label needed.

    The Gaussian-process posterior covariance after observing U_j with noise variance λ (per
    unit output scale) does not depend on the observed value (Rasmussen & Williams 2006,
    Eq. 2.24: cov(f_*) = K_** − K_*X (K_XX + σ_n²I)⁻¹ K_X*, applied to the current posterior as the
    prior). Updates ``m_diag`` in place (diag M' loses u², u = M'[:, j]/√(M'_jj + λ), clamped
    at 0 against round-off).

    Args:
        m_diag: (m,) float64 diag M'.
        u: (m, F) float64 columns of the folds and conditionings so far.
        col: (m,) float64 column M'[:, j].
        den: 0-d float64 M'_jj + λ (+inf: round-off, no change).

    Returns:
        (m, F + 1) u with this step's column appended.
    """
    uj = col / den.sqrt()
    m_diag -= uj * uj
    m_diag.clamp_min_(0.0)
    return torch.cat([u, uj.unsqueeze(1)], dim=1)


def uncertainty_weights(ref: torch.Tensor) -> torch.Tensor:
    """Predicted uncertainty of each U_i, (m,) float64 in [0, 1]: 1 − (p_(1) − p_(2)).

    p is the Euclidean projection of the outputs ``ref`` (m, O) onto the simplex
    (:func:`entk_al.lookahead.acquisition.project_simplex`): networks trained with the squared loss on
    one-hot targets give nearly flat softmaxes, whose margins would make every weight ≈ 1.
    Used as eval weights, the look-ahead counts the change where the model is unsure, the
    expected-error-reduction idea of Roy & McCallum, ICML 2001.
    """
    p = project_simplex(ref.to(torch.float64))
    top2 = torch.topk(p, min(2, p.shape[1]), dim=1).values
    margin = top2[:, 0] - top2[:, 1] if p.shape[1] > 1 else top2[:, 0]
    return 1.0 - margin


def _top(scores: torch.Tensor, k: int, keys: np.ndarray | None) -> np.ndarray:
    return top_k_positions(scores.detach().cpu().numpy(), k, keys)


def _choose(post: Posterior, pos: torch.Tensor, scores: torch.Tensor, y: torch.Tensor, n: int, selection: str,
            rng: np.random.Generator | None, diversity_pool: int, temperature: float,
            keys: np.ndarray | None) -> np.ndarray:
    """Indices into ``pos`` of the n candidates one batch step queries (see :mod:`entk_al.lookahead.batch`);
    ``keys`` are their tie-break keys (or None)."""
    if selection == "topk" or n >= pos.numel():
        return _top(scores, n, keys)
    s = scores.detach().cpu().numpy()
    if selection == "gumbel":
        return gumbel_top_k(s, n, rng, temperature)
    pool = _top(scores, min(pos.numel(), max(n, diversity_pool)), keys)  # pool[0] is the top score
    gram = change_gram(post, pos[torch.from_numpy(pool).to(pos.device)], y[torch.from_numpy(pool).to(y.device)])
    return pool[kmeanspp_seeding(gram.cpu().numpy(), n, 0, rng, None if keys is None else keys[pool])]


def select_lookahead(post: Posterior, cand: np.ndarray, k: int, *, mode: str = "batch",
                     hybrid_size: int = 1, acquisition: str = "mlmoc", exclude_self: bool = False,
                     probs: str = "softmax", oracle: Callable[[np.ndarray], np.ndarray] | None = None,
                     memory_budget_bytes: int = 256 * 2**20, variance_power: float = 0.0,
                     eval_weight: str = "none", selection: str = "topk", rng: np.random.Generator | None = None,
                     diversity_pool: int = 100, gumbel_temperature: float = 1.0,
                     tie_keys: np.ndarray | None = None,
                     progress: Callable[[int], None] | None = None,
                     score_progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, dict]:
    """Pick ``k`` candidates by look-ahead score.

    - ``batch``: one scoring pass, then the batch rule ``selection`` with pseudo-labels
      (``topk``: the paper's batch mode).
    - ``sequential``: pick the best, ask ``oracle`` for its true label, fold it into the
      posterior (rank-one, no SGD), rescore, repeat k times (the paper's sequential mode).
    - ``hybrid``: the same with sub-batches of ``hybrid_size`` chosen by ``selection`` from
      pseudo-label scores; ``hybrid_size=1`` is sequential, ``hybrid_size=k`` is batch.

    Pseudo-labels, emoc probabilities and uncertainty weights come from the current ``post.ref``.

    Args:
        post: the posterior (modified in place by folds): a :class:`Posterior`, or anything with
            its ``base``, ``ref``, ``folded``, ``fold(j, y)``, ``scores(pos, **options)`` and
            ``denominators`` / ``coef_gram`` (e.g. :class:`entk_al.scans.lookahead_tiles.ShardedPosterior`,
            which scores on the executor's shards).
        cand: (C,) int64 candidate positions in U.
        k: number to select (≤ C).
        oracle: ``oracle(positions) -> labels`` (int64 class indices); needed unless batch.
        probs: ``softmax`` or ``simplex`` (emoc only).
        variance_power: p of :func:`entk_al.lookahead.acquisition.lookahead_scores` (× √(M_jj+λ)^p).
        eval_weight: ``none`` | ``uncertainty`` (:func:`uncertainty_weights` on the sum over U).
        selection: ``topk`` | ``gumbel`` | ``kmeanspp`` (:mod:`entk_al.lookahead.batch`).
        rng: generator for ``gumbel`` / ``kmeanspp``.
        diversity_pool: ``kmeanspp`` seeds among this many top-scored candidates (at least
            the step's batch size).
        gumbel_temperature: τ of ``gumbel``.
        tie_keys: (m,) uint64 tie-break keys of U's positions (:func:`entk_al.seeding.tie_keys`
            of their pool ids): equal scores are taken in increasing key order; None: the
            earlier position in ``cand`` first.
        mode: ``batch``, ``sequential`` or ``hybrid``.
        hybrid_size: picks per fold in ``hybrid`` mode (>= 1).
        acquisition: score of :func:`entk_al.lookahead.acquisition.lookahead_scores` (e.g. ``mlmoc``,
            ``emoc``, ``flip``).
        exclude_self: leave i = j out of candidate j's sum over U (flip then divides by m − 1).
        memory_budget_bytes: bytes of the scoring blocks' working set
            (:func:`entk_al.lookahead.acquisition.block_shape`).
        progress: called with the number of picks made so far, after each step.
        score_progress: called with the number of candidates scored so far in the current
            scoring pass, after each block (a new pass starts after each fold).

    Returns:
        (positions (k,) int64 in pick order, info dict: ``pick_scores`` (the score of each pick
        when it was picked), ``first_scores`` ((C,) candidate positions, (C,) float64 scores of
        the first scoring pass, before any fold)).

    Raises:
        ValueError: unknown mode/selection/eval_weight, k > C, hybrid_size < 1, no oracle for a
            folding mode, or no rng for a random batch rule.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}; choose from {', '.join(SELECTIONS)}")
    if eval_weight not in EVAL_WEIGHTS:
        raise ValueError(f"unknown eval_weight {eval_weight!r}; choose from {', '.join(EVAL_WEIGHTS)}")
    if selection != "topk" and rng is None:
        raise ValueError(f"selection {selection!r} needs an rng")
    cand = np.asarray(cand, dtype=np.int64)
    if k > len(cand):
        raise ValueError(f"cannot select {k} from {len(cand)} candidates")
    if hybrid_size < 1:
        raise ValueError(f"hybrid_size must be >= 1, got {hybrid_size}")
    step = {"batch": max(k, 1), "sequential": 1, "hybrid": hybrid_size}[mode]
    if step < k and oracle is None:
        raise ValueError(f"mode {mode!r} needs an oracle to fold true labels")
    dev = post.base.device
    remaining = cand.copy()
    picked: list[int] = []
    pick_scores: list[float] = []
    n_out = post.base.shape[1]
    while len(picked) < k:
        pos = torch.from_numpy(remaining).to(dev)
        kw = {}
        y_pos = pseudo_labels(post.ref[pos])
        if acquisition == "emoc":
            kw["probs"] = label_probabilities(post.ref[pos], probs)
        else:
            kw["y_cand"] = y_pos
        if eval_weight == "uncertainty":
            kw["eval_weights"] = uncertainty_weights(post.ref)
        scores = post.scores(pos, acquisition=acquisition, exclude_self=exclude_self,
                             memory_budget_bytes=memory_budget_bytes, variance_power=variance_power,
                             progress=score_progress, **kw)
        if not picked:
            first = (remaining.copy(), scores.detach().cpu().double().numpy())
        take = _choose(post, pos, scores, y_pos, min(step, k - len(picked)), selection, rng, diversity_pool,
                       gumbel_temperature, None if tie_keys is None else np.asarray(tie_keys)[remaining])
        chosen = remaining[take]
        picked.extend(chosen.tolist())
        pick_scores.extend(scores[torch.from_numpy(take).to(dev)].tolist())
        remaining = np.delete(remaining, take)
        if len(picked) < k:
            labels = np.asarray(oracle(chosen), dtype=np.int64)
            onehot = torch.nn.functional.one_hot(torch.from_numpy(labels), n_out).to(post.base)
            for j, y in zip(chosen.tolist(), onehot):
                post.fold(j, y)
        if progress is not None:
            progress(len(picked))
    return np.asarray(picked, dtype=np.int64), {"pick_scores": pick_scores, "first_scores": first}
