"""Gram engine: layer-wise NTK from one batched forward + K backward passes per tile.

In eval mode samples are independent, so the gradient of sum_n V_k f(x_n) at a layer's output,
restricted to sample n, is sample n's own gradient. Forward hooks save each supported layer's
input and output; ``autograd.grad`` w.r.t. the outputs gives G. Each layer's kernel share is
built from (input, G) by :mod:`.layers`; the shares are summed (the NTK is a sum over
parameters, Jacot et al. 2018 eq. 3; layer-wise structure as in Novak et al. 2022, Sec. 3).
Parameters of other modules, of modules called more than once (weight sharing), tied across
modules, or whose reconstructed gradient does not match autograd's on a probe batch, go to the
torch.func per-sample-gradient fallback of :mod:`.jacobian`, so the result stays exact.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

from . import jacobian
from . import layers as L
from .tiling import nbytes, tiled_kernel

DEFAULT_TILE = 1024  # samples per tile, unless the features need a smaller one:
FEATURE_TILE_BYTES = 3 << 29  # 1.5 GiB of features per tile (two tiles + column cache live)
MIN_TILE = 16
PROBE_SAMPLES = 4


@dataclass
class LayerPlan:
    mod: nn.Module
    kind: str  # "linear" | "norm"
    names: list[str]  # trainable direct parameter names, e.g. ["weight", "bias"]
    exact: bool = False  # linear weight in factored form (else materialized)
    fold_bias: bool = False  # bias as an extra all-ones input column of the weight
    dims: tuple | None = None  # linear-family geometry (T, g, di, do, n_emb) for the cost model


def _mat_sizes(lp: LayerPlan) -> list[int]:
    """Per-sample, per-direction widths of the layer's materialized blocks, in the order
    :func:`_layer_tensors` writes them."""
    if lp.kind == "norm":
        return [getattr(lp.mod, n).numel() for n in lp.names]
    sizes = []
    if "weight" in lp.names and not lp.exact:
        sizes.append(lp.mod.weight.numel())
    if "bias" in lp.names and not lp.fold_bias:
        sizes.append(lp.mod.bias.numel())
    return sizes


@dataclass
class Plan:
    layers: list[LayerPlan] = field(default_factory=list)
    fallback: dict[str, torch.Tensor] = field(default_factory=dict)

    def mat_width(self) -> int:
        """Columns of a tile's materialized feature buffer (K, n, width)."""
        return (sum(sum(_mat_sizes(lp)) for lp in self.layers)
                + sum(p.numel() for p in self.fallback.values()))

    def bytes_per_sample(self, K: int, itemsize: int) -> int:
        """Feature bytes one sample adds to a tile (materialized columns + factored A and G)."""
        floats = K * self.mat_width()
        for lp in self.layers:
            if lp.exact and lp.dims is not None:
                T, g, di, do, n_emb = lp.dims
                floats += T * g * ((1 if n_emb is not None else di + lp.fold_bias) + K * do)
        return floats * itemsize

    def choose_forms(self, K: int, n: int, m: int, itemsize: int, full: bool) -> None:
        """Per linear layer, the cheaper exact form for n x m tile pairs (layers.linear_costs)."""
        for lp in self.layers:
            if lp.dims is None:
                continue
            T, g, di, do, n_emb = lp.dims
            has_b = "bias" in lp.names
            lp.exact = L.linear_use_exact(T, g, di + has_b, do, K, n, m, itemsize, full, n_emb)
            # exact form: bias as a ones column of A (one Hadamard term instead of two);
            # materialized: the bias gradient is the position-sum of G (no copy of A)
            lp.fold_bias = has_b and lp.exact


