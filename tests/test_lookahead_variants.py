"""Every streamed acquisition equals a brute-force computation from lookahead_outputs."""

import numpy as np
import pytest
import torch
from kernel_problems import problem

from entk_al.lookahead.acquisition import (
    block_shape,
    label_probabilities,
    lookahead_scores,
    project_simplex,
    pseudo_labels,
)
from entk_al.lookahead.posterior import Posterior
from entk_al.lookahead.system import fit_lookahead, lookahead_outputs


def brute(pr, acquisition, exclude_self, ridge):
    m, o = pr["f_u"].shape
    cand = torch.arange(m)
    ref = pr["f_u"]
    labels = range(o) if acquisition == "emoc" else [None]
    total = torch.zeros(m, dtype=torch.float64)
    for lab in labels:
        y = pseudo_labels(ref) if lab is None else torch.nn.functional.one_hot(torch.full((m,), lab), o).double()
        out = lookahead_outputs(pr["k_ll"], pr["k_ul"], pr["k_uu"], pr["f_l"], pr["y_l"], pr["f_u"], cand=cand,
                                y_cand=y, ridge=ridge)  # (C, m, O)
        if acquisition == "flip":
            per = (out.argmax(dim=2) != ref.argmax(dim=1)).double()
        else:
            per = (out - ref.unsqueeze(0)).norm(dim=2)
        if exclude_self:
            per[cand, cand] = 0.0
        s = per.sum(dim=1)
        if acquisition == "flip":
            s = s / (m - 1 if exclude_self else m)
        if lab is not None:
            s = s * label_probabilities(ref)[:, lab]
        total += s
    return total


@pytest.mark.parametrize("acquisition", ["mlmoc", "flip", "emoc"])
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("budget", [1, 10**9])  # 1 byte: 1-row blocks; huge: a single block
def test_streamed_scores_match_brute_force(acquisition, exclude_self, budget):
    pr = problem()
    ridge = 0.05
    sysm = fit_lookahead(pr["k_ll"], pr["k_ul"], pr["k_uu"], pr["f_l"], pr["y_l"], pr["f_u"], ridge=ridge)
    got = lookahead_scores(Posterior(sysm), torch.arange(15), acquisition=acquisition,
                           exclude_self=exclude_self, memory_budget_bytes=budget)
    want = brute(pr, acquisition, exclude_self, ridge)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_subset_of_candidates_and_order():
    pr = problem(seed=3)
    sysm = fit_lookahead(pr["k_ll"], pr["k_ul"], pr["k_uu"], pr["f_l"], pr["y_l"], pr["f_u"], ridge=0.01)
    full = lookahead_scores(Posterior(sysm), torch.arange(15))
    sub = torch.tensor([9, 2, 14])
    torch.testing.assert_close(lookahead_scores(Posterior(sysm), sub), full[sub])


def test_flip_counts_known_case():
    # One eval point; its argmax flips iff the candidate's pull exceeds the margin.
    pr = problem(seed=5, m=2, o=2)
    sysm = fit_lookahead(pr["k_ll"], pr["k_ul"], pr["k_uu"], pr["f_l"], pr["y_l"], pr["f_u"], ridge=0.0)
    got = lookahead_scores(Posterior(sysm), torch.arange(2), acquisition="flip")
    assert set(got.tolist()) <= {0.0, 0.5, 1.0}


def test_simplex_projection_against_scipy():
    from scipy.optimize import minimize

    g = torch.Generator().manual_seed(1)
    v = torch.randn(5, 4, generator=g, dtype=torch.float64)
    p = project_simplex(v)
    assert torch.allclose(p.sum(dim=1), torch.ones(5, dtype=torch.float64)) and (p >= 0).all()
    for row, proj in zip(v.numpy(), p.numpy()):
        res = minimize(lambda x, row=row: ((x - row) ** 2).sum(), np.full(4, 0.25), method="SLSQP",
                       bounds=[(0, None)] * 4, constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}],
                       options={"ftol": 1e-12})
        np.testing.assert_allclose(proj, res.x, atol=1e-5)


def test_block_shape_respects_budget():
    for m, c, per, budget in [(4000, 4000, 48, 256 * 2**20), (20000, 100, 48, 2**20), (10, 3, 8, 1)]:
        r, cc = block_shape(m, c, per, budget)
        assert 1 <= r <= m and 1 <= cc <= c
        assert r * cc * per <= max(budget, per * min(32, c))


def test_unknown_acquisition():
    pr = problem()
    sysm = fit_lookahead(pr["k_ll"], pr["k_ul"], pr["k_uu"], pr["f_l"], pr["y_l"], pr["f_u"])
    with pytest.raises(ValueError, match="acquisition"):
        lookahead_scores(Posterior(sysm), torch.arange(3), acquisition="bald")
