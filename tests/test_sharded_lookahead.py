"""Look-ahead scoring on shards: equal to a direct kernel-regression refit (float64), to the
in-process posterior for every option, and bit-identical under scattered tiles (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_executor import TILE, ScatteredExecutor
from torch import nn

from entk_al.executor import LocalExecutor
from entk_al.lookahead.posterior import Posterior, select_lookahead, uncertainty_weights
from entk_al.lookahead.system import cholesky_with_jitter, fit_lookahead
from entk_al.ntk import PNTK, pntk
from entk_al.scans.sharded_posterior import fit_on_shards

RIDGE = 0.05
N_OUT = 4


@pytest.fixture(scope="module")
def pr_base():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(160, 6, generator=gen, dtype=torch.float64)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, N_OUT)).double().eval()
    rng = np.random.default_rng(1)
    perm = rng.permutation(len(x))
    lab, u = np.sort(perm[:9]), np.sort(perm[9:59])  # U spans every one of the 10 tiles of 16
    cand_pos = np.sort(rng.choice(len(u), 30, replace=False))  # candidates: part of U
    with torch.no_grad():
        f = model(x)
    y_l = torch.nn.functional.one_hot(torch.from_numpy(rng.integers(N_OUT, size=len(lab))), N_OUT).double()
    return dict(x=x, model=model, lab=lab, u=u, cand_pos=cand_pos, f=f, y_l=y_l)


@pytest.fixture(params=["subset", "all"])
def pr(request, pr_base):
    """Candidates: part of U, or all of U (then B = k(U, U) is symmetric: the feature path
    computes each entry once and sends the transposes between tiles)."""
    if request.param == "subset":
        return pr_base
    return dict(pr_base, cand_pos=np.arange(len(pr_base["u"])))


#: kernel paths: per tile (any kernel function: the columns' inputs go to every tile) and the
#: feature kernel (each input's features once per shard, entk_al.scans.feature_store)
KERNELS = ["per_tile", "features"]


def _fit(ex, pr, dense=True, reference="network", kernel="features"):
    x, lab = pr["x"], pr["lab"]
    k_ll = pntk(pr["model"], x[lab])
    chol, jitter = cholesky_with_jitter(k_ll, RIDGE)
    alpha = torch.cholesky_solve(pr["y_l"] - pr["f"][lab], chol)
    cand_ids = pr["u"][pr["cand_pos"]]
    extra = {} if kernel == "per_tile" else dict(lab_ids=lab, cand_ids=cand_ids, probe=x[:4])
    post, bad = fit_on_shards(ex, pntk if kernel == "per_tile" else PNTK, u_ids=pr["u"], cand_pos=pr["cand_pos"],
                              x_lab=x[lab], x_cand=x[cand_ids], chol=chol, alpha=alpha, ridge_eff=RIDGE + jitter,
                              jitter=jitter, dense=dense, reference=reference, **extra)
    assert post is not None and bad.size == 0 and jitter == 0.0
    return post


def test_fit_on_shards_takes_ridge_eff_and_the_old_keyword_warns(pr_base):
    pr = pr_base
    x, lab = pr["x"], pr["lab"]
    chol, jitter = cholesky_with_jitter(pntk(pr["model"], x[lab]), RIDGE)
    args = dict(u_ids=pr["u"], cand_pos=pr["cand_pos"], x_lab=x[lab], x_cand=x[pr["u"][pr["cand_pos"]]], chol=chol,
                alpha=torch.cholesky_solve(pr["y_l"] - pr["f"][lab], chol), jitter=jitter, dense=True)
    new, _ = fit_on_shards(_local(pr), pntk, ridge_eff=RIDGE + jitter, **args)
    with pytest.warns(FutureWarning, match=r"ridge=.*removed in 0\.3.*ridge_eff"):
        old, _ = fit_on_shards(_local(pr), pntk, ridge=RIDGE + jitter, **args)
    assert old.ridge_eff == new.ridge_eff == RIDGE + jitter
    torch.testing.assert_close(old.denominators(torch.arange(5)), new.denominators(torch.arange(5)))
    with pytest.warns(FutureWarning, match="ridge_eff"):
        assert new.ridge == new.ridge_eff
    with pytest.raises(TypeError, match="ridge_eff"):
        fit_on_shards(_local(pr), pntk, **args)


def _local(pr, tile_size=TILE):
    ex = LocalExecutor(pr["x"], tile_size=tile_size)
    ex.begin_round(1, 5, pr["model"])
    return ex


def _scattered(pr, seed):
    ex = ScatteredExecutor(pr["x"], 3, seed)
    ex.begin_round(1, 5, pr["model"])
    return ex


def _refit(pr, extra, labels):
    """f_{L+extra}(U) by a direct kernel regression on L ∪ U[extra], (m, N_OUT) float64."""
    x, model, u = pr["x"], pr["model"], pr["u"]
    ids = np.concatenate([pr["lab"], u[extra]])
    y = torch.cat([pr["y_l"], torch.nn.functional.one_hot(torch.tensor(labels, dtype=torch.long), N_OUT).double()])
    k = pntk(model, x[ids]) + RIDGE * torch.eye(len(ids), dtype=torch.float64)
    return pr["f"][u] + pntk(model, x[u], x[ids]) @ torch.linalg.solve(k, y - pr["f"][ids])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dense", [True, False])
def test_sharded_mlmoc_equals_a_direct_refit_per_candidate(pr, dense, kernel):
    post = _fit(_local(pr), pr, dense=dense, kernel=kernel)
    cand = torch.from_numpy(pr["cand_pos"])
    labels = np.random.default_rng(2).integers(N_OUT, size=len(cand))
    y = torch.nn.functional.one_hot(torch.from_numpy(labels), N_OUT).double()
    got = post.scores(cand, acquisition="mlmoc", y_cand=y)
    f_u = pr["f"][pr["u"]]
    want = torch.stack([(_refit(pr, [int(j)], [int(c)]) - f_u).norm(dim=1).sum() for j, c in zip(cand, labels)])
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


def test_sharded_fold_equals_a_refit_with_the_label_added(pr):
    post = _fit(_local(pr), pr, dense=False)
    j1, y1 = int(pr["cand_pos"][4]), 2
    base0 = post.base.clone()
    post.fold(j1, torch.nn.functional.one_hot(torch.tensor(y1), N_OUT).double())
    torch.testing.assert_close(post.base, _refit(pr, [j1], [y1]), rtol=1e-8, atol=1e-9)
    # Reference "network" moves with base: ref' = f(U) + (base' − base).
    ref = pr["f"][pr["u"]] + (post.base - base0)
    cand = torch.from_numpy(np.setdiff1d(pr["cand_pos"], [j1]))
    y = torch.nn.functional.one_hot(torch.arange(len(cand)) % N_OUT, N_OUT).double()
    got = post.scores(cand, acquisition="mlmoc", y_cand=y)
    want = torch.stack([(_refit(pr, [j1, int(j)], [y1, int(c)]) - ref).norm(dim=1).sum()
                        for j, c in zip(cand, y.argmax(1))])
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


OPTIONS = [
    {"acquisition": "mlmoc"},
    {"acquisition": "flip", "exclude_self": True},
    {"acquisition": "emoc", "variance_power": 1.0},
    {"acquisition": "variance_reduction"},
    {"acquisition": "variance_reduction_error", "exclude_self": True, "weights": True},
    {"acquisition": "flip", "weights": True, "memory_budget_bytes": 4096},  # rows split into chunks
]


@pytest.mark.parametrize("opt", OPTIONS)
@pytest.mark.parametrize("reference", ["network", "base"])
def test_sharded_scores_equal_the_in_process_posterior(pr, opt, reference):
    x, u, lab = pr["x"], pr["u"], pr["lab"]
    sysm = fit_lookahead(pntk(pr["model"], x[lab]), pntk(pr["model"], x[u], x[lab]), pntk(pr["model"], x[u]),
                         pr["f"][lab], pr["y_l"], pr["f"][u], ridge=RIDGE)
    dense_post = Posterior(sysm, reference=reference)
    post = _fit(_local(pr), pr, reference=reference)
    for p in (dense_post, post):  # one fold, then score
        p.fold(int(pr["cand_pos"][7]), torch.nn.functional.one_hot(torch.tensor(1), N_OUT).double())
    cand = torch.from_numpy(pr["cand_pos"])
    o = dict(opt)
    if o.pop("weights", False):
        o["eval_weights"] = uncertainty_weights(post.ref)
    torch.testing.assert_close(post.scores(cand, **o), dense_post.scores(cand, **o), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(post.coef_gram(cand[:6]), (lambda c: c.T @ c)(
        dense_post.m_block(slice(None), cand[:6]) / dense_post.denominators(cand[:6])), rtol=1e-9, atol=1e-12)


def _everything(ex, pr, dense, kernel="features"):
    """Scores for every option, a fold, a Gram block and a 3-step hybrid selection."""
    out = []
    post = _fit(ex, pr, dense=dense, kernel=kernel)
    cand = torch.from_numpy(pr["cand_pos"])
    for opt in OPTIONS if dense else OPTIONS[:2]:  # streamed: every block recomputes its kernel columns
        o = dict(opt)
        if o.pop("weights", False):
            o["eval_weights"] = uncertainty_weights(post.ref)
        out.append(post.scores(cand, **o))
    out.append(post.coef_gram(cand[:8]))
    truth = np.arange(len(pr["u"])) % N_OUT
    picked, info = select_lookahead(post, pr["cand_pos"], 6, mode="hybrid", hybrid_size=2, acquisition="flip",
                                    oracle=lambda pos: truth[pos], selection="kmeanspp",
                                    rng=np.random.default_rng(0), diversity_pool=10)
    out += [torch.from_numpy(picked), torch.tensor(info["pick_scores"]), post.base, post.m_diag, post.u]
    return out


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dense", [True, False])
def test_scattered_tiles_give_bit_identical_lookahead_scores(pr, dense, kernel):
    ref = _everything(_local(pr), pr, dense, kernel)
    for seed in (0, 1, 2) if dense else (0,):
        got = _everything(_scattered(pr, seed), pr, dense, kernel)
        assert all(torch.equal(a, b) for a, b in zip(got, ref))


@pytest.mark.parametrize("kernel", KERNELS)
def test_nonfinite_rows_are_reported(pr, kernel):
    x = pr["x"].clone()
    x[pr["u"][3]] = float("inf")
    p = dict(pr, x=x)
    ex = LocalExecutor(x, tile_size=TILE)
    ex.begin_round(1, 5, pr["model"])
    k_ll = pntk(pr["model"], x[pr["lab"]])
    chol, _ = cholesky_with_jitter(k_ll, RIDGE)
    cand_ids = p["u"][p["cand_pos"]]
    extra = {} if kernel == "per_tile" else dict(lab_ids=p["lab"], cand_ids=cand_ids, probe=x[:4])
    post, bad = fit_on_shards(ex, pntk if kernel == "per_tile" else PNTK, u_ids=p["u"], cand_pos=p["cand_pos"],
                              x_lab=x[p["lab"]], x_cand=x[cand_ids], chol=chol,
                              alpha=torch.zeros(len(p["lab"]), N_OUT), ridge_eff=RIDGE, jitter=0.0, dense=True, **extra)
    assert post is None and bad.tolist() == [int(pr["u"][3])]