def _run_hooked(model, mods, x, V, with_params=()):
    """Forward x with hooks on ``mods``; return (calls, inputs, G list (K, N, *out), param grads)."""
    calls, saved = defaultdict(int), {}

    def make(i):
        def hook(mod, args, out):
            # a call without a positional input (kwargs only) is not understood: mark it
            # as shared so the probe routes the module to the fallback
            calls[i] += 1 if args and isinstance(out, torch.Tensor) else 2
            if not args or not isinstance(out, torch.Tensor):
                return None
            saved[i] = (args[0].detach(), out)
            # downstream in-place ops (ReLU(inplace=True), +=) must not rebase ``out``
            return out.clone()
        return hook

    handles = [m.register_forward_hook(make(i)) for i, m in enumerate(mods)]
    try:
        f = model(x)
    finally:
        for h in handles:
            h.remove()
    f = f.reshape(x.shape[0], -1)
    idx = [i for i in range(len(mods)) if i in saved and saved[i][1].requires_grad]
    outs = [saved[i][1] for i in idx]
    K = V.shape[0]
    Gs = {i: [] for i in idx}
    pgrads = None
    for k in range(K):
        targets = outs + list(with_params) if k == 0 else outs
        gr = torch.autograd.grad((f @ V[k]).sum(), targets, retain_graph=k < K - 1,
                                 allow_unused=True)
        for i, g in zip(idx, gr):
            Gs[i].append(torch.zeros_like(saved[i][1]) if g is None else g)
        if k == 0:
            pgrads = gr[len(outs):]
    G = {i: Gs[i][0].unsqueeze(0) if K == 1 else torch.stack(Gs[i]) for i in idx}
    inputs = {i: saved[i][0] for i in saved}
    return calls, inputs, G, pgrads


def _layer_tensors(lp: LayerPlan, inp, G, outs):
    """Write the materialized per-sample grads into ``outs`` (views (K, N, P_i), sizes from
    :func:`_mat_sizes`); return the Exact feature or None."""
    if lp.kind == "norm":
        for o, t in zip(outs, L.norm_materialize(lp.mod, inp, G, lp.names)):
            o.copy_(t)
        return None
    if "weight" in lp.names and not lp.exact and L.shift_ok(lp.mod, inp):  # no im2col copy
        outs = iter(outs)
        L.conv_shift_materialize(lp.mod, inp, G, next(outs))
        if "bias" in lp.names:
            next(outs).copy_(G.sum((-2, -1)))
        return None
    A, ids, Gf = L.linear_geometry(lp.mod, inp, G)
    outs, ex = iter(outs), None
    if "weight" in lp.names:
        if lp.fold_bias:
            A = torch.cat([A, A.new_ones(A.shape[:-1] + (1,))], dim=-1)
        if lp.exact:
            ex = L.Exact(G=Gf, A=A, ids=ids)
        else:
            n_emb = lp.mod.num_embeddings if ids is not None else None
            L.linear_materialize(A, ids, Gf, n_emb, out=next(outs))
    if "bias" in lp.names and not lp.fold_bias:
        next(outs).copy_(Gf.sum(2).reshape(Gf.shape[0], Gf.shape[1], -1))
    return ex


def _summed(lp: LayerPlan, inp, G):
    """Direction-0 gradients summed over samples, parameter-shaped (for verification), and the
    linear-family geometry (T, g, di, do, n_emb) for the cost model (None for norms or when
    there is no trainable weight)."""
    if lp.kind == "norm":
        ms = L.norm_materialize(lp.mod, inp, G[:1], lp.names)
        return {n: m.sum(1)[0].reshape(getattr(lp.mod, n).shape)
                for n, m in zip(lp.names, ms)}, None
    A, ids, Gf = L.linear_geometry(lp.mod, inp, G[:1])
    out, dims = {}, None
    if "weight" in lp.names:
        out["weight"] = L.linear_summed_weight(L.Exact(G=Gf, A=A, ids=ids), lp.mod)
        _, _, T, g, do = Gf.shape
        n_emb = lp.mod.num_embeddings if ids is not None else None
        dims = (T, g, A.shape[-1] if A is not None else 1, do, n_emb)
    if "bias" in lp.names:
        out["bias"] = Gf[0].sum((0, 1)).reshape(lp.mod.bias.shape)
    return out, dims


