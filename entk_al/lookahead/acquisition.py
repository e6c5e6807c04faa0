"""Look-ahead acquisition scores, streamed over blocks of evaluation points × candidates.

Source: Mohamadi, Bae & Sutherland, NeurIPS 2022 (arXiv 2206.12569), Eq. 11–13 and their
public code. For candidate j (a position in the evaluation set U) with target y, the
linearized retrained outputs are (Eq. 12, block inverse)

    f_{L+j}(U_i) = base_i + c_ij · δ_j,   c_ij = M_ij / (M_jj + λ),   δ_j = y − base_j.

Scores compare f_{L+j} with the *current* model outputs ``ref`` (the network outputs f(U),
plus whatever true labels a sequential selection has already folded in):

- ``mlmoc`` (Eq. 13, the paper's default): Σ_i ‖f_{L+j}(U_i) − ref_i‖₂, y = one-hot argmax.
  With g = base − ref: ‖g_i + c_ij δ_j‖² = ‖g_i‖² + 2 c_ij g_i·δ_j + c_ij² ‖δ_j‖², so a block
  needs only (rows × cols) matrices.
- ``flip`` (the authors' code default): the fraction of U whose argmax changes,
  argmax f_{L+j}(U_i) ≠ argmax ref_i. Needs (rows × cols × O) per block.
- ``emoc``: E_{y∼p_j} Σ_i ‖f_{L+j,y}(U_i) − ref_i‖₂ over the O one-hot labels, p_j the
  model's softmax (or simplex-projected outputs) at the candidate. O times the mlmoc cost.
- ``variance_reduction`` (Cohn, Ghahramani & Jordan, "Active learning with statistical
  models", JAIR 1996, Sec. 3 — the expected reduction of the learner's variance over the
  reference distribution, here U): Σ_i M_ij²/(M_jj + λ). Under the kernel posterior
  (M the posterior covariance of the linearized model given L), adding x_j with noise λ lowers
  the variance at U_i by exactly M_ij²/(M_jj + λ) (the diagonal of the rank-one update in
  :mod:`entk_al.lookahead.posterior`), whatever label it gets; it ignores the outputs.
- ``variance_reduction_error``: the same times ‖y_j − base_j‖₂, the size of the error the
  pseudo-label y_j says the linearized model makes at the candidate. MLMOC with g = 0 is
  ‖δ_j‖ Σ_i |M_ij|/(M_jj + λ); this is ‖δ_j‖ Σ_i M_ij²/(M_jj + λ), which no longer rewards a
  small own variance M_jj (see ``variance_power`` below).

Two modifiers apply to every acquisition:

- ``eval_weights`` w_i ≥ 0 weight the sum over U (flip: the weighted fraction Σ w_i·[flip] / Σ w_i).
  With w the predicted uncertainty of U_i, the score counts the change where the model is likely
  wrong: the expected-error-reduction idea of Roy & McCallum, ICML 2001 (their estimate of the
  error on U after adding the candidate), with the model's uncertainty standing in for its
  error.
- ``variance_power`` p: the score is multiplied by √(M_jj + λ)^p. For λ ≪ M_jj and g ≈ 0,
  |c_ij| = |ρ_ij| √(M_ii / M_jj) with ρ the posterior correlation, so
  MLMOC_j ≈ ‖δ_j‖ Σ_i |ρ_ij| √M_ii / √M_jj: the 1/√M_jj rewards candidates whose own
  posterior variance is small, i.e. points the kernel already predicts from L, where the
  pseudo-label's δ_j is mostly the regressor's departure from one-hot. p = 1 cancels it
  (‖δ_j‖ Σ_i |ρ_ij| √M_ii: the L1 analogue of Cohn's Σ_i ρ_ij² M_ii), p = 2 weights by the
  candidate's variance like ``variance_reduction``. A degenerate candidate (denominator at
  round-off, see :meth:`entk_al.lookahead.system.LookaheadSystem.denominators`) scores 0 when p ≠ 0.

Nothing of size C × m × O is ever built: the block shape is bounded by ``memory_budget_bytes``.
Ties in argmax go to the lowest class index (``torch.argmax`` returns the first maximum).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Protocol

import torch

ACQUISITIONS = ("mlmoc", "flip", "emoc", "variance_reduction", "variance_reduction_error")
#: Acquisitions that need no label per candidate beyond the pseudo-label's error size.
VARIANCE_ACQUISITIONS = ("variance_reduction", "variance_reduction_error")


class PosteriorLike(Protocol):
    """What the scorer needs: current base/ref outputs and blocks of the posterior M."""

    base: torch.Tensor  # (m, O) float64
    ref: torch.Tensor  # (m, O) float64

    def m_block(self, rows: slice, cols: torch.Tensor) -> torch.Tensor: ...  # (r, c) float64, a new tensor

    def denominators(self, cols: torch.Tensor) -> torch.Tensor: ...  # (c,) float64


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``v`` (N, O) onto the probability simplex.

    Source: Duchi, Shalev-Shwartz, Singer & Chandra, ICML 2008, Fig. 1 (sort-based).
    MSE-trained outputs approximate one-hot vectors, so this is a natural "probability" for them.
    """
    u, _ = torch.sort(v, dim=1, descending=True)
    css = u.cumsum(dim=1) - 1.0
    idx = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
    cond = (u - css / idx) > 0
    rho = cond.to(torch.long).cumsum(dim=1).argmax(dim=1, keepdim=True)  # last True
    theta = css.gather(1, rho) / (rho + 1).to(v.dtype)
    return (v - theta).clamp_min(0.0)


