"""The GP posterior (entk_al.lookahead.gp), its scores (entk_al.lookahead.gp_scores) and the GP strategies.

Independent references: the pNTK from per-sample ``torch.func`` Jacobians in float64 and an
explicit kernel solve (posterior mean, covariance, conditioning = a refit with the points
added); leave-one-out by literally refitting without each point; the marginal likelihood
maximized numerically (scipy); Gauss–Hermite quadrature for the Gaussian–softmax integrals
that the Monte Carlo and closed-form estimators approximate; Gaussian mutual information from
log-determinants; and, on the digits round of tests/fakes.py, the strategies' picks against the
same scores recomputed from an explicit kernel.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from test_executor import ScatteredExecutor
from torch import nn
from torch.func import functional_call, jacrev, vmap

from entk_al.errors import StrategyError
from entk_al.lookahead.gp import GPPosterior, fit_gp, loo_predictive, output_scale
from entk_al.lookahead.gp_scores import (
    bald_mc,
    bald_probit,
    epig_gaussian,
    epig_mc,
    expected_probs,
    link_probs,
    sample_probs,
    z_margin,
)
from entk_al.lookahead.posterior import Posterior
from entk_al.lookahead.system import fit_lookahead
from entk_al.ntk import PNTK
from entk_al.round.context import RoundContext
from entk_al.seeding import numpy_rng, torch_generator
from strategies import NTKBALD, NTKEPIG, NTKVariance, NTKZMargin
from strategies.epig import read_target_ids

from fakes import digits_round

F64 = torch.float64
N_OUT = 4
RIDGE_REL = 1e-2


def brute_pntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """pNTK from per-sample Jacobians of s(x) = Σ_k f_k(x)/√O (float64 via the inputs' dtype)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def s(p, x):
        out = functional_call(model, p, (x.unsqueeze(0),))[0]
        return out.sum() / math.sqrt(out.shape[0])

    def flat(x):
        jac = vmap(jacrev(s), in_dims=(None, 0))(params, x)
        return torch.cat([v.reshape(len(x), -1) for v in jac.values()], dim=1)

    return flat(x1) @ flat(x2).T


@pytest.fixture(scope="module")
def problem():
    """A float64 MLP on random inputs; 12 labeled ids, 40 evaluation ids spread over the tiles."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(120, 5, generator=gen, dtype=F64)
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, N_OUT)).double().eval()
    rng = np.random.default_rng(3)
    perm = rng.permutation(len(x))
    lab, u = np.sort(perm[:12]), np.sort(perm[12:52])
    y = rng.integers(N_OUT, size=len(x))
    return dict(x=x, model=model, lab=lab, u=u, y=y)


def make_ctx(pr, executor=None, cand=None):
    lab = pr["lab"]
    unl = np.setdiff1d(np.arange(len(pr["x"])), lab)
    if executor is not None:
        executor.begin_round(1, 7, pr["model"])
    return RoundContext(round=1, seed=7, model=pr["model"], device=torch.device("cpu"), pool=pr["x"],
                        num_classes=N_OUT, labeled_ids=lab, labeled_targets=pr["y"][lab], unlabeled_ids=unl,
                        candidate_ids=pr["u"] if cand is None else cand, rng=numpy_rng(7, 1, "strategy"),
                        torch_generator=torch_generator(7, 1, "strategy"), oracle=lambda ids: pr["y"][ids],
                        kernel_fn=PNTK, executor=executor)


def explicit(pr, extra=()):
    """Brute-force posterior on U given L ∪ U[extra]: (mean (m, O), M (m, m), λ)."""
    x, model, lab, u = pr["x"], pr["model"], pr["lab"], pr["u"]
    k_ll0 = brute_pntk(model, x[lab], x[lab])
    lam = RIDGE_REL * float(k_ll0.diagonal().sum()) / len(lab)
    ids = np.concatenate([lab, u[list(extra)]]).astype(np.int64)
    k = brute_pntk(model, x[ids], x[ids]) + lam * torch.eye(len(ids), dtype=F64)
    a = brute_pntk(model, x[u], x[ids])
    with torch.no_grad():
        f = model(x)
    resid = torch.nn.functional.one_hot(torch.from_numpy(pr["y"][lab]), N_OUT).to(F64) - f[lab]
    mean = f[u] + a[:, :len(lab)] @ torch.linalg.solve(k[:len(lab), :len(lab)], resid)
    m = brute_pntk(model, x[u], x[u]) - a @ torch.linalg.solve(k, a.T)
    return mean, m, lam


# -- the posterior object -------------------------------------------------------------------
@pytest.mark.parametrize("scale", [0.37, "loo", "prior"])
def test_gp_mean_and_covariance_equal_an_explicit_kernel_solve(problem, scale):
    ctx = make_ctx(problem)
    gp = fit_gp(ctx, problem["u"], ridge_rel=RIDGE_REL, scale=scale)
    mean, m, lam = explicit(problem)
    assert np.array_equal(gp.ids, problem["u"]) and gp.ridge == pytest.approx(lam, rel=1e-12)
    s2 = gp.scale
    if scale == 0.37:
        assert s2 == 0.37
    assert ctx.info["output_scale"] == s2 and ctx.info["output_scale_method"] == (
        "fixed" if scale == 0.37 else scale)
    torch.testing.assert_close(gp.mean(), mean, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(gp.variance(), s2 * m.diagonal(), rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(gp.predictive_variance(), s2 * (m.diagonal() + lam), rtol=1e-7, atol=1e-10)
    rows, cols = np.array([0, 5, 39, 17]), np.array([3, 0, 22])
    torch.testing.assert_close(gp.covariance(rows, cols), s2 * m[rows][:, cols], rtol=1e-7, atol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(gp.outputs(), problem["model"](problem["x"][problem["u"]]))
    assert gp.positions(problem["u"][[4, 2]]).tolist() == [4, 2]
    with pytest.raises(ValueError, match="not in the posterior"):
        gp.positions(problem["lab"][:1])


def test_conditioning_equals_a_refit_with_the_points_added(problem):
    """Label-free conditioning on U[j1], U[j2]: covariance = a refit on L ∪ {j1, j2}; mean unchanged."""
    ctx = make_ctx(problem)
    gp = fit_gp(ctx, problem["u"], ridge_rel=RIDGE_REL, scale=2.0)
    mean0 = gp.mean().clone()
    gp.condition([7, 30])
    _, m2, _ = explicit(problem, extra=(7, 30))
    torch.testing.assert_close(gp.variance(), 2.0 * m2.diagonal(), rtol=1e-6, atol=1e-9)
    rows, cols = np.arange(0, 40, 3), np.array([1, 7, 30, 38])
    torch.testing.assert_close(gp.covariance(rows, cols), 2.0 * m2[rows][:, cols], rtol=1e-6, atol=1e-9)
    assert torch.equal(gp.mean(), mean0) and gp.conditioned == [7, 30]


def test_dense_posterior_offers_the_same_gp(problem):
    """The in-process Posterior (sequential.py) wrapped in GPPosterior gives the same numbers."""
    x, model, lab, u = problem["x"], problem["model"], problem["lab"], problem["u"]
    mean, m, lam = explicit(problem)
    with torch.no_grad():
        f = model(x)
    y_l = torch.nn.functional.one_hot(torch.from_numpy(problem["y"][lab]), N_OUT).to(F64)
    sysm = fit_lookahead(brute_pntk(model, x[lab], x[lab]), brute_pntk(model, x[u], x[lab]),
                         brute_pntk(model, x[u], x[u]), f[lab], y_l, f[u], ridge=lam)
    gp = GPPosterior(Posterior(sysm), u, 0.5)
    torch.testing.assert_close(gp.variance(), 0.5 * m.diagonal(), rtol=1e-8, atol=1e-10)
    gp.condition(3)
    _, m1, _ = explicit(problem, extra=(3,))
    torch.testing.assert_close(gp.covariance(np.arange(40), [3, 9]), 0.5 * m1[:, [3, 9]], rtol=1e-7, atol=1e-10)
    with pytest.raises(ValueError, match="output scale"):
        GPPosterior(Posterior(sysm), u, -1.0)


# -- the output scale ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def labeled():
    gen = torch.Generator().manual_seed(5)
    phi = torch.randn(15, 6, generator=gen, dtype=F64)
    k = phi @ phi.T
    y = torch.nn.functional.one_hot(torch.arange(15) % 3, 3).to(F64)
    resid = y - 0.8 * y - 0.05 * torch.randn(15, 3, generator=gen, dtype=F64)
    return k, y, resid, 0.3


def test_loo_formula_equals_literally_leaving_each_point_out(labeled):
    k, _, t, lam = labeled
    resid, var = loo_predictive(k, t, lam)
    for i in range(len(k)):
        rest = np.setdiff1d(np.arange(len(k)), [i])
        kr = k[rest][:, rest] + lam * torch.eye(len(rest), dtype=F64)
        mu = k[i, rest] @ torch.linalg.solve(kr, t[rest])
        v = k[i, i] + lam - k[i, rest] @ torch.linalg.solve(kr, k[rest, i])
        torch.testing.assert_close(resid[i], t[i] - mu, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(var[i], v, rtol=1e-9, atol=1e-12)
    # σ²_LOO maximizes Σ log N(e_io; 0, σ² v_i): the literal argmax
    e, v = resid, var[:, None].expand_as(resid)
    nll = lambda log_s2: float(0.5 * (torch.log(2 * math.pi * math.exp(log_s2) * v)  # noqa: E731
                                      + e * e / (math.exp(log_s2) * v)).sum())
    best = math.exp(minimize_scalar(nll, bounds=(-20, 5), method="bounded", options={"xatol": 1e-10}).x)
    assert output_scale(k, t, None, lam, "loo") == pytest.approx(best, rel=1e-6)


@pytest.mark.parametrize("method", ["ml", "ml_labels"])
def test_ml_scale_maximizes_the_marginal_likelihood(labeled, method):
    k, y, resid, lam = labeled
    t = resid if method == "ml" else y - 1.0 / 3
    cov = k + lam * torch.eye(len(k), dtype=F64)

    def nll(log_s2):
        dist = torch.distributions.MultivariateNormal(torch.zeros(len(k), dtype=F64), math.exp(log_s2) * cov)
        return -float(dist.log_prob(t.T).sum())  # O independent outputs

    best = math.exp(minimize_scalar(nll, bounds=(-20, 5), method="bounded", options={"xatol": 1e-10}).x)
    assert output_scale(k, resid, y, lam, method) == pytest.approx(best, rel=1e-6)


def test_label_and_prior_scales(labeled):
    k, y, resid, lam = labeled
    # loo_labels is loo on the centred labels
    assert output_scale(k, resid, y, lam, "loo_labels") == output_scale(k, y - 1.0 / 3, None, lam, "loo")
    # prior: per-class label variance (class frequencies 1/3 each) over the mean kernel diagonal
    assert output_scale(k, resid, y, lam, "prior") == pytest.approx((2 / 9) / float(k.diagonal().mean()), rel=1e-12)
    with pytest.raises(ValueError, match="needs the one-hot labels"):
        output_scale(k, resid, None, lam, "prior")
    with pytest.raises(ValueError, match="must be one of"):
        output_scale(k, resid, y, lam, "bogus")
    with pytest.raises(ValueError, match="empty labeled set"):
        output_scale(k[:0, :0], resid[:0], y[:0], lam, "ml")


# -- the scores on known Gaussians -----------------------------------------------------------
def _hermite(n=80):
    z, w = np.polynomial.hermite_e.hermegauss(n)  # ∫ g(z) φ(z) dz ≈ Σ w g(z) / √(2π)
    return torch.from_numpy(z), torch.from_numpy(w / math.sqrt(2 * math.pi))


MEANS = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.5, 0.3], [0.2, 0.9], [4.0, 0.0]], dtype=F64)
VARS = torch.tensor([0.05, 0.5, 2.0, 1.0, 9.0], dtype=F64)


def _binary_reference(mean, var):
    """E[softmax] and BALD for O = 2 by quadrature over d = f_0 − f_1 ~ N(μ_0 − μ_1, 2v)."""
    z, w = _hermite()
    d = (mean[:, 0] - mean[:, 1])[:, None] + torch.sqrt(2 * var)[:, None] * z[None]
    p = torch.sigmoid(d)  # P(class 0)
    h = -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p))
    p_bar = (w * p).sum(1)
    bald = -(torch.xlogy(p_bar, p_bar) + torch.xlogy(1 - p_bar, 1 - p_bar)) - (w * h).sum(1)
    return torch.stack([p_bar, 1 - p_bar], 1), bald


def test_monte_carlo_bald_and_expected_softmax_match_quadrature():
    eps = torch.from_numpy(np.random.default_rng(0).standard_normal((200_000, len(VARS), 2)))
    p_ref, bald_ref = _binary_reference(MEANS, VARS)
    torch.testing.assert_close(bald_mc(MEANS, VARS, eps), bald_ref, rtol=0, atol=3e-3)
    torch.testing.assert_close(expected_probs(MEANS, VARS, eps), p_ref, rtol=0, atol=3e-3)


def test_closed_forms_approximate_the_same_integrals():
    """Probit closed forms vs quadrature of the softmax integrals (O = 2): within the known
    accuracy of σ(x) ≈ Φ(√(π/8)x) and Houlsby's h(Φ(x)) ≈ exp(−x²/(π ln 2))."""
    p_ref, bald_ref = _binary_reference(MEANS, VARS)
    torch.testing.assert_close(expected_probs(MEANS, VARS), p_ref, rtol=0, atol=0.02)
    closed = bald_probit(MEANS, VARS)
    torch.testing.assert_close(closed, bald_ref, rtol=0.1, atol=0.01)
    # same ranking as the exact values
    assert closed.argsort().tolist() == bald_ref.argsort().tolist()
    # no variance, (almost) no information: Houlsby's approximation error, clamped at 0
    none = bald_probit(MEANS, torch.zeros(5, dtype=F64))
    assert none.min() >= 0 and none.max() < 2e-3


def test_simplex_link_and_z_margin():
    f = torch.tensor([[0.9, 0.2, -0.1], [0.4, 0.4, 0.4]], dtype=F64)
    p = link_probs(f, "simplex")
    torch.testing.assert_close(p, torch.tensor([[0.85, 0.15, 0.0], [1 / 3, 1 / 3, 1 / 3]], dtype=F64))
    eps = torch.zeros(3, 2, 3, dtype=F64)
    torch.testing.assert_close(sample_probs(f, torch.ones(2, dtype=F64), eps, "simplex")[1], p)
    assert bald_mc(f, torch.ones(2, dtype=F64), eps, "simplex").abs().max() < 1e-12  # one repeated draw
    torch.testing.assert_close(z_margin(f, torch.tensor([4.0, 1.0], dtype=F64)),
                               torch.tensor([0.35, 0.0], dtype=F64))
    with pytest.raises(ValueError, match="link"):
        link_probs(f, "sigmoid")
    with pytest.raises(ValueError, match="softmax link"):
        expected_probs(f, torch.ones(2, dtype=F64), None, "simplex")


def _epig_reference(mu_c, v_c, mu_t, v_t, c):
    """I(y; y*) for O = 2 with (f_c, f_t) jointly Gaussian per class (cov c), by 2-D quadrature."""
    z, w = _hermite(60)
    e1, e2 = z[:, None], z[None, :]
    w2 = w[:, None] * w[None, :]
    rho = c / math.sqrt(v_c * v_t)
    joint = torch.zeros(2, 2, dtype=F64)
    # each class's pair (f_c,k, f_t,k) independent across k: integrate the 4-D product by iterating
    draws = []
    for k in range(2):
        fc = mu_c[k] + math.sqrt(v_c) * e1
        ft = mu_t[k] + math.sqrt(v_t) * (rho * e1 + math.sqrt(1 - rho * rho) * e2)
        draws.append((fc.expand(60, 60), ft.expand(60, 60)))
    # softmax over two classes: p_c(0) = σ(f_c0 − f_c1); integrate over the 4 normals
    (fc0, ft0), (fc1, ft1) = draws
    pc0 = torch.sigmoid(fc0[:, :, None, None] - fc1[None, None])
    pt0 = torch.sigmoid(ft0[:, :, None, None] - ft1[None, None])
    ww = w2[:, :, None, None] * w2[None, None]
    for a in range(2):
        for b in range(2):
            pa = pc0 if a == 0 else 1 - pc0
            pb = pt0 if b == 0 else 1 - pt0
            joint[a, b] = (ww * pa * pb).sum()
    mc, mt = joint.sum(1), joint.sum(0)
    return float((joint * torch.log(joint / (mc[:, None] * mt[None, :]))).sum())


def test_monte_carlo_epig_matches_quadrature_of_the_joint_gaussian():
    mu_c = torch.tensor([[0.5, -0.2], [0.0, 0.0]], dtype=F64)
    v_c = torch.tensor([1.5, 0.8], dtype=F64)
    mu_t = torch.tensor([[0.1, 0.3]], dtype=F64)
    v_t = torch.tensor([2.0], dtype=F64)
    cov = torch.tensor([[1.2, -0.3]], dtype=F64)  # (T, C)
    rng = np.random.default_rng(1)
    eps_c = torch.from_numpy(rng.standard_normal((100_000, 2, 2)))
    eps_t = torch.from_numpy(rng.standard_normal((100_000, 1, 2)))
    got = epig_mc(mu_c, v_c, mu_t, v_t, cov, eps_c, eps_t, chunk=1)
    want = torch.tensor([_epig_reference(mu_c[j], float(v_c[j]), mu_t[0], float(v_t[0]), float(cov[0, j]))
                         for j in range(2)], dtype=F64)
    torch.testing.assert_close(got, want, rtol=0.05, atol=2e-4)
    # uncorrelated: no information (the estimator's bias is O(1/S))
    zero = epig_mc(mu_c, v_c, mu_t, v_t, torch.zeros(1, 2, dtype=F64), eps_c, eps_t)
    assert zero.max() < 1e-4 and zero.min() >= 0


def test_gaussian_epig_equals_the_log_determinant_formula():
    var_c = torch.tensor([1.0, 2.0, 0.5], dtype=F64)
    var_t = torch.tensor([1.5, 0.7], dtype=F64)
    cov = torch.tensor([[0.9, -0.4, 0.1], [0.2, 1.1, 0.0]], dtype=F64)
    noise, n_out = 0.25, 3
    got = epig_gaussian(var_c, var_t, cov, noise, n_out)
    want = torch.zeros(3, dtype=F64)
    for j in range(3):
        for t in range(2):
            s = torch.tensor([[var_c[j] + noise, cov[t, j]], [cov[t, j], var_t[t] + noise]], dtype=F64)
            mi = 0.5 * torch.log(s[0, 0] * s[1, 1] / torch.linalg.det(s))
            want[j] += n_out * mi / 2
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(epig_gaussian(7 * var_c, 7 * var_t, 7 * cov, 7 * noise, n_out), got)


# -- strategies ------------------------------------------------------------------------------
def _digits_explicit(setup, ctx, ridge_rel=1e-3, extra=()):
    """Explicit float64 posterior on the digits round's candidates given L ∪ cand[extra]:
    (mean, M, f(U), λ). The kernel is the round's float32 pNTK, solved in float64."""
    model, x = ctx.model, setup.x_pool
    lab, u = setup.labeled_ids, setup.candidate_ids
    k_all = ctx.kernel(np.concatenate([lab, u])).to(F64)
    k_all = 0.5 * (k_all + k_all.T)
    n = len(lab)
    lam = ridge_rel * float(k_all[:n, :n].diagonal().sum()) / n
    with torch.no_grad():
        f = model(x).to(F64)
    y = torch.nn.functional.one_hot(torch.from_numpy(setup.y_pool.numpy()[lab]), setup.num_classes).to(F64)
    a = k_all[n:, :n]
    mean = f[u] + a @ torch.linalg.solve(k_all[:n, :n] + lam * torch.eye(n, dtype=F64), y - f[lab])
    obs = np.concatenate([np.arange(n), n + np.asarray(extra, dtype=np.int64)])
    k_obs = k_all[obs][:, obs] + lam * torch.eye(len(obs), dtype=F64)
    a_obs = k_all[n:][:, obs]
    m = k_all[n:, n:] - a_obs @ torch.linalg.solve(k_obs, a_obs.T)
    return mean, m, f[u], lam


def test_strategies_pick_the_top_scores_of_an_explicit_posterior():
    setup = digits_round()
    ctx = setup.context()
    mean, m, f_u, lam = _digits_explicit(setup, ctx)
    u = setup.candidate_ids
    var = m.diagonal().clamp_min(0)
    # ntk_variance: top-5 diag M
    got = NTKVariance().select(setup.context(), 5)
    assert got.tolist() == u[torch.argsort(-var, stable=True)[:5].numpy()].tolist()
    # ntk_zmargin: smallest network margin / √M_jj
    top2 = f_u.topk(2, dim=1).values
    z = (top2[:, 0] - top2[:, 1]) / var.sqrt()
    got = NTKZMargin().select(setup.context(), 5)
    assert got.tolist() == u[torch.argsort(z, stable=True)[:5].numpy()].tolist()
    # ntk_bald, probit closed form, fixed σ²: top-5 of bald_probit on the explicit posterior
    c2 = setup.context()
    got = NTKBALD(estimator="probit", output_scale=0.05).select(c2, 5)
    b = bald_probit(mean, 0.05 * var)
    assert got.tolist() == u[torch.argsort(-b, stable=True)[:5].numpy()].tolist()
    assert c2.info["output_scale"] == 0.05 and c2.info["estimator"] == "probit"


def test_greedy_variance_equals_refitting_after_each_pick():
    """batch=greedy: each pick is the largest variance of a posterior refit on L ∪ the earlier picks."""
    setup = digits_round()
    ctx = setup.context()
    u = setup.candidate_ids
    picks: list[int] = []
    for _ in range(8):
        _, m, _, _ = _digits_explicit(setup, ctx, extra=picks)
        var = m.diagonal().clone()
        var[picks] = -math.inf
        picks.append(int(torch.argmax(var)))
    got = NTKVariance(batch="greedy").select(setup.context(), 8)
    assert got.tolist() == u[picks].tolist()
    # and it is not top-k: conditioning moved later picks
    assert got.tolist() != NTKVariance().select(setup.context(), 8).tolist()


@pytest.mark.parametrize("strategy", [NTKBALD(batch="greedy", samples=8), NTKZMargin(batch="greedy"),
                                      NTKEPIG(num_targets=10, samples=8, batch="greedy"),
                                      NTKEPIG(num_targets=10, estimator="gaussian")])
def test_scattered_tiles_select_the_same_ids(problem, strategy):
    """Tiles on random shards in random order (what Ray may do) give the ids of the local executor."""
    want = strategy.select(make_ctx(problem), 5)
    got = strategy.select(make_ctx(problem, executor=ScatteredExecutor(problem["x"], 3, seed=4)), 5)
    assert got.tolist() == want.tolist()


def test_epig_gaussian_strategy_against_an_explicit_posterior(problem, tmp_path):
    """ntk_epig, estimator=gaussian, targets from a file: the top-5 of the closed form on an explicit M."""
    targets = problem["u"][[1, 6, 20, 33]]
    np.save(tmp_path / "t.npy", targets)
    cand = problem["u"][::2]
    ctx = make_ctx(problem, cand=cand)
    strategy = NTKEPIG(targets=str(tmp_path / "t.npy"), estimator="gaussian", ridge_rel=RIDGE_REL)
    got = strategy.select(ctx, 5)
    _, m, lam = explicit(problem)
    pos_c, pos_t = np.arange(0, 40, 2), np.array([1, 6, 20, 33])
    s = epig_gaussian(m.diagonal()[pos_c], m.diagonal()[pos_t], m[pos_t][:, pos_c], lam, N_OUT)
    assert got.tolist() == cand[torch.argsort(-s, stable=True)[:5].numpy()].tolist()
    assert ctx.info["target_set"] == "file" and ctx.info["num_targets"] == 4


def test_target_files_and_bad_options(tmp_path):
    (tmp_path / "ids.txt").write_text("5\n3\n5\n")
    assert read_target_ids(str(tmp_path / "ids.txt")).tolist() == [3, 5]
    (tmp_path / "bad.txt").write_text("1.5\n")
    with pytest.raises(ValueError, match="integer pool ids"):
        read_target_ids(str(tmp_path / "bad.txt"))
    with pytest.raises(ValueError, match="not found"):
        NTKEPIG(targets=str(tmp_path / "missing.npy"))
    np.save(tmp_path / "far.npy", np.array([10**6]))
    setup = digits_round()
    with pytest.raises(StrategyError, match="outside the pool"):
        NTKEPIG(targets=str(tmp_path / "far.npy")).select(setup.context(), 3)
    for bad in (dict(estimator="exact"), dict(link="sigmoid"), dict(output_scale="magic"), dict(output_scale=-1.0),
                dict(batch="kmeans"), dict(samples=1), dict(estimator="probit", link="simplex"), dict(ridge_rel=-1.0)):
        with pytest.raises(ValueError):
            NTKBALD(**bad)