def build_plan(model: nn.Module, params: dict, x: torch.Tensor, V: torch.Tensor, n: int,
               full: bool, m: int | None = None) -> Plan:
    """Which layers the engine handles (and in which form, for n x m tile pairs; m = n if None)
    and which parameters go to the torch.func fallback.

    Args:
        model: the network, in eval mode.
        params: name -> trainable parameter (from :func:`~entk_al.ntk.common.trainable`).
        x: (N, *F) sample inputs used to trace the layers' input/output geometry.
        V: (K, O) output directions (:func:`~entk_al.ntk.common.directions`).
        n: row-tile size.
        full: True when the K x K block is needed, False for the diagonal only (it changes each
            layer's cost).
        m: column-tile size (n if None).
    """
    name_of = {id(p): n for n, p in params.items()}
    owners = defaultdict(list)
    for mod in model.modules():
        for _pn, p in mod.named_parameters(recurse=False):
            if id(p) in name_of:
                owners[id(p)].append(mod)
    covered: set[int] = set()
    cands = []
    for mod in model.modules():
        kind = L.handler_kind(mod)
        direct = [(pn, p) for pn, p in mod.named_parameters(recurse=False) if id(p) in name_of]
        if kind is None or not direct or any(len(owners[id(p)]) != 1 for _, p in direct):
            continue
        cands.append(LayerPlan(mod, kind, [pn for pn, _ in direct]))
    if not cands:  # nothing the engine handles (e.g. bare nn.Parameters used in forward)
        plan = Plan()
        plan.fallback = dict(params)
        return plan
    # probe: call counts (weight sharing) and gradient reconstruction check
    probe = x[:PROBE_SAMPLES]
    cparams = [getattr(lp.mod, n) for lp in cands for n in lp.names]
    calls, inputs, G, pgrads = _run_hooked(model, [lp.mod for lp in cands], probe, V[:1], cparams)
    pg = iter(pgrads)
    plan = Plan()
    tol = 1e-8 if V.dtype == torch.float64 else 1e-3
    checked = []  # (layer plan, geometry dims or None, [(summed, autograd reference)])
    for i, lp in enumerate(cands):
        ref = {n: next(pg) for n in lp.names}
        if calls[i] != 1 or i not in G:
            continue
        try:
            summed, dims = _summed(lp, inputs[i], G[i])
        except RuntimeError:  # unexpected geometry: let torch.func handle it
            continue
        sr = [(s, ref[n] if ref[n] is not None else torch.zeros_like(s))
              for n, s in summed.items()]
        if all(s.shape == r.shape for s, r in sr):
            checked.append((lp, dims, sr))
    # per-parameter max errors and scales as 0-d tensors, read back with a single .tolist()
    # (a cat + segment_reduce over all parameters was measured slower: segment_reduce is serial)
    stats = []
    for _, _, sr in checked:
        for s, r in sr:
            stats += [(s - r).abs().amax(), torch.maximum(s.abs().amax(), r.abs().amax())]
    vals = torch.stack(stats).tolist() if stats else []
    good = iter(e <= tol * max(sc, 1e-30) for e, sc in zip(vals[::2], vals[1::2]))
    for lp, dims, sr in checked:
        if not all([next(good) for _ in sr]):  # noqa: C419 (advance past every check)  # noqa: C419 (consume every check)
            continue
        lp.dims = dims
        plan.layers.append(lp)
        covered.update(id(getattr(lp.mod, nm)) for nm in lp.names)
    plan.fallback = {nm: p for nm, p in params.items() if id(p) not in covered}
    plan.choose_forms(V.shape[0], n, n if m is None else m, V.element_size(), full)
    return plan


class GramFeatures:
    """Features of one tile: every materialized block in one buffer ``mat`` (K, N, P_mat), so
    that their kernel share is one GEMM, and a list of Exact (factored) layers.

    Args:
        mat: (K, N, P_mat) buffer of the materialized per-sample gradients, or None when no layer is
            materialized.
        exacts: list of :class:`~entk_al.ntk.layers.Exact` factored layer features of the same tile.
    """

    def __init__(self, mat, exacts):
        self.mat, self.exacts = mat, exacts

    def __len__(self) -> int:
        return self.mat.shape[1] if self.mat is not None else self.exacts[0].G.shape[1]

    def tensors(self):
        ts = [self.mat] if self.mat is not None else []
        for e in self.exacts:
            ts += e.tensors()
        return ts

    def rows(self, index) -> "GramFeatures":
        """The features of samples ``index`` (a slice: views; an int64 index tensor: copies)."""
        if isinstance(index, slice) and index == slice(None):
            return self
        return GramFeatures(None if self.mat is None else self.mat[:, index], [e.rows(index) for e in self.exacts])

    def detach(self) -> "GramFeatures":
        """The same features without autograd history."""
        return GramFeatures(None if self.mat is None else self.mat.detach(), [e.detach() for e in self.exacts])

    @staticmethod
    def cat(fs: list["GramFeatures"]) -> "GramFeatures":
        """The samples of ``fs`` one after another (features of one plan)."""
        mat = None if fs[0].mat is None else torch.cat([f.mat for f in fs], dim=1)
        return GramFeatures(mat, [L.Exact.cat(list(es)) for es in zip(*(f.exacts for f in fs))])