def label_probabilities(outputs: torch.Tensor, kind: str = "softmax") -> torch.Tensor:
    """(N, O) probabilities from model outputs: ``softmax`` or ``simplex`` projection.

    Args:
        outputs: (N, O) model outputs (logits), any float dtype; computed in float64.
        kind: ``softmax`` or ``simplex`` (Euclidean projection onto the probability simplex,
            :func:`project_simplex`).

    Returns:
        (N, O) float64 rows on the probability simplex.

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind == "softmax":
        return torch.softmax(outputs.to(torch.float64), dim=1)
    if kind == "simplex":
        return project_simplex(outputs.to(torch.float64))
    raise ValueError(f"unknown probability kind {kind!r}; choose softmax or simplex")


def pseudo_labels(outputs: torch.Tensor) -> torch.Tensor:
    """One-hot argmax (first maximum on ties) of (N, O) outputs, float64."""
    return torch.nn.functional.one_hot(outputs.argmax(dim=1), outputs.shape[1]).to(torch.float64)


def bytes_per_entry(acquisition: str, num_outputs: int) -> int:
    """Bytes of the scoring working set per (row, candidate) entry of a block (float64 temporaries).

    Args:
        acquisition: one of :data:`ACQUISITIONS` (``flip`` holds (r, c, O) outputs).
        num_outputs: O.
    """
    return 8 * (2 * num_outputs + 4) if acquisition == "flip" else 8 * 6


def block_shape(num_eval: int, num_cand: int, per_entry: int, budget: int) -> tuple[int, int]:
    """(rows, cols) of one block so that rows·cols·per_entry ≤ budget (at least 1 × 1).

    Whole columns are preferred (one kernel-column computation per candidate block); rows are
    split only when fewer than 32 whole columns fit.

    Args:
        num_eval: rows available (evaluation points m).
        num_cand: columns available (candidates C).
        per_entry: bytes per (row, column) entry of the block's working set.
        budget: memory budget in bytes.
    """
    entries = max(1, budget // per_entry)
    cols = min(num_cand, max(1, entries // max(num_eval, 1)))
    if cols >= min(32, num_cand):
        return num_eval, cols
    cols = min(num_cand, 32)
    return max(1, min(num_eval, entries // cols)), cols


def check_score_inputs(acquisition: str, base: torch.Tensor, ref: torch.Tensor, cand: torch.Tensor,
                       y_cand: torch.Tensor | None, probs: torch.Tensor | None,
                       eval_weights: torch.Tensor | None):
    """Validate the scoring inputs and fill the defaults; shared by the in-process and the sharded scorer.

    Args:
        acquisition: the acquisition name (one of :data:`ACQUISITIONS`).
        base: (m, O) linearized predictions on U; fixes the dtype and device of the results.
        ref: (m, O) reference outputs the change is measured from.
        cand: (C,) int64 candidate positions in U.
        y_cand: (C, O) targets, or None for the one-hot argmax of ``ref[cand]``.
        probs: (C, O) label probabilities for emoc, or None for the softmax of ``ref[cand]``.
        eval_weights: (m,) nonnegative weights over U, or None.

    Returns:
        (y_cand, probs, eval_weights): the one that the acquisition uses filled in and moved to
        ``base``'s dtype and device (the other None as given), and the weights likewise.

    Raises:
        ValueError: unknown acquisition, or y_cand/probs/eval_weights of the wrong shape, or
            negative eval_weights.
    """
    if acquisition not in ACQUISITIONS:
        raise ValueError(f"unknown acquisition {acquisition!r}; choose from {', '.join(ACQUISITIONS)}")
    m, n_out = base.shape
    num_c = cand.numel()
    if acquisition == "emoc":
        probs = label_probabilities(ref[cand]) if probs is None else probs.to(base)
        if probs.shape != (num_c, n_out):
            raise ValueError(f"probs must be ({num_c}, {n_out}), got {tuple(probs.shape)}")
    else:
        y_cand = pseudo_labels(ref[cand]) if y_cand is None else y_cand.to(base)
        if y_cand.shape != (num_c, n_out):
            raise ValueError(f"y_cand must be ({num_c}, {n_out}), got {tuple(y_cand.shape)}")
    if eval_weights is not None:
        eval_weights = eval_weights.to(base)
        if eval_weights.shape != (m,):
            raise ValueError(f"eval_weights must have shape ({m},), got {tuple(eval_weights.shape)}")
        if bool((eval_weights < 0).any()):
            raise ValueError("eval_weights must be >= 0")
    return y_cand, probs, eval_weights


def lookahead_scores(post: PosteriorLike, cand: torch.Tensor, *, acquisition: str = "mlmoc",
                     y_cand: torch.Tensor | None = None, probs: torch.Tensor | None = None,
                     exclude_self: bool = False, memory_budget_bytes: int = 256 * 2**20,
                     eval_weights: torch.Tensor | None = None, variance_power: float = 0.0,
                     progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Streamed look-ahead score of each candidate (higher = more informative).

    Args:
        post: the round's posterior (:class:`entk_al.lookahead.posterior.Posterior` or anything with
            ``base``, ``ref`` (m, O), ``m_block(rows, cols)`` and ``denominators(cols)``).
        cand: (C,) int64 candidate positions in U.
        acquisition: ``mlmoc`` | ``flip`` | ``emoc`` | ``variance_reduction`` |
            ``variance_reduction_error`` (see the module docstring).
        y_cand: (C, O) targets for mlmoc/flip/variance_reduction_error; default: one-hot argmax
            of ``post.ref[cand]``.
        probs: (C, O) label probabilities for emoc; default: softmax of ``post.ref[cand]``.
        exclude_self: leave i = j out of candidate j's sum (flip then divides by m − 1).
        memory_budget_bytes: bytes for the per-block work arrays.
        eval_weights: (m,) nonnegative weights of the terms over U (default: all 1).
        variance_power: p; scores are multiplied by √(M_jj + λ)^p (0: unchanged).
        progress: called with the number of candidates finished after each column block.

    Returns:
        (C,) float64 on the posterior's device: mlmoc/emoc in output-space L2 norm summed
        over U; flip a fraction in [0, 1]; variance_reduction in kernel units (summed
        variance), times an output-space norm for variance_reduction_error; all times
        √(M_jj + λ)^p and with the sum over U weighted when those options are given.

    Raises:
        ValueError: unknown acquisition, positions out of range, bad y_cand/probs/eval_weights
            shapes, or negative eval_weights.
    """
    if acquisition not in ACQUISITIONS:
        raise ValueError(f"unknown acquisition {acquisition!r}; choose from {', '.join(ACQUISITIONS)}")
    base, ref = post.base, post.ref
    m, n_out = base.shape
    dev = base.device
    cand = torch.as_tensor(cand, dtype=torch.long, device=dev)
    if cand.ndim != 1 or (cand.numel() and (int(cand.min()) < 0 or int(cand.max()) >= m)):
        raise ValueError(f"cand must be 1-D positions in [0, {m})")
    num_c = cand.numel()
    y_cand, probs, eval_weights = check_score_inputs(acquisition, base, ref, cand, y_cand, probs, eval_weights)
    g = base - ref
    g_sq = (g * g).sum(dim=1)
    ref_arg = ref.argmax(dim=1)
    out = torch.zeros(num_c, dtype=torch.float64, device=dev)
    rows_n, cols_n = block_shape(m, max(num_c, 1), bytes_per_entry(acquisition, n_out), memory_budget_bytes)
    for s in range(0, num_c, cols_n):
        cb = cand[s:s + cols_n]
        den = post.denominators(cb)
        cols = BlockColumns(cb, den, base[cb], None if y_cand is None else y_cand[s:s + cols_n],
                            None if probs is None else probs[s:s + cols_n])
        for r0 in range(0, m, rows_n):
            rows = slice(r0, min(m, r0 + rows_n))
            # m_block returns a fresh tensor: block_terms may edit it in place.
            part = block_terms(acquisition, post.m_block(rows, cb), cols, BlockRows(
                torch.arange(rows.start, rows.stop, device=dev), g[rows], g_sq[rows], base[rows], ref_arg[rows],
                None if eval_weights is None else eval_weights[rows]), exclude_self)
            out[s:s + cols_n] += part.sum(dim=0)
        out[s:s + cols_n] = finish_columns(acquisition, out[s:s + cols_n], cols, variance_power)
        if progress is not None:
            progress(min(num_c, s + cols_n))
    if acquisition == "flip":
        out = flip_fraction(out, cand, m, exclude_self, None if eval_weights is None else (
            eval_weights.sum(), eval_weights[cand]))
    return out


