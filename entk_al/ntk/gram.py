"""Gram engine: layer-wise NTK from one batched forward + K backward passes per tile.

In eval mode samples are independent, so the gradient of sum_n V_k f(x_n) at a layer's output,
restricted to sample n, is sample n's own gradient. Forward hooks save each supported layer's
input and output; ``autograd.grad`` w.r.t. the outputs gives G. Each layer's kernel share is
built from (input, G) by :mod:`.layers`; the shares are summed (the NTK is a sum over
parameters, Jacot et al. 2018 eq. 3; layer-wise structure as in Novak et al. 2022, Sec. 3).
Parameters of other modules, of modules called more than once (weight sharing), tied across
modules, or whose reconstructed gradient does not match autograd's on a probe batch, go to the
torch.func per-sample-gradient fallback of :mod:`.jacobian`, so the result stays exact.

The probe (a 4-sample hooked forward/backward, :func:`build_plan`) is cached per model and
key (:func:`plan_key`: structure, trainable set, dtype, device, input shape, directions, and the
parameters' and buffers' storage and version counters, so a weight update re-probes: the
probe's gradient check depends on the weights). Every tile re-checks what the probe found
(each planned layer called once, no unplanned in-place change of a saved tensor, folded
BatchNorms still fed by their layer); a tile that disagrees raises :class:`PlanMismatch`.

Outputs are cloned in the hooks only where the probe saw a later op modify them in place
(version counters); BatchNorm weight gradients are folded into the materialized gradient of the
layer they normalize where that is cheaper (:func:`~entk_al.ntk.layers.bn_fold_weight`).
"""
from __future__ import annotations

import contextlib
import weakref
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
PLANS_PER_MODEL = 8  # probe results cached per model (keys: input shape, directions, weights)
PRECISIONS = ("full", "tf32", "bf16")


class PlanMismatch(RuntimeError):
    """A tile's forward pass does not behave as the probe saw it (data-dependent control flow,
    weight sharing or in-place ops that the 4 probe samples did not show). :func:`gram_blocks`
    answers it by recomputing the kernel on the torch.func path."""


@dataclass
class LayerPlan:
    mod: nn.Module
    kind: str  # "linear" | "norm"
    names: list[str]  # trainable direct parameter names, e.g. ["weight", "bias"]
    exact: bool = False  # linear weight in factored form (else materialized)
    fold_bias: bool = False  # bias as an extra all-ones input column of the weight
    dims: tuple | None = None  # linear-family geometry (T, g, di, do, n_emb) for the cost model
    clone_out: bool = False  # a later op of the forward modifies the output in place
    clone_in: bool = False  # ... or the input (the saved input must be a copy)
    fold_from: int | None = None  # norm: index of the planned layer whose output it normalizes
    fold: bool = False  # this call: weight gradient from that layer's materialized gradient


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


#: A BatchNorm's weight gradient is folded into the materialized gradient of the layer it
#: normalizes when that layer's inputs per group (di) are at most this many times the BatchNorm's
#: positions T: the fold reads the layer's N*P gradient columns once, the direct form makes about
#: four passes over the N*C*T activations (:func:`~entk_al.ntk.layers.bn_fold_weight`).
FOLD_MAX_DI_PER_T = 4


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
        """Per linear layer, the cheaper exact form for n x m tile pairs (layers.linear_costs);
        per foldable BatchNorm, whether its layer is materialized and the fold is cheaper."""
        for lp in self.layers:
            if lp.dims is None:
                continue
            T, g, di, do, n_emb = lp.dims
            has_b = "bias" in lp.names
            lp.exact = L.linear_use_exact(T, g, di + has_b, do, K, n, m, itemsize, full, n_emb)
            # exact form: bias as a ones column of A (one Hadamard term instead of two);
            # materialized: the bias gradient is the position-sum of G (no copy of A)
            lp.fold_bias = has_b and lp.exact
        for lp in self.layers:
            src = None if lp.fold_from is None else self.layers[lp.fold_from]
            lp.fold = (src is not None and not src.exact and "weight" in src.names
                       and src.dims[2] <= FOLD_MAX_DI_PER_T * src.dims[0])