def tile_features(plan: Plan, model, x, V, chunk_size) -> GramFeatures:
    """Per-sample features of one tile of inputs, in the form ``plan`` chose for each layer.

    Args:
        plan: the layer plan from :func:`build_plan`.
        model: the network, in eval mode.
        x: (n, *F) inputs of the tile, on the model's device and dtype.
        V: (K, O) output directions.
        chunk_size: vmap chunk size for parameters handled by the torch.func fallback, or None.
    """
    K, n = V.shape[0], x.shape[0]
    width = plan.mat_width()
    mat = V.new_empty(K, n, width) if width else None
    exacts, off = [], 0

    def take(size):
        nonlocal off
        off += size
        return mat[:, :, off - size:off]

    if plan.layers:
        _, inputs, G, _ = _run_hooked(model, [lp.mod for lp in plan.layers], x, V)
        for i, lp in enumerate(plan.layers):
            outs = [take(sz) for sz in _mat_sizes(lp)]
            if i not in G:  # output does not depend on the parameters for this input
                for o in outs:
                    o.zero_()
                continue
            ex = _layer_tensors(lp, inputs.pop(i), G.pop(i), outs)
            if ex is not None:
                exacts.append(ex)
        del inputs, G
    if plan.fallback:
        take(sum(p.numel() for p in plan.fallback.values())).copy_(
            jacobian.per_sample_grads(model, plan.fallback, x, V, chunk_size))
    return GramFeatures(mat, exacts)


SYM_MIN_ROWS = 512  # diagonal tiles at least this tall are split in two row halves ...
SYM_MIN_DIM = 8192  # ... for terms whose contraction length is at least this


def sym_product(fn, n: int, full: bool):
    """Symmetric tile product from its upper blocks: rows split in halves h0, h1; ``fn(r, c)``
    gives the block (K, K, |r|, |c|) [full] or (K, |r|, |c|); the (h1, h0) block is filled by
    transposition (Theta(x', x) = Theta(x, x')^T). 3/4 of the GEMM work of the whole tile.

    Args:
        fn: ``fn(r, c)`` -> block for row slice r and column slice c.
        n: number of samples in the (square) tile.
        full: True for (K, K, ...) blocks, False for (K, ...) blocks.
    """
    h = (n + 1) // 2
    r0, r1 = slice(0, h), slice(h, n)
    b00, b01, b11 = fn(r0, r0), fn(r0, r1), fn(r1, r1)
    out = b00.new_empty(b00.shape[:-2] + (n, n))
    out[..., r0, r0] = b00
    out[..., r0, r1] = b01
    t = b01.transpose(-1, -2)
    out[..., r1, r0] = t.transpose(0, 1) if full else t
    out[..., r1, r1] = b11
    return out


#: Longest contraction done as one low-precision GEMM. Longer ones (all materialized layers of a
#: ResNet: ~2.8M columns) are split and the partial Grams summed in float64: one float32 GEMM over
#: 2.8M columns lost three digits (1.5e-4 relative against float64), chunks keep ~1e-6.
PAIR_CHUNK = 1 << 16


def _pair_mat(a: torch.Tensor, b: torch.Tensor, full: bool, out=None) -> torch.Tensor:
    """(K, Na, P) x (K, Nb, P) -> (K, K, Na, Nb) if full else (K, Na, Nb), added into ``out``
    when given; contractions longer than :data:`PAIR_CHUNK` are summed chunk by chunk in float64."""
    width = a.shape[2]
    if a.dtype == torch.float64 or width <= PAIR_CHUNK:
        return _pair_mat_once(a, b, full, out)
    acc = None
    for s in range(0, width, PAIR_CHUNK):
        part = _pair_mat_once(a[:, :, s:s + PAIR_CHUNK], b[:, :, s:s + PAIR_CHUNK], full).double()
        acc = part if acc is None else acc.add_(part)
    acc = acc.to(a.dtype)
    return acc if out is None else out.add_(acc)


