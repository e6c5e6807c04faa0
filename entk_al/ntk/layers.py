"""Per-layer features of the gram engine: from a layer's input and the per-sample gradient at
its output, the per-sample gradient of its parameters, either materialized or in the factored
"exact" form used by Novak et al. 2022 ("Fast finite width NTK", ICML, Sec. 3, structured
derivatives) for linear maps.

Linear-family layers (Linear, Conv1d, Conv2d, Embedding) are written as a grouped linear map
applied at T positions: y[t, g] = W_g a[t, g] (+ b). With A (N, T, g, di) and G (K, N, T, g, do)
the per-sample weight gradient is dW_g(n) = sum_t G[n, t, g]^T A[n, t, g], so

    <dW(x), dW(x')> = sum_{g, t, s} (A[x, t, g] . A[x', s, g]) (G[x, t, g] . G[x', s, g]).   (*)

Conv inputs are unfolded once per tile and layer by :func:`im2col` (a strided copy of the
padded input, faster than ``F.unfold`` on CPU) into (N, g*di, T), viewed as A (N, T, g, di).

Cost model (``linear_costs`` / ``linear_use_exact``), for one n x m pair of tiles of the size the
kernel is actually computed with (``min(tile, N)``), K directions, kk = K^2 (full) or K (diagonal
kinds), P = g di do, in flop-equivalents (flops + BYTE_COST x bytes moved):
    materialized: per-sample grads of the column tile, one bmm (m, do, T) x (m, T, di) per
                  direction and group: 2 K m T P flops, K m P floats written; kernel share:
                  part of one GEMM over all materialized columns, 2 kk n m P flops reading
                  K (n + m) P floats.
    exact (*):    2 n m T^2 g (di + kk do) flops; the (n, T, m, S) products are written,
                  multiplied and reduced: (2 + 4 kk) n m T^2 g floats moved.
    The cheaper one is used. No memory cap forces the factored form (its cost grows like
    N^2 T^2: on a 32x32 ResNet stage it is thousands of times the materialized cost); instead
    the default tile shrinks until a tile's features fit ``gram.FEATURE_TILE_BYTES``.
    CIFAR ResNet-18 (fp32, pNTK): stem and layer1-layer3 materialized, layer4 3x3 convs
    (T = 16, di up to 4608) and the readout factored, at every tile size.
Diagonal tiles of a symmetric kernel compute the long-contraction terms from upper half-blocks
(3/4 of the GEMM flops; :func:`entk_al.ntk.gram.sym_product`).
For T = 1 the exact form is the Hadamard product (A1 A2^T) o (G1 G2^T), always the cheaper one.
Embeddings use the exact form with A = one-hot(ids): A1 . A2 is the id-match indicator.
Norm-layer affine parameters (eval BatchNorm, LayerNorm, GroupNorm) are small and always
materialized: dw(n) = sum_positions xhat * g, db(n) = sum_positions g.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

EXACT_CHUNK_ELEMS = 1 << 24  # n_chunk * m * T^2 * g temporaries of the exact form
FORCE_FORM: str | None = None  # "exact" / "materialized" overrides the cost model (tests)


@dataclass
class Exact:
    """Factored linear-family weight features: A (N, T, g, di) or ids (N, T), G (K, N, T, g, do)."""

    G: torch.Tensor
    A: torch.Tensor | None = None
    ids: torch.Tensor | None = None

    def tensors(self):
        return [t for t in (self.G, self.A, self.ids) if t is not None]

    def to(self, dtype: torch.dtype) -> Exact:
        """The same features with G and A in ``dtype`` (ids unchanged)."""
        return Exact(G=self.G.to(dtype), A=None if self.A is None else self.A.to(dtype), ids=self.ids)

    def rows(self, r) -> Exact:
        """The same features for the samples ``r`` (a slice: views; an int64 index tensor: copies)."""
        if isinstance(r, slice) and r == slice(None):
            return self
        return Exact(G=self.G[:, r], A=None if self.A is None else self.A[r],
                     ids=None if self.ids is None else self.ids[r])

    def detach(self) -> Exact:
        """The same features without autograd history."""
        return Exact(G=self.G.detach(), A=None if self.A is None else self.A.detach(),
                     ids=None if self.ids is None else self.ids.detach())

    @staticmethod
    def cat(es: list[Exact]) -> Exact:
        """The samples of ``es`` one after another."""
        return Exact(G=torch.cat([e.G for e in es], dim=1),
                     A=None if es[0].A is None else torch.cat([e.A for e in es]),
                     ids=None if es[0].ids is None else torch.cat([e.ids for e in es]))

    def wide_t1(self, min_dim: int) -> bool:
        """Dense, one position, input width (times groups) at least ``min_dim``."""
        return (self.A is not None and self.A.shape[1] == 1
                and self.A.shape[2] * self.A.shape[3] >= min_dim)

    def aa(self, other: Exact, rows: slice) -> torch.Tensor:
        """(n_c, T, m, S, g) input inner products (float32 for bfloat16 features)."""
        if self.ids is not None:
            eq = self.ids[rows, :, None, None] == other.ids[None, None]
            return eq.to(_wide(self.G.dtype)).unsqueeze(-1)
        return _f32(torch.einsum("ntgi,msgi->ntmsg", self.A[rows], other.A))

    def pair(self, other: Exact, full: bool) -> torch.Tensor:
        """Kernel block (K, K, n, m) if ``full`` else (K, n, m) of this layer between two tiles,
        by (*) of the module docstring; bfloat16 features give a float32 block.

        Args:
            other: the column tile's features of the same layer.
            full: True for all K x K direction pairs.
        """
        K, n, T, g, _ = self.G.shape
        m, S = other.G.shape[1], other.G.shape[2]
        if T == 1 and S == 1 and self.ids is None:
            return _pair_t1(self.A[:, 0], self.G[:, :, 0], other.A[:, 0], other.G[:, :, 0], full)
        out = self.G.new_zeros((K, K, n, m) if full else (K, n, m), dtype=_wide(self.G.dtype))
        step = max(1, EXACT_CHUNK_ELEMS // max(1, m * T * S * g))
        for r0 in range(0, n, step):
            r = slice(r0, min(n, r0 + step))
            aa = self.aa(other, r)
            for k in range(K):
                for j in (range(K) if full else (k,)):
                    gg = _f32(torch.einsum("ntgo,msgo->ntmsg", self.G[k, r], other.G[j]))
                    v = gg.mul_(aa).sum(dim=(1, 3, 4))
                    if full:
                        out[k, j, r] = v
                    else:
                        out[k, r] = v
        return out


def _wide(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float32 for bfloat16, else the dtype itself."""
    return torch.float32 if dtype == torch.bfloat16 else dtype


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype == torch.bfloat16 else t


