"""Per-layer features of the gram engine: from a layer's input and the per-sample gradient at
its output, the per-sample gradient of its parameters, either materialized or in the factored
"exact" form used by Novak et al. 2022 ("Fast finite width NTK", ICML, Sec. 3, structured
derivatives) for linear maps.

Linear-family layers (Linear, Conv1d, Conv2d, Embedding) are written as a grouped linear map
applied at T positions: y[t, g] = W_g a[t, g] (+ b). With A (N, T, g, di) and G (K, N, T, g, do)
the per-sample weight gradient is dW_g(n) = sum_t G[n, t, g]^T A[n, t, g], so

    <dW(x), dW(x')> = sum_{g, t, s} (A[x, t, g] . A[x', s, g]) (G[x, t, g] . G[x', s, g]).   (*)

Cost model per pair of tiles (n, m samples), K directions, choosing the cheaper form:
    materialized: features 2 K N T g di do flops and K N g di do floats;
                  kernel 2 K^2 n m g di do flops (full) / 2 K n m g di do (diag).
    exact (*):    features are A and G themselves (N T g (di + K do) floats);
                  kernel 2 n m T^2 g (di + K^2 do) flops (full) / (di + K do) (diag),
                  with n m T^2 g temporaries (computed in row chunks).
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

MATERIALIZE_BUDGET_BYTES = 256 << 20  # per layer and tile
EXACT_CHUNK_ELEMS = 1 << 24
FORCE_FORM: str | None = None  # "exact" / "materialized" overrides the cost model (tests)  # n_chunk * m * T^2 * g temporaries of the exact form


@dataclass
class Exact:
    """Factored linear-family weight features: A (N, T, g, di) or ids (N, T), G (K, N, T, g, do)."""

    G: torch.Tensor
    A: torch.Tensor | None = None
    ids: torch.Tensor | None = None

    def tensors(self):
        return [t for t in (self.G, self.A, self.ids) if t is not None]

    def aa(self, other: "Exact", rows: slice) -> torch.Tensor:
        """(n_c, T, m, S, g) input inner products."""
        if self.ids is not None:
            eq = self.ids[rows, :, None, None] == other.ids[None, None]
            return eq.to(self.G.dtype).unsqueeze(-1)
        return torch.einsum("ntgi,msgi->ntmsg", self.A[rows], other.A)

    def pair(self, other: "Exact", full: bool) -> torch.Tensor:
        K, n, T, g, _ = self.G.shape
        m, S = other.G.shape[1], other.G.shape[2]
        if T == 1 and S == 1 and self.ids is None:
            return _pair_t1(self.A[:, 0], self.G[:, :, 0], other.A[:, 0], other.G[:, :, 0], full)
        out = self.G.new_zeros((K, K, n, m) if full else (K, n, m))
        step = max(1, EXACT_CHUNK_ELEMS // max(1, m * T * S * g))
        for r0 in range(0, n, step):
            r = slice(r0, min(n, r0 + step))
            aa = self.aa(other, r)
            for k in range(K):
                for l in (range(K) if full else (k,)):
                    gg = torch.einsum("ntgo,msgo->ntmsg", self.G[k, r], other.G[l])
                    v = (aa * gg).sum(dim=(1, 3, 4))
                    if full:
                        out[k, l, r] = v
                    else:
                        out[k, r] = v
        return out


def _pair_t1(a1, g1, a2, g2, full):
    """a (N, g, di), g (K, N, g, do): sum_g (a1 a2^T) o (g1 g2^T)."""
    if a1.shape[1] == 1:
        aa = a1[:, 0] @ a2[:, 0].T
        if full:
            gg = torch.einsum("kno,lmo->klnm", g1[:, :, 0], g2[:, :, 0])
        else:
            gg = torch.bmm(g1[:, :, 0], g2[:, :, 0].transpose(1, 2))
        return gg.mul_(aa)
    aa = torch.einsum("ngi,mgi->nmg", a1, a2)
    if full:
        return torch.einsum("kngo,lmgo,nmg->klnm", g1, g2, aa)
    return torch.einsum("kngo,kmgo,nmg->knm", g1, g2, aa)


# ---------------------------------------------------------------- linear family geometry
def linear_geometry(mod: nn.Module, inp: torch.Tensor, G: torch.Tensor):
    """Return (A (N, T, g, di) or None, ids (N, T) or None, G (K, N, T, g, do))."""
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
    cols = F.unfold(x, as2(mod.kernel_size), dilation=as2(mod.dilation),
                    padding=as2(padding, 0), stride=as2(mod.stride))  # (N, C*kh*kw, L)
    g = mod.groups
    L = cols.shape[-1]
    A = cols.reshape(N, g, -1, L).permute(0, 3, 1, 2)
    Gf = G.reshape(K, N, g, -1, L).permute(0, 1, 4, 2, 3)
    return A, None, Gf


def linear_use_exact(T, g, di, do, K, n, itemsize, full, n_emb=None) -> bool:
    """Cost model of the module docstring (per pair of n-sample tiles)."""
    if FORCE_FORM is not None:
        return FORCE_FORM == "exact"
    kk = K * K if full else K
    if n_emb is not None:  # embedding: A is one-hot of size n_emb
        di = n_emb
    mat_bytes = K * n * g * di * do * itemsize
    mat_flops = K * n * T * g * di * do + kk * n * g * di * do
    exact_flops = n * T * T * g * (1 if n_emb is not None else di) + kk * n * T * T * g * do
    return T == 1 and n_emb is None or exact_flops <= mat_flops or mat_bytes > MATERIALIZE_BUDGET_BYTES


def linear_materialize(A, ids, G, n_emb):
    """Per-sample weight gradients (K, N, g*do*di) in the weight's flattening order."""
    K, N, T, g, do = G.shape
    if ids is not None:
        out = G.new_zeros(K, N * n_emb, do)
        rows = (torch.arange(N, device=ids.device)[:, None] * n_emb + ids).reshape(-1)
        out.index_add_(1, rows, G.reshape(K, N * T, do))
        return out.reshape(K, N, n_emb * do)
    return torch.einsum("kntgo,ntgi->kngoi", G, A).reshape(K, N, -1)


def linear_summed_weight(feat: Exact, mod) -> torch.Tensor:
    """Sum over samples of the direction-0 weight gradient (for verification), weight-shaped."""
    G0 = feat.G[:1]
    if feat.ids is not None:
        w = linear_materialize(None, feat.ids, G0, mod.num_embeddings)
    else:
        w = linear_materialize(feat.A, None, G0, None)
    return w.sum(1).reshape(mod.weight.shape)


# ---------------------------------------------------------------- norm layers
def norm_xhat(mod: nn.Module, x: torch.Tensor):
    """Normalized input and the dims to sum over (all but sample and parameter dims)."""
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
    """Per-sample [dw, db] (K, N, P) for the requested param names (eval-mode statistics)."""
    K, N = G.shape[:2]
    xhat, dims = norm_xhat(mod, x)
    gd = tuple(d + 1 for d in dims)

    def red(t):  # sum(()) would reduce over every dim
        return (t.sum(gd) if gd else t).reshape(K, N, -1)

    return [red(G * xhat.unsqueeze(0)) if nm == "weight" else red(G) for nm in names]


SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding, nn.modules.batchnorm._BatchNorm,
             nn.LayerNorm, nn.GroupNorm)


def handler_kind(mod: nn.Module) -> str | None:
    """'linear', 'norm' or None (unsupported -> torch.func fallback)."""
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
