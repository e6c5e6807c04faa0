"""Small random look-ahead problems shared by the look-ahead tests (float64, CPU)."""

import torch


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