def _pair_t1(a1, g1, a2, g2, full):
    """a (N, g, di), g (K, N, g, do): sum_g (a1 a2^T) o (g1 g2^T)."""
    if a1.shape[1] == 1:
        aa = _f32(a1[:, 0] @ a2[:, 0].T)
        if g1.shape[0] == 1:  # K = 1: two mm and a Hadamard product
            gg = _f32(g1[0, :, 0] @ g2[0, :, 0].T)
            gg.mul_(aa)
            return gg.view((1, 1) + gg.shape if full else (1,) + gg.shape)
        if full:
            gg = torch.einsum("kno,lmo->klnm", g1[:, :, 0], g2[:, :, 0])
        else:
            gg = torch.bmm(g1[:, :, 0], g2[:, :, 0].transpose(1, 2))
        return _f32(gg).mul_(aa)
    aa = _f32(torch.einsum("ngi,mgi->nmg", a1, a2))
    g1, g2 = _f32(g1), _f32(g2)
    if full:
        return torch.einsum("kngo,lmgo,nmg->klnm", g1, g2, aa)
    return torch.einsum("kngo,kmgo,nmg->knm", g1, g2, aa)


# ---------------------------------------------------------------- linear family geometry
def linear_geometry(mod: nn.Module, inp: torch.Tensor, G: torch.Tensor):
    """Return (A (N, T, g, di) or None, ids (N, T) or None, G (K, N, T, g, do)).

    Args:
        mod: a Linear, Conv1d, Conv2d or Embedding layer.
        inp: the layer's input for N samples (token ids for an Embedding).
        G: (K, N, *out_shape) gradient of the directions V·f at the layer's output.
    """
    K, N = G.shape[:2]
    if isinstance(mod, nn.Linear):
        A = inp.reshape(N, -1, 1, inp.shape[-1])
        return A, None, G.reshape(K, N, -1, 1, G.shape[-1])
    if isinstance(mod, nn.Embedding):
        ids = inp.reshape(N, -1)
        Gf = G.reshape(K, N, -1, 1, G.shape[-1])
        if mod.padding_idx is not None:
            # the padding row receives no gradient (nn.Embedding docs)
            Gf = Gf * (ids != mod.padding_idx).to(G.dtype)[None, :, :, None, None]
        return None, ids, Gf
    # Conv1d / Conv2d via unfold (im2col); Conv1d as a 1 x L image
    x = inp if isinstance(mod, nn.Conv2d) else inp.unsqueeze(2)
    two = isinstance(mod, nn.Conv2d)
    as2 = (lambda v, one=1: tuple(v)) if two else (lambda v, one=1: (one, v[0]))
    padding = mod.padding
    if isinstance(padding, str) or mod.padding_mode != "zeros":
        pad = mod._reversed_padding_repeated_twice
        if isinstance(mod, nn.Conv1d):
            pad = list(pad) + [0, 0]
        mode = "constant" if mod.padding_mode == "zeros" else mod.padding_mode
        x = F.pad(x, pad, mode=mode) if mode != "constant" else F.pad(x, pad)
        padding = (0,) * (2 if isinstance(mod, nn.Conv2d) else 1)
    cols = im2col(x, as2(mod.kernel_size), as2(mod.dilation), as2(padding, 0),
                  as2(mod.stride))  # (N, C*kh*kw, L)
    g = mod.groups
    L = cols.shape[-1]
    A = cols.reshape(N, g, -1, L).permute(0, 3, 1, 2)
    Gf = G.reshape(K, N, g, -1, L).permute(0, 1, 4, 2, 3)
    return A, None, Gf