@dataclass
class _Hooked:
    """What one hooked forward/backward saw (see :func:`_run_hooked`)."""

    calls: dict  # layer index -> calls (2 for a call the hooks cannot read)
    inputs: dict  # layer index -> its input (detached; a copy where clone_in)
    G: dict  # layer index -> (K, N, *out) gradient at its output
    pgrads: tuple | None  # autograd's direction-0 gradients of ``with_params``
    out_changed: set  # layers whose output (as handed on) was later modified in place
    in_changed: set  # layers whose input was later modified in place
    feeds: dict  # layer index -> index of the hooked layer whose unmodified output it consumed


def _run_hooked(model, mods, x, V, with_params=(), clone_out=None, clone_in=()):
    """Forward x with hooks on ``mods``, then K backward passes to their outputs.

    Args:
        model: the network, in eval mode.
        mods: the modules to hook (indices below refer to this list).
        x: (N, *F) inputs.
        V: (K, O) output directions.
        with_params: parameters whose direction-0 gradients autograd also returns (probe).
        clone_out: indices whose output is cloned before the rest of the forward sees it;
            None clones every output (the probe, which then reports where it was needed).
        clone_in: indices whose saved input is a copy.
    """
    calls, saved = defaultdict(int), {}
    handed, seen_in, by_id, feeds = {}, {}, {}, {}

    def make(i):
        def hook(mod, args, out):
            # a call without a positional input (kwargs only) is not understood: mark it
            # as shared so the probe routes the module to the fallback
            calls[i] += 1 if args and isinstance(out, torch.Tensor) else 2
            if not args or not isinstance(out, torch.Tensor):
                return None
            inp = args[0]
            src = by_id.get(id(inp))
            if src is not None and handed[src][0] is inp and inp._version == handed[src][1]:
                feeds[i] = src
            keep = inp.detach()
            saved[i] = (keep.clone() if i in clone_in else keep, out)
            seen_in[i] = (inp, inp._version)
            # an in-place op downstream (ReLU(inplace=True), +=) must not rebase ``out``
            give = out.clone() if clone_out is None or i in clone_out else None
            t = out if give is None else give
            handed[i] = (t, t._version)
            by_id[id(t)] = i
            return give
        return hook

    handles = [m.register_forward_hook(make(i)) for i, m in enumerate(mods)]
    try:
        f = model(x)
    finally:
        for h in handles:
            h.remove()
    out_changed = {i for i, (t, v) in handed.items() if t._version != v}
    in_changed = {i for i, (t, v) in seen_in.items() if t._version != v}
    handed.clear(), seen_in.clear(), by_id.clear()  # release the forward's tensors
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
    return _Hooked(calls, inputs, G, pgrads, out_changed, in_changed, feeds)


def _layer_tensors(lp: LayerPlan, inp, G, outs):
    """Write the materialized per-sample grads into ``outs`` (views (K, N, P_i), sizes from
    :func:`_mat_sizes`); return (Exact feature or None, column order of a materialized weight:
    "weight" or "shift", see :func:`~entk_al.ntk.layers.bn_fold_weight`)."""
    if lp.kind == "norm":
        for o, t in zip(outs, L.norm_materialize(lp.mod, inp, G, lp.names)):
            o.copy_(t)
        return None, None
    if "weight" in lp.names and not lp.exact:
        form = L.conv_form(lp.mod, inp)
        if form != "im2col":  # no im2col copy
            outs = iter(outs)
            (L.conv_shift_materialize if form == "shift" else L.conv_grouped_materialize)(
                lp.mod, inp, G, next(outs))
            if "bias" in lp.names:
                torch.sum(G, (-2, -1), out=next(outs))
            return None, "shift" if form == "shift" else "weight"
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
    return ex, "weight"


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


