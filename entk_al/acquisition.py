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

Nothing of size C × m × O is ever built: the block shape is bounded by ``memory_budget``.
Ties in argmax go to the lowest class index (``torch.argmax`` returns the first maximum).
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

ACQUISITIONS = ("mlmoc", "flip", "emoc")


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
    """(N, O) probabilities from model outputs: ``softmax`` or ``simplex`` projection."""
    if kind == "softmax":
        return torch.softmax(outputs.to(torch.float64), dim=1)
    if kind == "simplex":
        return project_simplex(outputs.to(torch.float64))
    raise ValueError(f"unknown probability kind {kind!r}; choose softmax or simplex")


def pseudo_labels(outputs: torch.Tensor) -> torch.Tensor:
    """One-hot argmax (first maximum on ties) of (N, O) outputs, float64."""
    return torch.nn.functional.one_hot(outputs.argmax(dim=1), outputs.shape[1]).to(torch.float64)


def _bytes_per_entry(acquisition: str, num_outputs: int) -> int:
    return 8 * (2 * num_outputs + 4) if acquisition == "flip" else 8 * 6


def block_shape(num_eval: int, num_cand: int, per_entry: int, budget: int) -> tuple[int, int]:
    """(rows, cols) of one block so that rows·cols·per_entry ≤ budget (at least 1 × 1).

    Whole columns are preferred (one kernel-column computation per candidate block); rows are
    split only when fewer than 32 whole columns fit.
    """
    entries = max(1, budget // per_entry)
    cols = min(num_cand, max(1, entries // max(num_eval, 1)))
    if cols >= min(32, num_cand):
        return num_eval, cols
    cols = min(num_cand, 32)
    return max(1, min(num_eval, entries // cols)), cols


def lookahead_scores(post: PosteriorLike, cand: torch.Tensor, *, acquisition: str = "mlmoc",
                     y_cand: torch.Tensor | None = None, probs: torch.Tensor | None = None,
                     exclude_self: bool = False, memory_budget: int = 256 * 2**20,
                     progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Streamed look-ahead score of each candidate (higher = more informative).

    Args:
        post: the round's posterior (:class:`entk_al.sequential.Posterior` or anything with
            ``base``, ``ref`` (m, O), ``m_block(rows, cols)`` and ``denominators(cols)``).
        cand: (C,) int64 candidate positions in U.
        acquisition: ``mlmoc`` | ``flip`` | ``emoc`` (see the module docstring).
        y_cand: (C, O) targets for mlmoc/flip; default: one-hot argmax of ``post.ref[cand]``.
        probs: (C, O) label probabilities for emoc; default: softmax of ``post.ref[cand]``.
        exclude_self: leave i = j out of candidate j's sum (flip then divides by m − 1).
        memory_budget: bytes for the per-block work arrays.
        progress: called with the number of candidates finished after each column block.

    Returns:
        (C,) float64 on the posterior's device: mlmoc/emoc in output-space L2 norm summed
        over U; flip a fraction in [0, 1].

    Raises:
        ValueError: unknown acquisition, positions out of range, or bad y_cand/probs shapes.
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
    if acquisition == "emoc":
        probs = label_probabilities(ref[cand]) if probs is None else probs.to(base)
        if probs.shape != (num_c, n_out):
            raise ValueError(f"probs must be ({num_c}, {n_out}), got {tuple(probs.shape)}")
    else:
        y_cand = pseudo_labels(ref[cand]) if y_cand is None else y_cand.to(base)
        if y_cand.shape != (num_c, n_out):
            raise ValueError(f"y_cand must be ({num_c}, {n_out}), got {tuple(y_cand.shape)}")
    g = base - ref
    g_sq = (g * g).sum(dim=1)
    ref_arg = ref.argmax(dim=1)
    out = torch.zeros(num_c, dtype=torch.float64, device=dev)
    rows_n, cols_n = block_shape(m, max(num_c, 1), _bytes_per_entry(acquisition, n_out), memory_budget)
    for s in range(0, num_c, cols_n):
        cb = cand[s:s + cols_n]
        den = post.denominators(cb)
        base_c = base[cb]  # (c, O)
        for r0 in range(0, m, rows_n):
            rows = slice(r0, min(m, r0 + rows_n))
            coef = post.m_block(rows, cb).div_(den)  # (r, c); m_block returns a fresh tensor
            # Where the candidate itself falls in this row block (for exclude_self).
            inside = ((cb >= rows.start) & (cb < rows.stop)).nonzero().squeeze(1)
            self_rc = (cb[inside] - rows.start, inside)
            g_r, gsq_r = g[rows], g_sq[rows].unsqueeze(1)
            if acquisition == "mlmoc":
                delta = y_cand[s:s + cols_n] - base_c
                part = _l2_change(gsq_r, g_r @ delta.T, (delta * delta).sum(dim=1), coef)
            elif acquisition == "emoc":
                part = torch.zeros_like(coef)
                gb = g_r @ base_c.T  # (r, c)
                bsq = (base_c * base_c).sum(dim=1)
                for k in range(n_out):
                    # δ = e_k − base_j:  g·δ = g_k − g·base_j,  ‖δ‖² = 1 − 2 base_jk + ‖base_j‖².
                    gd = g_r[:, k:k + 1] - gb
                    dsq = 1.0 - 2.0 * base_c[:, k] + bsq
                    part += probs[s:s + cols_n, k] * _l2_change(gsq_r, gd, dsq, coef)
            else:
                delta = y_cand[s:s + cols_n] - base_c
                new = base[rows].unsqueeze(1) + coef.unsqueeze(-1) * delta.unsqueeze(0)  # (r, c, O)
                part = (new.argmax(dim=2) != ref_arg[rows].unsqueeze(1)).to(torch.float64)
            if exclude_self and inside.numel():
                part[self_rc] = 0.0
            out[s:s + cols_n] += part.sum(dim=0)
        if progress is not None:
            progress(min(num_c, s + cols_n))
    if acquisition == "flip":
        out /= max(1, m - 1) if exclude_self else max(1, m)
    return out


def _l2_change(g_sq: torch.Tensor, g_dot_delta: torch.Tensor, delta_sq: torch.Tensor,
               coef: torch.Tensor) -> torch.Tensor:
    """‖g_i + c_ij δ_j‖₂ for a block, from the expanded square (clamped at 0 against round-off)."""
    # In place, one temporary: (c δ² + 2 g·δ)·c + ‖g‖²; the block pass is memory-bound.
    sq = coef * delta_sq
    sq.add_(g_dot_delta, alpha=2.0).mul_(coef).add_(g_sq)
    return sq.clamp_min_(0.0).sqrt_()