def im2col(x: torch.Tensor, kernel, dilation, padding, stride) -> torch.Tensor:
    """Same result as ``F.unfold`` (N, C*kh*kw, L), built as one strided copy of the zero-padded
    input: a (N, C, kh, kw, Ho, Wo) ``as_strided`` view reshaped to (N, C*kh*kw, Ho*Wo).
    On CPU this is 2-4x faster than ``F.unfold`` (im2col kernel) for the benchmark shapes.

    Args:
        x: (N, C, H, W) input.
        kernel: (kh, kw) kernel size.
        dilation: (dh, dw) dilation.
        padding: (ph, pw) zero padding.
        stride: (sh, sw) stride.
    """
    N, C, H, W = x.shape
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = kernel, dilation, padding, stride
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))
    x = x.contiguous()
    Hp, Wp = H + 2 * ph, W + 2 * pw
    Ho = (Hp - dh * (kh - 1) - 1) // sh + 1
    Wo = (Wp - dw * (kw - 1) - 1) // sw + 1
    sN, sC, sH, sW = x.stride()
    v = x.as_strided((N, C, kh, kw, Ho, Wo), (sN, sC, dh * sH, dw * sW, sh * sH, sw * sW))
    return v.reshape(N, C * kh * kw, Ho * Wo)


BYTE_COST = 8.0  # flop-equivalents per byte moved (CPU: ~100 GFLOP/s vs ~10 GB/s streamed)


def linear_costs(T, g, di, do, K, n, m, itemsize, full, n_emb=None) -> tuple[float, float]:
    """(materialized, exact) cost of one layer for one n x m pair of tiles, in flop-equivalents
    (flops + BYTE_COST * bytes moved), as in the module docstring. The per-sample gradients of
    the column tile (m samples) are charged to the pair: with square tiles every pair needs
    about one tile's features computed.

    Args:
        T: positions per sample at which the layer is applied (1 for Linear, H_out·W_out for
            Conv2d).
        g: groups.
        di: inputs per group.
        do: outputs per group.
        K: output directions.
        n: row-tile size.
        m: column-tile size.
        itemsize: bytes per element of the model dtype.
        full: True when the K x K block is needed.
        n_emb: vocabulary size of an Embedding (its exact form compares ids), else None.
    """
    kk = K * K if full else K
    if n_emb is not None:  # embedding: A is one-hot of size n_emb, its products are id matches
        P = g * n_emb * do
        psg = K * m * T * do  # index_add of G rows
        di_ex = 1
    else:
        P = g * di * do
        psg = 2 * K * m * T * g * di * do  # one bmm per sample, direction and group
        di_ex = di
    mat = (psg + BYTE_COST * itemsize * K * m * P  # write the per-sample gradients
           + 2 * kk * n * m * P + BYTE_COST * itemsize * K * (n + m) * P)  # GEMM, its operands
    el = n * m * T * T * g  # entries of the (n, T, m, S) products, per direction pair
    exact = (2 * el * (di_ex + kk * do)
             + BYTE_COST * itemsize * el * (2 + 4 * kk))  # write aa, gg; multiply; reduce
    return mat, exact