def _foldable(src: LayerPlan, bn: LayerPlan, dims: tuple | None) -> bool:
    """BatchNorm ``bn`` (weight trainable, running statistics) normalizing the output of
    ``src``, an ungrouped Linear (on (N, d) inputs: the BatchNorm's channels are its outputs) /
    Conv1d / Conv2d with a trainable weight, and no zero BatchNorm weight (the fold divides
    by it). ``dims``: ``src``'s geometry (T, g, di, do, n_emb)."""
    if dims is None or (type(src.mod) is nn.Linear and dims[0] != 1):
        return False
    return (src.kind == "linear" and bn.kind == "norm" and "weight" in src.names
            and "weight" in bn.names and type(src.mod) in (nn.Linear, nn.Conv1d, nn.Conv2d)
            and getattr(src.mod, "groups", 1) == 1
            and isinstance(bn.mod, nn.modules.batchnorm._BatchNorm)
            and bn.mod.weight.shape[0] == src.mod.weight.shape[0]
            and bool((bn.mod.weight != 0).all()))


def _module_signature(model: nn.Module) -> tuple:
    """Modules (name, type, identity, config, own forward override, hooks), in order."""
    sig = []
    for name, m in model.named_modules():
        sig.append((name, type(m), id(m), m.extra_repr(), id(m.__dict__.get("forward")),
                    tuple(m._forward_hooks), tuple(m._forward_pre_hooks)))
    return tuple(sig)


def plan_key(model: nn.Module, params: dict, x: torch.Tensor, V: torch.Tensor) -> tuple:
    """Cache key of :func:`build_plan`'s probe: everything its result depends on.

    Structure (module names, types, identities, ``extra_repr`` configuration, instance-level
    ``forward`` overrides, forward hooks, global forward hooks), the trainable set (names and
    identities of ``params``), every parameter's and buffer's shape, dtype, device,
    ``requires_grad``, storage address and version counter (any in-place update, an optimizer
    step or ``load_state_dict``, changes it), the input's feature shape, dtype and device, and
    the directions V. Weights are in the key because the probe's gradient check is not
    weight-independent: a functional reuse of a weight behind a zero-initialized gate passes
    it at initialization and is wrong after training (tests/test_ntk.py shows one).

    Args:
        model: the network.
        params: name -> trainable parameter.
        x: (N, *F) inputs (only the feature shape, dtype and device enter).
        V: (K, O) output directions.
    """
    from torch.nn.modules import module as _m

    tensors = tuple((id(t), tuple(t.shape), t.dtype, t.device, t.requires_grad, t.data_ptr(),
                     t._version) for t in list(model.parameters()) + list(model.buffers()))
    v = V.detach().cpu()
    return (_module_signature(model), tuple((n, id(p)) for n, p in params.items()), tensors,
            tuple(x.shape[1:]), x.dtype, x.device, tuple(V.shape), V.dtype, V.device,
            hash(v.numpy().tobytes()) if v.dtype != torch.bfloat16 else hash(str(v.tolist())),
            tuple(_m._global_forward_hooks), tuple(_m._global_forward_pre_hooks))


@dataclass
class _Probed:
    """A probe's result without references to the model (the cache is weak on the model)."""

    layers: list  # (module name, kind, names, dims, clone_out, clone_in, fold_from)
    fallback: list  # names in ``params``


_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def clear_plan_cache() -> None:
    """Forget every cached probe (the next kernel call of each model re-probes)."""
    _PLANS.clear()


