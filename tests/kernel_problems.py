"""Small random look-ahead problems shared by the look-ahead tests (float64, CPU), and a
brute-force pNTK of a real network."""

import copy
import math

import torch
from torch.func import functional_call, jacrev


def problem(seed=0, n=7, m=15, o=4, p=40):
    """A positive semi-definite kernel from p random features, split into labeled (n) and
    evaluation (m) blocks, with one-hot labels, noisy outputs on L and random outputs on U."""
    g = torch.Generator().manual_seed(seed)
    phi = torch.randn(n + m, p, generator=g, dtype=torch.float64)
    k = phi @ phi.T / p
    y_l = torch.nn.functional.one_hot(torch.randint(0, o, (n,), generator=g), o).double()
    f_l = y_l + 0.3 * torch.randn(n, o, generator=g, dtype=torch.float64)
    f_u = torch.randn(m, o, generator=g, dtype=torch.float64)
    return dict(k_ll=k[:n, :n], k_ul=k[n:, :n], k_uu=k[n:, n:], f_l=f_l, y_l=y_l, f_u=f_u)


def brute_pntk(model, x):
    """Sum-of-logits pNTK ⟨∇θ s(x), ∇θ s(x')⟩, s = Σ_k f_k/√O (arXiv 2206.12543), from
    torch.func Jacobians of a float64 copy of ``model`` in eval mode: (N, N) float64."""
    model = copy.deepcopy(model).double().eval()
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    n_out = model(x[:1].double()).shape[1]
    j = jacrev(lambda p: functional_call(model, p, (x.double(),)).sum(dim=1) / math.sqrt(n_out))(params)
    jac = torch.cat([j[k].reshape(len(x), -1) for k in params], dim=1)
    return jac @ jac.T