class BlockColumns(NamedTuple):
    """What one column block of candidates contributes to :func:`block_terms` (c candidates)."""

    pos: torch.Tensor  # (c,) int64 positions in U
    den: torch.Tensor  # (c,) float64 M_jj + λ (+inf when degenerate)
    base: torch.Tensor  # (c, O) float64 base at the candidates
    y: torch.Tensor | None  # (c, O) targets (all but emoc)
    probs: torch.Tensor | None  # (c, O) label probabilities (emoc)


class BlockRows(NamedTuple):
    """The evaluation rows of one block (r rows of U)."""

    pos: torch.Tensor  # (r,) int64 positions in U
    g: torch.Tensor  # (r, O) float64 base − ref
    g_sq: torch.Tensor  # (r,) float64 ‖g‖²
    base: torch.Tensor  # (r, O) float64
    ref_arg: torch.Tensor  # (r,) int64 argmax of ref
    weights: torch.Tensor | None  # (r,) float64 eval weights, or None


def block_terms(acquisition: str, m_blk: torch.Tensor, cols: BlockColumns, rows: BlockRows,
                exclude_self: bool) -> torch.Tensor:
    """Per-(row, candidate) terms of the score sums over U for one block, (r, c) float64.

    Summing the result over rows (and over all row blocks) gives the un-normalized score
    before :func:`finish_columns` (see the module docstring for each acquisition's term).

    Args:
        acquisition: one of :data:`ACQUISITIONS`.
        m_blk: (r, c) float64 block M[rows, cols] of the current posterior; overwritten.
        cols: the candidates of the block (:class:`BlockColumns`).
        rows: the evaluation rows of the block (:class:`BlockRows`).
        exclude_self: zero the term of a candidate in its own row.
    """
    coef = m_blk.div_(cols.den)  # c_ij
    g_r, gsq_r = rows.g, rows.g_sq.unsqueeze(1)
    if acquisition in VARIANCE_ACQUISITIONS:
        # M_ij² / (M_jj + λ) = c_ij² (M_jj + λ); a degenerate column (den = inf) has c = 0.
        den = cols.den
        part = coef.square_().mul_(torch.where(torch.isfinite(den), den, torch.zeros_like(den)))
    elif acquisition == "mlmoc":
        delta = cols.y - cols.base
        part = _l2_change(gsq_r, g_r @ delta.T, (delta * delta).sum(dim=1), coef)
    elif acquisition == "emoc":
        part = torch.zeros_like(coef)
        gb = g_r @ cols.base.T  # (r, c)
        bsq = (cols.base * cols.base).sum(dim=1)
        for k in range(cols.base.shape[1]):
            # δ = e_k − base_j:  g·δ = g_k − g·base_j,  ‖δ‖² = 1 − 2 base_jk + ‖base_j‖².
            gd = g_r[:, k:k + 1] - gb
            dsq = 1.0 - 2.0 * cols.base[:, k] + bsq
            part += cols.probs[:, k] * _l2_change(gsq_r, gd, dsq, coef)
    else:
        delta = cols.y - cols.base
        new = rows.base.unsqueeze(1) + coef.unsqueeze(-1) * delta.unsqueeze(0)  # (r, c, O)
        part = (new.argmax(dim=2) != rows.ref_arg.unsqueeze(1)).to(torch.float64)
    if exclude_self:
        r_i, c_i = (rows.pos.unsqueeze(1) == cols.pos.unsqueeze(0)).nonzero(as_tuple=True)
        part[r_i, c_i] = 0.0
    if rows.weights is not None:
        part.mul_(rows.weights.unsqueeze(1))
    return part


