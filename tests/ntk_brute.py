"""Independent brute-force eNTK for tests: jacrev of the whole batch output w.r.t. all
trainable parameters flattened, Theta = J J^T (Jacot et al. 2018, eq. 3)."""
import torch
from torch.func import functional_call, jacrev


def brute_entk(model, x1, x2=None):
    """(N1, N2, O, O) eNTK in eval mode; restores model.training."""
    was = model.training
    model.eval()
    try:
        params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

        def jac(x):
            j = jacrev(lambda p: functional_call(model, p, (x,)))(params)
            n = x.shape[0]
            flat = torch.cat([v.reshape(n, -1, v[0, 0].numel()) if v.dim() > 1 else v
                              for v in (j[k].reshape(n, -1, params[k].numel()) for k in params)],
                             dim=2)
            return flat  # (N, O, P)

        j1 = jac(x1)
        j2 = j1 if x2 is None else jac(x2)
        return torch.einsum("nkp,mlp->nmkl", j1, j2)
    finally:
        model.train(was)