def _pair_mat_once(a: torch.Tensor, b: torch.Tensor, full: bool, out=None) -> torch.Tensor:
    """:func:`_pair_mat` as one product; K = 1 as one addmm."""
    if a.shape[0] == 1:
        if out is None:
            o = a[0] @ b[0].T
            return o.view((1, 1) + o.shape if full else (1,) + o.shape)
        o2 = out.view(out.shape[-2:])
        o2.addmm_(a[0], b[0].T)
        return out
    r = jacobian.pair_materialized(a, b, full)
    return r if out is None else out.add_(r)


def pair(a: GramFeatures, b: GramFeatures, full: bool) -> torch.Tensor:
    """Kernel block of two tiles: one GEMM over all materialized columns plus the factored
    layers' terms, accumulated into one output. For a diagonal tile of a symmetric kernel
    (``a is b``) the long-contraction terms (the materialized GEMM, T = 1 dense layers with
    wide inputs) are computed from upper half-blocks; short ones, whose cost is call overhead
    rather than flops, in one call.

    Args:
        a: row-tile features.
        b: column-tile features (``a`` itself on a diagonal tile).
        full: True for a (K, K, na, nb) block, False for (K, na, nb).
    """
    K, n = (a.mat.shape[0], a.mat.shape[1]) if a.mat is not None else a.exacts[0].G.shape[:2]
    m = b.mat.shape[1] if b.mat is not None else b.exacts[0].G.shape[1]
    out = None
    if a.mat is not None:
        ma, mb = a.mat, b.mat
        if a is b and n >= SYM_MIN_ROWS and ma.shape[2] >= SYM_MIN_DIM:
            out = sym_product(lambda r, c: _pair_mat(ma[:, r], ma[:, c], full), n, full)
        else:
            out = ma.new_zeros((K, K, n, m) if full else (K, n, m))
            _pair_mat(ma, mb, full, out)
    for ea, eb in zip(a.exacts, b.exacts):
        if a is b and n >= SYM_MIN_ROWS and ea.wide_t1(SYM_MIN_DIM):
            t = sym_product(lambda r, c, e=ea: e.rows(r).pair(e.rows(c), full), n, full)
        else:
            t = ea.pair(eb, full)
        out = t if out is None else out.add_(t)
    return out


def _needs_batch_stats(model: nn.Module) -> bool:
    """BatchNorm without running stats normalizes with batch statistics even in eval mode,
    coupling the samples of a batch; the batched gram engine would then be wrong."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None
               for m in model.modules())


def gram_blocks(model, params, x1, x2, V, full, batch_size, tile_size) -> torch.Tensor:
    """Kernel blocks (K, K, N1, N2) if ``full`` else (K, N1, N2); model already in eval mode.

    Args:
        model: the network, in eval mode.
        params: name -> trainable parameter.
        x1: (N1, *F) inputs on the model's device.
        x2: (N2, *F) inputs, or None for the symmetric kernel of ``x1``.
        V: (K, O) output directions.
        full: True for the full K x K block.
        batch_size: vmap chunk size of the torch.func fallback, or None.
        tile_size: samples per tile, or None for ``DEFAULT_TILE`` (jacobian path:
            :func:`~entk_al.ntk.jacobian.default_tile`).
    """
    if _needs_batch_stats(model):
        P = sum(p.numel() for p in params.values())
        tile = tile_size or jacobian.default_tile(P, V.shape[0], V.element_size())
        feats = jacobian.make_features(model, params, V, batch_size)
        return tiled_kernel(feats, lambda a, b: jacobian.pair_materialized(a, b, full),
                            x1, x2, tile, full)
    n1, n2 = len(x1), len(x1 if x2 is None else x2)
    K, isz = V.shape[0], V.element_size()
    tile = tile_size or DEFAULT_TILE
    plan = build_plan(model, params, x1, V, min(tile, n1), full, min(tile, n2))
    if tile_size is None:
        # Largest tile whose features fit the budget; the forms are re-chosen for that tile
        # (smaller tiles favour the materialized form), then the tile re-checked.
        for _ in range(2):
            fit = max(MIN_TILE, FEATURE_TILE_BYTES // max(1, plan.bytes_per_sample(K, isz)))
            if fit >= min(tile, max(n1, n2)):
                break
            tile = int(fit)
            plan.choose_forms(K, min(tile, n1), min(tile, n2), isz, full)

    def feats(x):
        f = tile_features(plan, model, x, V, batch_size)
        return f, nbytes(f)

    return tiled_kernel(feats, lambda a, b: pair(a, b, full), x1, x2, tile, full)