def _probe(model: nn.Module, params: dict, x: torch.Tensor, V: torch.Tensor) -> _Probed:
    name_of = {id(p): n for n, p in params.items()}
    owners = defaultdict(list)
    for mod in model.modules():
        for _pn, p in mod.named_parameters(recurse=False):
            if id(p) in name_of:
                owners[id(p)].append(mod)
    cands = []
    for mod in model.modules():
        kind = L.handler_kind(mod)
        direct = [(pn, p) for pn, p in mod.named_parameters(recurse=False) if id(p) in name_of]
        if kind is None or not direct or any(len(owners[id(p)]) != 1 for _, p in direct):
            continue
        cands.append(LayerPlan(mod, kind, [pn for pn, _ in direct]))
    if not cands:  # nothing the engine handles (e.g. bare nn.Parameters used in forward)
        return _Probed([], list(params))
    # probe: call counts (weight sharing), in-place changes, which layer feeds which, and the
    # gradient reconstruction check
    probe = x[:PROBE_SAMPLES]
    cparams = [getattr(lp.mod, n) for lp in cands for n in lp.names]
    run = _run_hooked(model, [lp.mod for lp in cands], probe, V[:1], cparams)
    pg = iter(run.pgrads)
    tol = 1e-8 if V.dtype == torch.float64 else 1e-3
    checked = []  # (candidate index, geometry dims or None, [(summed, autograd reference)])
    sums = {}
    for i, lp in enumerate(cands):
        ref = {n: next(pg) for n in lp.names}
        if run.calls[i] != 1 or i not in run.G:
            continue
        try:
            summed, dims = _summed(lp, run.inputs[i], run.G[i])
        except RuntimeError:  # unexpected geometry: let torch.func handle it
            continue
        sr = [(s, ref[n] if ref[n] is not None else torch.zeros_like(s))
              for n, s in summed.items()]
        if all(s.shape == r.shape for s, r in sr):
            checked.append((i, dims, sr))
            sums[i] = summed
    # a BatchNorm fed by a checked layer: its weight gradient by the fold, checked as well
    dims_of = {i: d for i, d, _ in checked}
    folds = {}
    for i, lp in enumerate(cands):
        src = run.feeds.get(i)
        if i in sums and src in sums and _foldable(cands[src], lp, dims_of[src]):
            db = sums[i]["bias"] if "bias" in sums[i] else run.G[i][0].sum(
                (0,) + tuple(range(2, run.G[i].dim() - 1)))
            w = sums[src]["weight"]
            dg = L.bn_fold_weight(cands[src].mod, lp.mod, w.reshape(1, 1, -1), "weight",
                                  db.reshape(1, 1, -1))[0, 0]
            folds[i] = (src, dg, sums[i]["weight"])
    # per-parameter max errors and scales as 0-d tensors, read back with a single .tolist()
    # (a cat + segment_reduce over all parameters was measured slower: segment_reduce is serial)
    stats = []
    pairs = [sr for _, _, sr in checked] + [[(dg, ref)] for _, dg, ref in folds.values()]
    for sr in pairs:
        for s, r in sr:
            stats += [(s - r).abs().amax(), torch.maximum(s.abs().amax(), r.abs().amax())]
    vals = torch.stack(stats).tolist() if stats else []
    good = [e <= tol * max(sc, 1e-30) for e, sc in zip(vals[::2], vals[1::2])]
    ok, pos = {}, 0
    for i, _, sr in checked:
        ok[i] = all(good[pos:pos + len(sr)])
        pos += len(sr)
    fold_ok = {i: good[pos + j] for j, i in enumerate(folds)}
    names = {id(m): n for n, m in model.named_modules()}
    kept = [i for i, _, _ in checked if ok[i]]
    plan_index = {i: j for j, i in enumerate(kept)}
    layers, covered = [], set()
    for i in kept:
        lp = cands[i]
        src = folds.get(i, (None,))[0]
        fold_from = plan_index.get(src) if fold_ok.get(i) else None
        layers.append((names[id(lp.mod)], lp.kind, lp.names, dims_of[i], i in run.out_changed,
                       i in run.in_changed, fold_from))
        covered.update(id(getattr(lp.mod, nm)) for nm in lp.names)
    return _Probed(layers, [nm for nm, p in params.items() if id(p) not in covered])


def build_plan(model: nn.Module, params: dict, x: torch.Tensor, V: torch.Tensor, n: int,
               full: bool, m: int | None = None, *, cache: bool = True) -> Plan:
    """Which layers the engine handles (and in which form, for n x m tile pairs; m = n if None)
    and which parameters go to the torch.func fallback.

    The 4-sample probe behind it is cached per model under :func:`plan_key` (a changed
    structure, trainable set, dtype, device, input shape, directions or any weight re-probes);
    the forms for n x m are chosen on every call. The returned plan is the caller's to change.

    Args:
        model: the network, in eval mode.
        params: name -> trainable parameter (from :func:`~entk_al.ntk.common.trainable`).
        x: (N, *F) sample inputs used to trace the layers' input/output geometry.
        V: (K, O) output directions (:func:`~entk_al.ntk.common.directions`).
        n: row-tile size.
        full: True when the K x K block is needed, False for the diagonal only (it changes each
            layer's cost).
        m: column-tile size (n if None).
        cache: False probes afresh (and leaves the cache alone).
    """
    probed = None
    if cache:
        key = plan_key(model, params, x, V)
        per_model = _PLANS.setdefault(model, {})
        probed = per_model.get(key)
    if probed is None:
        probed = _probe(model, params, x, V)
        if cache:
            if len(per_model) >= PLANS_PER_MODEL:  # weights moved on: old keys are dead
                per_model.pop(next(iter(per_model)))
            per_model[key] = probed
    mods = dict(model.named_modules())
    plan = Plan()
    for name, kind, names, dims, c_out, c_in, fold_from in probed.layers:
        plan.layers.append(LayerPlan(mods[name], kind, list(names), dims=dims, clone_out=c_out,
                                     clone_in=c_in, fold_from=fold_from))
    plan.fallback = {nm: params[nm] for nm in probed.fallback}
    plan.choose_forms(V.shape[0], n, n if m is None else m, V.element_size(), full)
    return plan