def linear_use_exact(T, g, di, do, K, n, m, itemsize, full, n_emb=None) -> bool:
    """Cost model of the module docstring for one n x m pair of tiles: True for the factored form.

    Always the factored form for single-position (T = 1) layers other than Embedding;
    ``FORCE_FORM`` (tests) overrides the choice.
    Arguments T, g, di, do, K, n, m, itemsize, full and n_emb are those of :func:`linear_costs`.
    """
    if FORCE_FORM is not None:
        return FORCE_FORM == "exact"
    if T == 1 and n_emb is None:
        return True
    mat, exact = linear_costs(T, g, di, do, K, n, m, itemsize, full, n_emb)
    return exact < mat


def linear_materialize(A, ids, G, n_emb, out=None):
    """Per-sample weight gradients (K, N, g*do*di) in the weight's flattening order, written
    into ``out`` (a (K, N, P) view, e.g. a column slice of the tile's feature buffer) if given.

    Dense case: one ``bmm`` (N, do, T) x (N, T, di) per direction and group, on the strided
    views of G and A (no einsum re-layout; A is usually the transposed view of im2col output).

    Args:
        A: (N, T, g, di) layer inputs, or None for an Embedding.
        ids: (N, T) int64 token ids of an Embedding, else None.
        G: (K, N, T, g, do) output gradients.
        n_emb: vocabulary size of an Embedding (the width of its one-hot A), else None.
        out: optional (K, N, P) destination view.
    """
    K, N, T, g, do = G.shape
    if ids is not None:
        res = G.new_zeros(K, N * n_emb, do)
        rows = (torch.arange(N, device=ids.device)[:, None] * n_emb + ids).reshape(-1)
        res.index_add_(1, rows, G.reshape(K, N * T, do))
        res = res.reshape(K, N, n_emb * do)
        if out is None:
            return res
        out.copy_(res)
        return out
    di = A.shape[-1]
    if out is None:
        out = G.new_empty(K, N, g * do * di)
    o5 = out.view(K, N, g, do, di)
    for k in range(K):
        for gi in range(g):
            # straight into the strided buffer view: a temporary plus copy cost as much as
            # the bmm itself on CPU (fresh pages for every large temporary)
            torch.bmm(G[k, :, :, gi].transpose(1, 2), A[:, :, gi], out=o5[k, :, gi])
    return out


#: Which of the three exact ways of materializing a Conv2d's per-sample weight gradients
#: :func:`conv_form` picks, on the CPU (thresholds measured with one thread, CPU time, N = 32 and
#: 64, shapes of ResNet-18-CIFAR and the WideResNets; table in docs/ntk_bench.md):
#:   "grouped"  the weight gradient of one convolution with the batch folded into groups
#:              (:func:`conv_grouped_materialize`): as fast as the batched weight gradient for
#:              C_in <= 64, C_out <= 128 and >= 256 output positions; 3-8x slower than the other
#:              forms for wide layers (mkldnn runs one small kernel per group there).
#:   "shift"    nine bmm on shifted views of the padded input (:func:`conv_shift_materialize`):
#:              stride 1, C_in >= 32 and C_in x positions >= 16384 (1.2-1.5x faster than
#:              im2col for 128-640 channels at 8x8 / 16x16, 2x at 32x32; slower at 128 x 8x8).
#:   "im2col"   one strided copy of the input and one bmm per sample (:func:`linear_materialize`).
#: On CUDA only "shift" (from 1024 positions and 32 channels, the rule measured on an H200) and
#: "im2col" are used: the grouped form was not measured there.
GROUPED_MAX_CIN = 64
GROUPED_MAX_COUT = 128
GROUPED_MIN_T = 256
SHIFT_MIN_C = 32
SHIFT_MIN_CT = 16384
SHIFT_MIN_T_CUDA = 1024
FORCE_CONV: str | None = None  # "grouped" / "shift" / "im2col" where the geometry allows (tests)