def finish_columns(acquisition: str, sums: torch.Tensor, cols: BlockColumns, variance_power: float) -> torch.Tensor:
    """Per-candidate factors applied to a column block's summed terms, (c,) float64 (new tensor):
    ‖y_j − base_j‖ for ``variance_reduction_error`` and √(M_jj + λ)^p for ``variance_power``.

    Args:
        acquisition: one of :data:`ACQUISITIONS`.
        sums: (c,) float64 the block's terms summed over all of U.
        cols: the block's candidates (:class:`BlockColumns`).
        variance_power: p (0: no factor).
    """
    out = sums.clone()
    if acquisition == "variance_reduction_error":
        out *= (cols.y - cols.base).norm(dim=1)
    if variance_power != 0.0:
        den = cols.den
        out *= torch.where(torch.isfinite(den), den.pow(variance_power / 2), torch.zeros_like(den))
    return out


def flip_fraction(sums: torch.Tensor, cand: torch.Tensor, m: int, exclude_self: bool,
                  weights: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Flip counts (C,) to fractions: over m (m − 1 with ``exclude_self``) points, or over the
    total eval weight.

    Args:
        sums: (C,) float64 (weighted) flip counts.
        cand: (C,) candidate positions (unused beyond alignment with ``weights``).
        m: |U|.
        exclude_self: the candidate's own row was left out of its count.
        weights: None, or (Σ_i w_i, (C,) w at the candidates).
    """
    if weights is None:
        return sums / (max(1, m - 1) if exclude_self else max(1, m))
    total, w_cand = weights
    total = total - (w_cand if exclude_self else 0.0)
    return sums / torch.clamp_min(total, torch.finfo(torch.float64).tiny)


def _l2_change(g_sq: torch.Tensor, g_dot_delta: torch.Tensor, delta_sq: torch.Tensor,
               coef: torch.Tensor) -> torch.Tensor:
    """‖g_i + c_ij δ_j‖₂ for a block, from the expanded square (clamped at 0 against round-off)."""
    # In place, one temporary: (c δ² + 2 g·δ)·c + ‖g‖²; the block pass is memory-bound.
    sq = coef * delta_sq
    sq.add_(g_dot_delta, alpha=2.0).mul_(coef).add_(g_sq)
    return sq.clamp_min_(0.0).sqrt_()