def forget_plan(model: nn.Module) -> None:
    """Drop the cached probes of ``model`` (after a :class:`PlanMismatch`).

    Args:
        model: the network whose probes are forgotten.
    """
    _PLANS.pop(model, None)


#: Bytes of freed CPU feature buffers kept for the next tile or call (0: none). Writing a
#: tile's features into fresh memory costs the page faults and zeroing of every page: 17% of
#: the WRN-28-2 kernel at N = 64 on one thread (docs/ntk_bench.md). CUDA has its own caching
#: allocator. :func:`release_buffers` frees them.
POOL_BYTES = FEATURE_TILE_BYTES


def _storage_users(t: torch.Tensor) -> int | None:
    """Tensors sharing ``t``'s storage (None where torch does not say)."""
    try:
        return torch._C._storage_Use_Count(t.untyped_storage()._cdata) - 1
    except (AttributeError, RuntimeError):
        return None


class _BufferPool:
    """Freed 1-d CPU feature buffers; a buffer is handed out again only when nothing else
    still refers to its memory (a view kept by a caller keeps it out of the pool)."""

    def __init__(self):
        self.free: list[torch.Tensor] = []

    def get(self, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        if torch.device(device).type == "cpu" and POOL_BYTES > 0:
            self.free = [b for b in self.free if _storage_users(b) == 1]
            fits = [j for j, b in enumerate(self.free) if b.dtype == dtype and b.numel() >= numel]
            if fits:
                # detached: a buffer must never carry an earlier tile's autograd history
                return self.free.pop(min(fits, key=lambda j: self.free[j].numel())).detach()
            self.free.clear()  # nothing fits: free the memory before asking for more
        return torch.empty(numel, dtype=dtype, device=device)

    def put(self, buf: torch.Tensor) -> None:
        if buf.device.type != "cpu" or POOL_BYTES <= 0:
            return
        total = sum(b.numel() * b.element_size() for b in self.free)
        if total + buf.numel() * buf.element_size() <= POOL_BYTES:
            self.free.append(buf.detach())


_POOL = _BufferPool()


def release_buffers() -> None:
    """Free the feature buffers the engine keeps for reuse (see :data:`POOL_BYTES`)."""
    _POOL.free.clear()


class GramFeatures:
    """Features of one tile: every materialized block in one buffer ``mat`` (K, N, P_mat), so
    that their kernel share is one GEMM, and a list of Exact (factored) layers.

    Args:
        mat: (K, N, P_mat) buffer of the materialized per-sample gradients, or None when no layer is
            materialized.
        exacts: list of :class:`~entk_al.ntk.layers.Exact` factored layer features of the same tile.
        dtype: dtype of the kernel blocks :func:`pair` returns (the model's); None: that of the
            features (bfloat16 features, ``precision="bf16"``, give float32 blocks).
    """

    def __init__(self, mat, exacts, dtype=None):
        self.mat, self.exacts = mat, exacts
        if dtype is None:
            t = mat if mat is not None else exacts[0].G
            dtype = torch.float32 if t.dtype == torch.bfloat16 else t.dtype
        self.dtype = dtype

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


def tile_features(plan: Plan, model, x, V, chunk_size, precision: str = "full") -> GramFeatures:
    """Per-sample features of one tile of inputs, in the form ``plan`` chose for each layer.

    Args:
        plan: the layer plan from :func:`build_plan`.
        model: the network, in eval mode.
        x: (n, *F) inputs of the tile, on the model's device and dtype.
        V: (K, O) output directions.
        chunk_size: vmap chunk size for parameters handled by the torch.func fallback, or None.
        precision: ``"bf16"`` stores the features in bfloat16 for a reduced-precision Gram
            (:func:`pair` then accumulates in float32); any other value keeps the model dtype.

    Raises:
        PlanMismatch: the tile's forward differs from the probe's (a planned layer not called
            exactly once, an unplanned in-place change of a saved tensor, a folded BatchNorm no
            longer fed by its layer).
    """
    K, n = V.shape[0], x.shape[0]
    width = plan.mat_width()
    base = _POOL.get(K * n * width, V.dtype, V.device) if width else None
    mat = base[:K * n * width].view(K, n, width) if width else None
    exacts, off = [], 0

    def take(size):
        nonlocal off
        off += size
        return mat[:, :, off - size:off]

    if plan.layers:
        run = _run_hooked(model, [lp.mod for lp in plan.layers], x, V,
                          clone_out={i for i, lp in enumerate(plan.layers) if lp.clone_out},
                          clone_in={i for i, lp in enumerate(plan.layers) if lp.clone_in})
        _check_tile(plan, run)
        inputs, G = run.inputs, run.G
        views, orders, folded = {}, {}, []
        for i, lp in enumerate(plan.layers):
            outs = views[i] = [take(sz) for sz in _mat_sizes(lp)]
            if i not in G:  # output does not depend on the parameters for this input
                for o in outs:
                    o.zero_()
                continue
            if lp.fold:
                # bias gradient now; weight gradient once the layer's columns are written
                g = G.pop(i)
                db = (g.sum(tuple(range(3, g.dim()))) if g.dim() > 3 else g).reshape(K, n, -1)
                if "bias" in lp.names:
                    outs[1].copy_(db)
                folded.append((i, db))
                inputs.pop(i)
                continue
            ex, orders[i] = _layer_tensors(lp, inputs.pop(i), G.pop(i), outs)
            if ex is not None:
                exacts.append(ex)
        del inputs, G
        for i, db in folded:
            lp = plan.layers[i]
            src = plan.layers[lp.fold_from]
            if lp.fold_from not in orders:  # the layer got no gradient: the plain form is zero too
                views[i][0].zero_()
                continue
            L.bn_fold_weight(src.mod, lp.mod, views[lp.fold_from][0], orders[lp.fold_from], db,
                             out=views[i][0])
    if plan.fallback:
        take(sum(p.numel() for p in plan.fallback.values())).copy_(
            jacobian.per_sample_grads(model, plan.fallback, x, V, chunk_size).detach())
    feats = GramFeatures(mat, exacts, dtype=V.dtype)
    if precision == "bf16":
        feats.mat = None if mat is None else mat.to(torch.bfloat16)
        feats.exacts = [e.to(torch.bfloat16) for e in exacts]
        del mat
        if base is not None:
            _POOL.put(base)
    elif base is not None:
        weakref.finalize(feats, _POOL.put, base)
    return feats


def _check_tile(plan: Plan, run: _Hooked) -> None:
    """Raise :class:`PlanMismatch` where the tile's forward differs from the probe's."""
    for i, lp in enumerate(plan.layers):
        if run.calls.get(i, 0) != 1:
            raise PlanMismatch(f"{type(lp.mod).__name__} was called {run.calls.get(i, 0)} times "
                               f"in this tile, once in the probe")
        if (i in run.out_changed and not lp.clone_out) or (i in run.in_changed and not lp.clone_in):
            raise PlanMismatch(f"a tensor of {type(lp.mod).__name__} was modified in place in this "
                               f"tile, not in the probe")
        if lp.fold and run.feeds.get(i) != lp.fold_from:
            raise PlanMismatch(f"{type(lp.mod).__name__} no longer normalizes the output of "
                               f"{type(plan.layers[lp.fold_from].mod).__name__}")


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
    when given; contractions longer than :data:`PAIR_CHUNK` (bfloat16: every contraction) are
    summed chunk by chunk in float64. bfloat16 inputs give float32 (or ``out``'s dtype)."""
    width = a.shape[2]
    low = a.dtype == torch.bfloat16
    if a.dtype == torch.float64 or (width <= PAIR_CHUNK and not low):
        return _pair_mat_once(a, b, full, out)
    acc = None
    for s in range(0, width, PAIR_CHUNK):
        part = _pair_mat_once(a[:, :, s:s + PAIR_CHUNK], b[:, :, s:s + PAIR_CHUNK], full).double()
        acc = part if acc is None else acc.add_(part)
    acc = acc.to(out.dtype if out is not None else torch.float32 if low else a.dtype)
    return acc if out is None else out.add_(acc)


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b; bfloat16 operands give a float32 product (accumulated in float32: on CUDA through
    ``out_dtype``, on the CPU by oneDNN, whose bfloat16 result is then widened)."""
    if a.dtype != torch.bfloat16:
        return a @ b
    if a.is_cuda:
        with contextlib.suppress(TypeError, RuntimeError):
            return torch.mm(a, b, out_dtype=torch.float32)
    return (a @ b).float()


def _pair_mat_once(a: torch.Tensor, b: torch.Tensor, full: bool, out=None) -> torch.Tensor:
    """:func:`_pair_mat` as one product; K = 1 as one addmm."""
    if a.shape[0] == 1:
        if out is None or a.dtype != out.dtype:
            o = _mm(a[0], b[0].T)
            o = o.view((1, 1) + o.shape if full else (1,) + o.shape)
            return o if out is None else out.add_(o)
        o2 = out.view(out.shape[-2:])
        o2.addmm_(a[0], b[0].T)
        return out
    r = jacobian.pair_materialized(a, b, full)
    if r.dtype == torch.bfloat16:
        r = r.float()
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

    Returns:
        The block in ``a.dtype`` (the model's; float32 for bfloat16 features).
    """
    K, n = (a.mat.shape[0], a.mat.shape[1]) if a.mat is not None else a.exacts[0].G.shape[:2]
    m = b.mat.shape[1] if b.mat is not None else b.exacts[0].G.shape[1]
    out = None
    if a.mat is not None:
        ma, mb = a.mat, b.mat
        if a is b and n >= SYM_MIN_ROWS and ma.shape[2] >= SYM_MIN_DIM:
            out = sym_product(lambda r, c: _pair_mat(ma[:, r], ma[:, c], full), n, full)
        else:
            out = ma.new_zeros((K, K, n, m) if full else (K, n, m), dtype=a.dtype)
            _pair_mat(ma, mb, full, out)
    for ea, eb in zip(a.exacts, b.exacts):
        if a is b and n >= SYM_MIN_ROWS and ea.wide_t1(SYM_MIN_DIM):
            t = sym_product(lambda r, c, e=ea: e.rows(r).pair(e.rows(c), full), n, full)
        else:
            t = ea.pair(eb, full)
        out = t.to(a.dtype) if out is None else out.add_(t)
    return out.to(a.dtype)


@contextlib.contextmanager
def matmul_precision(precision: str):
    """Within the block, float32 CUDA matmuls use TF32 tensor cores if ``precision == "tf32"``
    (the previous setting is restored); otherwise nothing changes.

    Args:
        precision: one of :data:`PRECISIONS`.
    """
    if precision != "tf32":
        yield
        return
    old = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision = old


def check_precision(precision: str, device: torch.device, method: str = "gram") -> None:
    """Validate a ``precision`` argument.

    Args:
        precision: ``"full"`` (the model dtype), ``"tf32"`` or ``"bf16"``.
        device: the model's device (TF32 needs CUDA).
        method: the kernel method (reduced precision is a gram-engine option).

    Raises:
        ValueError: unknown precision, ``"tf32"`` off CUDA, or a reduced precision with
            ``method="jacobian"``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    if precision == "tf32" and torch.device(device).type != "cuda":
        raise ValueError("precision='tf32' needs a CUDA model (TF32 is an NVIDIA tensor-core "
                         "format); use 'bf16' or 'full' on the CPU")
    if precision != "full" and method == "jacobian":
        raise ValueError(f"precision={precision!r} is an option of the gram engine; "
                         f"method='jacobian' computes in the model dtype")


def _needs_batch_stats(model: nn.Module) -> bool:
    """BatchNorm without running stats normalizes with batch statistics even in eval mode,
    coupling the samples of a batch; the batched gram engine would then be wrong."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None
               for m in model.modules())


def _jacobian_blocks(model, params, x1, x2, V, full, batch_size, tile_size):
    P = sum(p.numel() for p in params.values())
    tile = tile_size or jacobian.default_tile(P, V.shape[0], V.element_size())
    feats = jacobian.make_features(model, params, V, batch_size)
    return tiled_kernel(feats, lambda a, b: jacobian.pair_materialized(a, b, full),
                        x1, x2, tile, full)


def plan_tile(plan: Plan, V: torch.Tensor, n1: int, n2: int, full: bool, tile_size: int | None = None) -> int:
    """Samples per tile for an n1 x n2 kernel: ``tile_size`` if given, else the largest tile (at
    most :data:`DEFAULT_TILE`, at least :data:`MIN_TILE`) whose features fit
    :data:`FEATURE_TILE_BYTES`; the plan's forms are re-chosen for that tile (smaller tiles
    favour the materialized form) and the tile re-checked.

    Args:
        plan: the plan from :func:`build_plan` (its forms may change).
        V: (K, O) output directions.
        n1: rows of the kernel.
        n2: columns of the kernel.
        full: True when the K x K block is needed.
        tile_size: the caller's tile, or None.
    """
    if tile_size is not None:
        return tile_size
    K, isz = V.shape[0], V.element_size()
    tile = DEFAULT_TILE
    for _ in range(2):
        fit = max(MIN_TILE, FEATURE_TILE_BYTES // max(1, plan.bytes_per_sample(K, isz)))
        if fit >= min(tile, max(n1, n2)):
            break
        tile = int(fit)
        plan.choose_forms(K, min(tile, n1), min(tile, n2), isz, full)
    return tile


def gram_blocks(model, params, x1, x2, V, full, batch_size, tile_size,
                precision: str = "full") -> torch.Tensor:
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
        precision: ``"full"`` (exact in the model dtype), ``"tf32"`` (CUDA: the Gram GEMMs on
            TF32 tensor cores) or ``"bf16"`` (features stored in bfloat16, products accumulated
            in float32); see :func:`check_precision`.
    """
    if _needs_batch_stats(model):
        return _jacobian_blocks(model, params, x1, x2, V, full, batch_size, tile_size)
    n1, n2 = len(x1), len(x1 if x2 is None else x2)
    tile = tile_size or DEFAULT_TILE
    plan = build_plan(model, params, x1, V, min(tile, n1), full, min(tile, n2))
    tile = plan_tile(plan, V, n1, n2, full, tile_size)

    def run(plan):
        def feats(x):
            f = tile_features(plan, model, x, V, batch_size, precision)
            return f, nbytes(f)

        def pair_p(a, b):
            with matmul_precision(precision):
                return pair(a, b, full)

        return tiled_kernel(feats, pair_p, x1, x2, tile, full)

    try:
        return run(plan)
    except PlanMismatch as exc:
        forget_plan(model)
        import warnings

        # What the probe missed: an in-place change (every hooked tensor is copied now, no
        # BatchNorm is folded) or a layer called more or less than once (torch.func path).
        for lp in plan.layers:
            lp.clone_out = lp.clone_in = True
            lp.fold_from, lp.fold = None, False
        try:
            out = run(plan)
            warnings.warn(f"pNTK gram engine: {exc}; recomputed with every hooked tensor "
                          f"copied (exact, slower)", RuntimeWarning, stacklevel=3)
            return out
        except PlanMismatch as exc2:
            warnings.warn(f"pNTK gram engine: {exc2}; this kernel is computed on the torch.func "
                          f"path (exact, slower)", RuntimeWarning, stacklevel=3)
        return _jacobian_blocks(model, params, x1, x2, V, full, batch_size, tile_size)
