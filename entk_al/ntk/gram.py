"""Gram engine: layer-wise NTK from one batched forward + K backward passes per tile.

In eval mode samples are independent, so the gradient of sum_n V_k f(x_n) at a layer's output,
restricted to sample n, is sample n's own gradient. Forward hooks save each supported layer's
input and output; ``autograd.grad`` w.r.t. the outputs gives G. Each layer's kernel share is
built from (input, G) by :mod:`.layers`; the shares are summed (the NTK is a sum over
parameters, Jacot et al. 2018 eq. 3; layer-wise structure as in Novak et al. 2022, Sec. 3).
Parameters of other modules, of modules called more than once (weight sharing), tied across
modules, or whose reconstructed gradient does not match autograd's on a probe batch, go to the
torch.func per-sample-gradient fallback of :mod:`.reference`, so the result stays exact.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

from . import layers as L
from . import reference
from .tiling import nbytes, tiled_kernel

DEFAULT_TILE = 1024
PROBE_SAMPLES = 4


@dataclass
class LayerPlan:
    mod: nn.Module
    kind: str  # "linear" | "norm"
    names: list[str]  # trainable direct parameter names, e.g. ["weight", "bias"]
    exact: bool = False  # linear weight in factored form (else materialized)
    fold_bias: bool = False  # bias as an extra all-ones input column of the weight


@dataclass
class Plan:
    layers: list[LayerPlan] = field(default_factory=list)
    fallback: dict[str, torch.Tensor] = field(default_factory=dict)


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


def _layer_tensors(lp: LayerPlan, inp, G):
    """Materialized per-sample grads (list of (K, N, P)) and the Exact feature or None."""
    if lp.kind == "norm":
        return L.norm_materialize(lp.mod, inp, G, lp.names), None
    A, ids, Gf = L.linear_geometry(lp.mod, inp, G)
    mats, ex = [], None
    has_w = "weight" in lp.names
    if "bias" in lp.names and not lp.fold_bias:
        mats.append(Gf.sum(2).reshape(Gf.shape[0], Gf.shape[1], -1))
    if has_w:
        if lp.fold_bias:
            A = torch.cat([A, A.new_ones(A.shape[:-1] + (1,))], dim=-1)
        if lp.exact:
            ex = L.Exact(G=Gf, A=A, ids=ids)
        else:
            n_emb = lp.mod.num_embeddings if ids is not None else None
            mats.insert(0, L.linear_materialize(A, ids, Gf, n_emb))
    return mats, ex


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


def build_plan(model: nn.Module, params: dict, x: torch.Tensor, V: torch.Tensor, tile: int,
               full: bool) -> Plan:
    name_of = {id(p): n for n, p in params.items()}
    owners = defaultdict(list)
    for mod in model.modules():
        for pn, p in mod.named_parameters(recurse=False):
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
        if not all([next(good) for _ in sr]):
            continue
        if dims is not None:
            T, g, di, do, n_emb = dims
            has_b = "bias" in lp.names
            lp.exact = L.linear_use_exact(T, g, di + has_b, do, V.shape[0], tile,
                                          V.element_size(), full, n_emb)
            # exact form: bias as a ones column of A (one Hadamard term instead of two);
            # materialized: the bias gradient is the position-sum of G (no copy of A)
            lp.fold_bias = has_b and lp.exact
        plan.layers.append(lp)
        covered.update(id(getattr(lp.mod, n)) for n in lp.names)
    plan.fallback = {n: p for n, p in params.items() if id(p) not in covered}
    return plan


MAT_SPLIT_P = 4096  # a materialized block with K*P at least this stays its own GEMM operand


class GramFeatures:
    """Features of one tile: materialized blocks, each (K, N, P_i), and a list of Exact."""

    def __init__(self, mats, exacts):
        self.mats, self.exacts = mats, exacts

    def tensors(self):
        ts = list(self.mats)
        for e in self.exacts:
            ts += e.tensors()
        return ts


def tile_features(plan: Plan, model, x, V, chunk_size) -> GramFeatures:
    mats, exacts = [], []
    if plan.layers:
        _, inputs, G, _ = _run_hooked(model, [lp.mod for lp in plan.layers], x, V)
        for i, lp in enumerate(plan.layers):
            m, ex = _layer_tensors(lp, inputs[i], G.pop(i))
            mats += m
            if ex is not None:
                exacts.append(ex)
        del inputs
    if plan.fallback:
        mats.append(reference.per_sample_grads(model, plan.fallback, x, V, chunk_size))
    # The kernel is a sum over parameters, so blocks need not be concatenated: big ones are
    # kept apart (no copy), small ones (biases, norm affines) merged into one GEMM operand.
    # (classified per sample, so that every tile, the last short one too, has the same blocks)
    big = [m for m in mats if m.shape[0] * m.shape[2] >= MAT_SPLIT_P]
    small = [m for m in mats if m.shape[0] * m.shape[2] < MAT_SPLIT_P]
    if small:
        big.append(torch.cat(small, dim=2) if len(small) > 1 else small[0])
    return GramFeatures(big, exacts)


SYM_MIN_ROWS = 512  # diagonal tiles at least this tall are split in two row halves ...
SYM_MIN_DIM = 8192  # ... for terms whose contraction length is at least this


def sym_product(fn, n: int, full: bool):
    """Symmetric tile product from its upper blocks: rows split in halves h0, h1; ``fn(r, c)``
    gives the block (K, K, |r|, |c|) [full] or (K, |r|, |c|); the (h1, h0) block is filled by
    transposition (Theta(x', x) = Theta(x, x')^T). 3/4 of the GEMM work of the whole tile."""
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


def _pair_mat(a: torch.Tensor, b: torch.Tensor, full: bool) -> torch.Tensor:
    """(K, Na, P) x (K, Nb, P) -> (K, K, Na, Nb) if full else (K, Na, Nb); K = 1 as one mm."""
    if a.shape[0] == 1:
        o = a[0] @ b[0].T
        return o.view((1, 1) + o.shape if full else (1,) + o.shape)
    return reference.pair_materialized(a, b, full)


def _add(out, s):
    return s if out is None else out.add_(s)


def pair(a: GramFeatures, b: GramFeatures, full: bool) -> torch.Tensor:
    """Kernel block of two tiles: sum of the per-layer terms. For a diagonal tile of a
    symmetric kernel (``a is b``) the long-contraction terms (big materialized blocks, T = 1
    dense layers with wide inputs) are computed from upper half-blocks; short ones, whose cost
    is call overhead rather than flops, in one call."""
    out = None
    for ma, mb in zip(a.mats, b.mats):
        if a is b and ma.shape[1] >= SYM_MIN_ROWS and ma.shape[2] >= SYM_MIN_DIM:
            out = _add(out, sym_product(lambda r, c: _pair_mat(ma[:, r], ma[:, c], full),
                                        ma.shape[1], full))
        else:
            out = _add(out, _pair_mat(ma, mb, full))
    for ea, eb in zip(a.exacts, b.exacts):
        n = ea.G.shape[1]
        if a is b and n >= SYM_MIN_ROWS and ea.wide_t1(SYM_MIN_DIM):
            out = _add(out, sym_product(lambda r, c: ea.rows(r).pair(ea.rows(c), full), n, full))
        else:
            out = _add(out, ea.pair(eb, full))
    return out


def _needs_batch_stats(model: nn.Module) -> bool:
    """BatchNorm without running stats normalizes with batch statistics even in eval mode,
    coupling the samples of a batch; the batched gram engine would then be wrong."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None
               for m in model.modules())


def gram_blocks(model, params, x1, x2, V, full, batch_size, tile_size) -> torch.Tensor:
    """Kernel blocks (K, K, N1, N2) if ``full`` else (K, N1, N2); model already in eval mode."""
    if _needs_batch_stats(model):
        P = sum(p.numel() for p in params.values())
        tile = tile_size or reference.default_tile(P, V.shape[0], V.element_size())
        feats = reference.make_features(model, params, V, batch_size)
        return tiled_kernel(feats, lambda a, b: reference.pair_materialized(a, b, full),
                            x1, x2, tile, full)
    tile = tile_size or DEFAULT_TILE
    plan = build_plan(model, params, x1, V, tile, full)

    def feats(x):
        f = tile_features(plan, model, x, V, batch_size)
        return f, nbytes(f)

    return tiled_kernel(feats, lambda a, b: pair(a, b, full), x1, x2, tile, full)
