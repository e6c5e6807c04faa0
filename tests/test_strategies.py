"""Built-in strategies on known small cases, and look-ahead against a brute-force refit."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from entk_al.ntk import pntk
from entk_al.round.context import RoundContext
from strategies import REGISTRY, top_k


def make_ctx(model, x_pool, labeled, labels, candidates, num_classes, seed=0):
    unl = np.setdiff1d(np.arange(len(x_pool)), labeled)
    return RoundContext(round=0, seed=seed, model=model, device=torch.device("cpu"), pool=x_pool,
                        num_classes=num_classes, labeled_ids=np.asarray(labeled), labeled_targets=np.asarray(labels),
                        unlabeled_ids=unl, candidate_ids=np.asarray(candidates),
                        rng=np.random.default_rng(seed), torch_generator=torch.Generator().manual_seed(seed),
                        oracle=lambda ids: np.zeros(len(ids), dtype=np.int64),
                        kernel_fn=lambda m, a, b=None: pntk(m, a, b))


class FixedLogits(nn.Module):
    """A 'model' whose logits are a lookup table indexed by the first input feature."""

    def __init__(self, table):
        super().__init__()
        self.table = table
        self.readout = nn.Linear(1, 1)

    def forward(self, x):
        self.readout(x[:, :1])  # gives the feature hook something to see
        return self.table[x[:, 0].long()]


def uncertainty_ctx():
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.34, 0.33, 0.33],
                          [0.5, 0.5, 0.0], [0.7, 0.2, 0.1]])
    model = FixedLogits(torch.log(probs))
    x = torch.arange(5, dtype=torch.float32)[:, None]
    return make_ctx(model, x, [], [], np.arange(5), 3), probs


def test_entropy_margin_least_confidence_known_answers():
    ctx, probs = uncertainty_ctx()
    # entropy: the near-uniform row 2 first, then row 1
    assert REGISTRY["entropy"]().select(ctx, 2).tolist() == [2, 1]
    # margin: rows 3 (gap 0) and 2 (gap 0.01)
    assert REGISTRY["margin"]().select(ctx, 2).tolist() == [3, 2]
    # least confidence: rows 2 (max .34) and 1 (max .4)
    assert REGISTRY["least_confidence"]().select(ctx, 2).tolist() == [2, 1]


def test_top_k_stable_ties_and_nan_last():
    ids = np.array([10, 11, 12, 13])
    assert top_k(ids, np.array([1.0, 2.0, 2.0, np.nan]), 3).tolist() == [11, 12, 10]


def test_random_is_seeded_and_within_candidates():
    ctx, _ = uncertainty_ctx()
    a = REGISTRY["random"]().select(ctx, 3)
    ctx2, _ = uncertainty_ctx()
    assert a.tolist() == REGISTRY["random"]().select(ctx2, 3).tolist()
    assert set(a) <= set(range(5)) and len(set(a)) == 3


def test_lookahead_selects_brute_force_top_k():
    """MLMOC top-k equals scores from a dense refit per candidate on a float64 pNTK."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x = torch.randn(30, 4, dtype=torch.float64)
    labeled = np.arange(0, 8)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    cand = np.arange(8, 30)
    ctx = make_ctx(model, x, labeled, labels, cand, 3)
    strat = REGISTRY["lookahead"](ridge_rel=1e-2)
    got = strat.select(ctx, 5)

    # brute force: J from torch.func, kernel = J_s J_s^T, solve per candidate
    params = dict(model.named_parameters())

    def s(p, xi):
        return torch.func.functional_call(model, p, (xi[None],)).sum() / np.sqrt(3)

    jac = torch.func.vmap(torch.func.grad(s), in_dims=(None, 0))(params, x)
    j = torch.cat([v.reshape(len(x), -1) for v in jac.values()], 1)
    k = (j @ j.T).detach()
    with torch.no_grad():
        f = model(x)
    xl, xu = torch.as_tensor(labeled), torch.as_tensor(cand)
    ridge = 1e-2 * float(k[xl][:, xl].diagonal().sum()) / len(xl)
    yl = F.one_hot(torch.as_tensor(labels), 3).double()
    scores = []
    for jj in range(len(cand)):
        xp = torch.cat([xl, xu[jj:jj + 1]])
        yp = torch.cat([yl, F.one_hot(f[xu[jj]].argmax(), 3).double()[None]])
        kp = k[xp][:, xp] + ridge * torch.eye(len(xp), dtype=torch.float64)
        pred = f[xu] + k[xu][:, xp] @ torch.linalg.solve(kp, yp - f[xp])
        scores.append(float((pred - f[xu]).norm(dim=1).sum()))
    expected = cand[np.argsort(-np.array(scores), kind="stable")[:5]]
    assert got.tolist() == expected.tolist()
    assert ctx.info["jitter"] == 0.0