def _plain_conv2d(mod: nn.Module, inp: torch.Tensor) -> bool:
    """A plain ``nn.Conv2d`` with one group, zero padding given as numbers, on a 4-d input."""
    return (type(mod) is nn.Conv2d and mod.groups == 1 and mod.padding_mode == "zeros"
            and not isinstance(mod.padding, str) and inp.dim() == 4)


def _out_hw(mod: nn.Conv2d, inp: torch.Tensor) -> tuple[int, int]:
    (kh, kw), (ph, pw), (sh, sw), (dh, dw) = mod.kernel_size, mod.padding, mod.stride, mod.dilation
    return ((inp.shape[-2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1,
            (inp.shape[-1] + 2 * pw - dw * (kw - 1) - 1) // sw + 1)


def shift_ok(mod: nn.Module, inp: torch.Tensor, thresholds: bool = True) -> bool:
    """True when :func:`conv_shift_materialize` applies to this Conv2d call (and, with
    ``thresholds``, pays off by the rule above).

    Args:
        mod: the layer (only a plain ``nn.Conv2d`` with stride 1, dilation 1, one group and
            zero padding qualifies).
        inp: (N, C, H, W) its input.
        thresholds: also require the size rule (:data:`SHIFT_MIN_C`, :data:`SHIFT_MIN_CT`; on
            CUDA :data:`SHIFT_MIN_T_CUDA` positions).
    """
    if not _plain_conv2d(mod, inp) or tuple(mod.stride) != (1, 1) or tuple(mod.dilation) != (1, 1):
        return False
    if not thresholds:
        return True
    ho, wo = _out_hw(mod, inp)
    if inp.is_cuda:
        return inp.shape[1] >= SHIFT_MIN_C and ho * wo >= SHIFT_MIN_T_CUDA
    return inp.shape[1] >= SHIFT_MIN_C and inp.shape[1] * ho * wo >= SHIFT_MIN_CT


def grouped_ok(mod: nn.Module, inp: torch.Tensor, thresholds: bool = True) -> bool:
    """True when :func:`conv_grouped_materialize` applies to this Conv2d call (and, with
    ``thresholds``, pays off: CPU only, C_in <= :data:`GROUPED_MAX_CIN`, C_out <=
    :data:`GROUPED_MAX_COUT`, at least :data:`GROUPED_MIN_T` output positions).

    Args:
        mod: the layer (a plain ``nn.Conv2d``: one group, zero padding given as numbers).
        inp: (N, C, H, W) its input.
        thresholds: also require the size rule and a CPU tensor.
    """
    if not _plain_conv2d(mod, inp):
        return False
    if not thresholds:
        return True
    ho, wo = _out_hw(mod, inp)
    return (not inp.is_cuda and mod.in_channels <= GROUPED_MAX_CIN
            and mod.out_channels <= GROUPED_MAX_COUT and ho * wo >= GROUPED_MIN_T)


def conv_form(mod: nn.Module, inp: torch.Tensor) -> str:
    """How to materialize this layer's per-sample weight gradients: ``"grouped"``, ``"shift"``
    or ``"im2col"`` (the rule above; :data:`FORCE_CONV` overrides it where the geometry allows).
    Every tile of a layer gets the same form for the same input shape and device, so the
    columns of a layer are in the same order in every tile.

    Args:
        mod: a linear-family layer.
        inp: its input for the tile.
    """
    if FORCE_CONV == "grouped" and grouped_ok(mod, inp, thresholds=False):
        return "grouped"
    if FORCE_CONV == "shift" and shift_ok(mod, inp, thresholds=False):
        return "shift"
    if FORCE_CONV is not None:
        return "im2col"
    if grouped_ok(mod, inp):
        return "grouped"
    return "shift" if shift_ok(mod, inp) else "im2col"


def conv_grouped_materialize(mod: nn.Conv2d, inp: torch.Tensor, G: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients of a plain Conv2d as the weight gradient of one convolution
    whose groups are the samples: input (1, N*C, H, W), output gradient (1, N*O, Ho, Wo),
    groups = N, gives (N*O, C, kh, kw) = dW for every sample, in the weight's own order.

    Args:
        mod: the Conv2d (see :func:`grouped_ok`).
        inp: (N, C, H, W) layer input.
        G: (K, N, O, Ho, Wo) output gradients.
        out: (K, N, O*C*kh*kw) destination view.
    """
    K, N, n_out, Ho, Wo = G.shape
    n_in = inp.shape[1]
    xg = inp.reshape(1, N * n_in, *inp.shape[2:])
    # only the weight's shape is read for a weight-only gradient: a stride-0 stand-in
    w_like = inp.new_empty(1).expand(N * n_out, n_in, *mod.kernel_size)
    for k in range(K):
        dw = torch.ops.aten.convolution_backward(
            G[k].reshape(1, N * n_out, Ho, Wo), xg, w_like, None, list(mod.stride), list(mod.padding),
            list(mod.dilation), False, [0, 0], N, [False, True, False])[1]
        out[k].copy_(dw.view(N, -1))
    return out


def conv_shift_materialize(mod: nn.Conv2d, inp: torch.Tensor, G: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients of a stride-1, undilated, ungrouped Conv2d without im2col.

    dW[n, o, c, a, b] = Σ_{h,w} G[n, o, h, w] · Xp[n, c, h + a, w + b] (Xp the zero-padded input).
    With Xp flattened row-major (width Wp, one extra zero row at the bottom), the window of
    kernel offset (a, b) is the contiguous slice starting at a·Wp + b of length Ho·Wp, whose
    columns w ≥ Wo wrap into the next row; G padded with zeros to width Wp cancels them. So
    each offset is one ``bmm`` (N, O, Ho·Wp) x (N, Ho·Wp, C) on strided views, written straight
    into ``out``. Columns are in (a, b, o, c) order, not the weight's (o, c, a, b): a Gram only
    needs the same order in every tile, and every tile of a layer takes the same path.

    Args:
        mod: the Conv2d (see :func:`shift_ok`).
        inp: (N, C, H, W) layer input.
        G: (K, N, O, Ho, Wo) output gradients.
        out: (K, N, O*C*kh*kw) destination view.
    """
    K, N, n_out, Ho, Wo = G.shape
    n_in = inp.shape[1]
    (kh, kw), (ph, pw) = mod.kernel_size, mod.padding
    xp = F.pad(inp, (pw, pw, ph, ph + 1))  # the extra row keeps the last window in bounds
    wp = xp.shape[-1]
    xf = xp.reshape(N, n_in, -1)
    gf = F.pad(G, (0, wp - Wo)).reshape(K, N, n_out, Ho * wp)
    o6 = out.view(K, N, kh, kw, n_out, n_in)
    span = Ho * wp
    for k in range(K):
        for a in range(kh):
            for b in range(kw):
                off = a * wp + b
                torch.bmm(gf[k], xf[:, :, off:off + span].transpose(1, 2), out=o6[k, :, a, b])
    return out


def linear_summed_weight(feat: Exact, mod) -> torch.Tensor:
    """Sum over samples of the direction-0 weight gradient (for verification), weight-shaped:
    sum_{n, t} G[n, t, g]^T A[n, t, g], one GEMM per group over the flattened (n, t) axis
    (no per-sample materialization).

    Args:
        feat: factored features of the layer for N samples.
        mod: the layer (gives the weight's shape).
    """
    G0 = feat.G[0]  # (N, T, g, do)
    if feat.ids is not None:
        w = linear_materialize(None, feat.ids, feat.G[:1], mod.num_embeddings)
        return w.sum(1).reshape(mod.weight.shape)
    N, T, g, do = G0.shape
    A = feat.A
    w = torch.stack([G0[:, :, gi].reshape(N * T, do).T @ A[:, :, gi].reshape(N * T, -1)
                     for gi in range(g)])  # (g, do, di)
    return w.reshape(mod.weight.shape)


# ---------------------------------------------------------------- norm layers
def norm_xhat(mod: nn.Module, x: torch.Tensor):
    """Normalized input and the dims to sum over (all but sample and parameter dims).

    Args:
        mod: a BatchNorm, LayerNorm or GroupNorm layer in eval mode.
        x: (N, C, ...) the layer's input.
    """
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        xhat = (x - mod.running_mean.view(shape)) * torch.rsqrt(mod.running_var.view(shape) + mod.eps)
        return xhat, tuple(range(2, x.dim()))
    if isinstance(mod, nn.GroupNorm):
        return F.group_norm(x, mod.num_groups, None, None, mod.eps), tuple(range(2, x.dim()))
    ns = tuple(mod.normalized_shape)
    xhat = F.layer_norm(x, ns, None, None, mod.eps)
    return xhat, tuple(range(1, x.dim() - len(ns)))


def norm_materialize(mod, x, G, names):
    """Per-sample [dw, db] (K, N, P) for the requested param names (eval-mode statistics).

    Args:
        mod: the normalization layer.
        x: (N, C, ...) its input.
        G: (K, N, C, ...) gradient of V·f at its output.
        names: parameter names to return (``weight`` and/or ``bias``), in the order given.
    """
    K, N = G.shape[:2]
    xhat, dims = norm_xhat(mod, x)
    gd = tuple(d + 1 for d in dims)

    def red(t):  # sum(()) would reduce over every dim
        return (t.sum(gd) if gd else t).reshape(K, N, -1)

    return [red(G * xhat.unsqueeze(0)) if nm == "weight" else red(G) for nm in names]


def bn_fold_weight(lin: nn.Module, bn: nn.Module, dw: torch.Tensor, order: str, dbeta: torch.Tensor,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample BatchNorm weight gradients folded into the materialized weight gradients of
    the layer whose output z the BatchNorm normalizes (eval mode: y = gamma (z - mu) rstd + beta,
    rstd = 1/sqrt(running_var + eps)).

    With G the gradient at the BatchNorm output, z_c = W_c . a_t + b_c at position t and the
    layer's gradient dW_c = sum_t gamma_c rstd_c G[c, t] a_t (the chain rule through y):

        dgamma_c = sum_t G[c, t] (z[c, t] - mu_c) rstd_c
                 = (W_c . dW_c) / gamma_c + rstd_c (b_c - mu_c) dbeta_c,     dbeta_c = sum_t G[c, t],

    one pass over the layer's N*P columns instead of several over the N*C*T activations. Exact
    for gamma_c != 0; the plan folds only when every gamma_c is non-zero and the probe's summed
    gradient matched autograd's (gram.build_plan).

    Args:
        lin: the ungrouped Linear / Conv1d / Conv2d.
        bn: the BatchNorm (running statistics, eval mode).
        dw: (K, N, P) the layer's per-sample weight gradients, columns in ``order``.
        order: ``"weight"`` (the weight's own flattening, (O, ...)) or ``"shift"`` ((kh, kw, O, C),
            :func:`conv_shift_materialize`).
        dbeta: (K, N, O) the per-sample BatchNorm bias gradients.
        out: optional (K, N, O) destination.

    Returns:
        (K, N, O) per-sample gradients of the BatchNorm weight.
    """
    K, N = dw.shape[:2]
    W = lin.weight.detach()
    n_out = W.shape[0]
    if order == "shift":
        w = W.permute(2, 3, 0, 1).reshape(-1, n_out, W.shape[1])  # (kh*kw, O, C)
        d = torch.einsum("knpoc,poc->kno", dw.view(K, N, w.shape[0], n_out, -1), w)
    else:
        d = torch.einsum("knoj,oj->kno", dw.view(K, N, n_out, -1), W.reshape(n_out, -1))
    rstd = torch.rsqrt(bn.running_var + bn.eps)
    shift = -bn.running_mean if lin.bias is None else lin.bias.detach() - bn.running_mean
    d.div_(bn.weight.detach()).addcmul_(dbeta.reshape(K, N, n_out), rstd * shift)
    if out is None:
        return d
    return out.copy_(d)


SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding, nn.modules.batchnorm._BatchNorm,
             nn.LayerNorm, nn.GroupNorm)


def handler_kind(mod: nn.Module) -> str | None:
    """'linear', 'norm' or None (unsupported -> torch.func fallback).

    Args:
        mod: a leaf module that owns trainable parameters.
    """
    if type(mod) in (nn.Linear, nn.Conv1d, nn.Conv2d):
        return "linear"
    if type(mod) is nn.Embedding:
        if mod.max_norm is not None or mod.scale_grad_by_freq:
            return None  # forward renormalizes weights in place / rescales gradients
        return "linear"
    if type(mod) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        if mod.running_mean is None or not mod.track_running_stats:
            return None
        return "norm"
    if type(mod) in (nn.LayerNorm, nn.GroupNorm):
        return "norm"
    return None
