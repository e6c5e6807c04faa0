"""The look-ahead strategy's study options against brute-force float64 computations.

References are built from explicit formulas, independently of the streamed scorer: dense
kernel-regression refits on L ∪ {candidate} (posterior means and covariances), the (C, m, O)
outputs of lookahead_outputs, explicit change vectors and plain sampling loops.
"""

import numpy as np
import pytest
import torch
from kernel_problems import problem

from entk_al.lookahead.acquisition import lookahead_scores, project_simplex, pseudo_labels
from entk_al.lookahead.batch import change_gram, gumbel_top_k, kmeanspp_seeding
from entk_al.lookahead.posterior import Posterior, select_lookahead, uncertainty_weights
from entk_al.lookahead.system import fit_lookahead, lookahead_outputs

RIDGE = 0.05


def system(pr, ridge=RIDGE):
    return fit_lookahead(pr["k_ll"], pr["k_ul"], pr["k_uu"], pr["f_l"], pr["y_l"], pr["f_u"], ridge=ridge)


def refit_covariance(pr, extra, ridge=RIDGE):
    """Posterior covariance on U of kernel ridge regression on X_L ∪ U[extra]: B − k(U,X⁺)(k(X⁺,X⁺)+λI)⁻¹k(X⁺,U)."""
    k_ll, k_ul, k_uu = pr["k_ll"], pr["k_ul"], pr["k_uu"]
    a = torch.cat([k_ul, k_uu[:, extra]], dim=1)  # (m, n + e)
    kk = torch.cat([torch.cat([k_ll, k_ul[extra].T], 1), torch.cat([k_ul[extra], k_uu[extra][:, extra]], 1)], 0)
    return k_uu - a @ torch.linalg.solve(kk + ridge * torch.eye(kk.shape[0], dtype=kk.dtype), a.T)


def outputs(pr, y, ridge=RIDGE):
    m = pr["f_u"].shape[0]
    return lookahead_outputs(pr["k_ll"], pr["k_ul"], pr["k_uu"], pr["f_l"], pr["y_l"], pr["f_u"],
                             cand=torch.arange(m), y_cand=y, ridge=ridge)  # (C, m, O)


@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("budget", [1, 10**9])
def test_variance_reduction_is_the_drop_in_posterior_variance(exclude_self, budget):
    """Cohn et al. 1996: Σ_i (M_ii − M'_ii), M' the covariance after refitting with the candidate."""
    pr = problem()
    m = pr["f_u"].shape[0]
    before = refit_covariance(pr, []).diagonal()
    want = torch.stack([before - refit_covariance(pr, [j]).diagonal() for j in range(m)])  # (C, m)
    if exclude_self:
        want[range(m), range(m)] = 0.0
    want = want.sum(dim=1)
    got = lookahead_scores(Posterior(system(pr)), torch.arange(m), acquisition="variance_reduction",
                           exclude_self=exclude_self, memory_budget_bytes=budget)
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)
    # ... with the error term: times ‖ŷ_j − base_j‖, base the refit prediction from L alone.
    err = (pseudo_labels(pr["f_u"]) - system(pr).base).norm(dim=1)  # base: checked in the next test
    got_err = lookahead_scores(Posterior(system(pr)), torch.arange(m), acquisition="variance_reduction_error",
                               exclude_self=exclude_self, memory_budget_bytes=budget)
    torch.testing.assert_close(got_err, want * err, rtol=1e-8, atol=1e-10)


def test_base_used_for_the_error_term_is_the_refit_on_l():
    pr = problem(seed=3)
    k_ll, k_ul = pr["k_ll"], pr["k_ul"]
    n = k_ll.shape[0]
    direct = pr["f_u"] + k_ul @ torch.linalg.solve(k_ll + RIDGE * torch.eye(n, dtype=k_ll.dtype), pr["y_l"] - pr["f_l"])
    torch.testing.assert_close(system(pr).base, direct, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("power", [-1.0, 1.0, 2.0])
@pytest.mark.parametrize("acquisition", ["mlmoc", "flip"])
def test_variance_power_weights_by_own_posterior_std(power, acquisition):
    pr = problem(seed=1)
    m = pr["f_u"].shape[0]
    y = pseudo_labels(pr["f_u"])
    out = outputs(pr, y)
    if acquisition == "flip":
        plain = (out.argmax(dim=2) != pr["f_u"].argmax(dim=1)).double().mean(dim=1)
    else:
        plain = (out - pr["f_u"]).norm(dim=2).sum(dim=1)
    own = refit_covariance(pr, []).diagonal() + RIDGE  # M_jj + λ from the explicit covariance
    want = plain * own ** (power / 2)
    got = lookahead_scores(Posterior(system(pr)), torch.arange(m), acquisition=acquisition, variance_power=power)
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("acquisition", ["mlmoc", "flip", "variance_reduction"])
@pytest.mark.parametrize("budget", [1, 10**9])
def test_eval_weights_weight_the_sum_over_u(acquisition, budget):
    pr = problem(seed=2)
    m = pr["f_u"].shape[0]
    w = torch.rand(m, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = outputs(pr, pseudo_labels(pr["f_u"]))
    if acquisition == "flip":
        want = ((out.argmax(dim=2) != pr["f_u"].argmax(dim=1)).double() * w).sum(dim=1) / w.sum()
    elif acquisition == "mlmoc":
        want = ((out - pr["f_u"]).norm(dim=2) * w).sum(dim=1)
    else:
        before = refit_covariance(pr, []).diagonal()
        want = torch.stack([((before - refit_covariance(pr, [j]).diagonal()) * w).sum() for j in range(m)])
    got = lookahead_scores(Posterior(system(pr)), torch.arange(m), acquisition=acquisition, eval_weights=w,
                           memory_budget_bytes=budget)
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="eval_weights"):
        lookahead_scores(Posterior(system(pr)), torch.arange(m), eval_weights=-w)


def test_uncertainty_weights_are_one_minus_simplex_margin():
    ref = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.9, 0.3, -1.0]], dtype=torch.float64)
    # Simplex projections by hand: [1,0,0]; [.5,.5,0]; [0.8, 0.2, 0] (shift by θ = 0.1).
    torch.testing.assert_close(uncertainty_weights(ref), torch.tensor([0.0, 1.0, 0.4], dtype=torch.float64))
    torch.testing.assert_close(project_simplex(ref)[2], torch.tensor([0.8, 0.2, 0.0], dtype=torch.float64))


def test_reference_base_measures_change_from_the_linearized_prediction():
    pr = problem(seed=4)
    m = pr["f_u"].shape[0]
    sysm = system(pr)
    post = Posterior(sysm, reference="base")
    y = pseudo_labels(sysm.base)
    want = (outputs(pr, y) - sysm.base).norm(dim=2).sum(dim=1)
    torch.testing.assert_close(lookahead_scores(post, torch.arange(m)), want, rtol=1e-9, atol=1e-10)
    with pytest.raises(ValueError, match="reference"):
        Posterior(sysm, reference="labels")


def test_change_gram_matches_explicit_change_vectors():
    pr = problem(seed=5)
    m = pr["f_u"].shape[0]
    y = pseudo_labels(pr["f_u"])
    sysm = system(pr)
    delta = (outputs(pr, y) - sysm.base).reshape(m, -1)  # Δ_j flattened, (C, m·O)
    pos = torch.tensor([3, 0, 11, 7])
    got = change_gram(Posterior(sysm), pos, y[pos])
    torch.testing.assert_close(got, delta[pos] @ delta[pos].T, rtol=1e-9, atol=1e-12)


def kmeanspp_reference(x, k, first, rng):
    """Plain k-means++ on explicit vectors: D² to the nearest center, inverse-CDF draw."""
    chosen = [first]
    while len(chosen) < k:
        d2 = np.array([min(float(((x[i] - x[c]) ** 2).sum()) for c in chosen) for i in range(len(x))])
        u = rng.random()
        cdf = np.cumsum(d2)
        chosen.append(int(np.argmax(cdf > u * cdf[-1])))
    return chosen


def test_kmeanspp_seeding_matches_explicit_vectors():
    x = np.random.default_rng(0).normal(size=(30, 5))
    for seed in range(5):
        got = kmeanspp_seeding(x @ x.T, 6, 2, np.random.default_rng(seed))
        want = kmeanspp_reference(x, 6, 2, np.random.default_rng(seed))
        assert got.tolist() == want


def test_kmeanspp_never_picks_a_duplicate_of_a_center():
    x = np.repeat(np.eye(4), 3, axis=0)  # 4 distinct points, 3 copies each
    for seed in range(20):
        got = kmeanspp_seeding(x @ x.T, 4, 0, np.random.default_rng(seed))
        assert sorted(got // 3) == [0, 1, 2, 3]
    # Only duplicates left: the lowest free index, no error.
    assert kmeanspp_seeding(x @ x.T, 5, 0, np.random.default_rng(0)).size == 5


def test_gumbel_top_k_samples_proportional_to_score():
    scores = np.array([1.0, 2.0, 3.0, 4.0, 0.0])
    rng = np.random.default_rng(0)
    draws = np.array([gumbel_top_k(scores, 1, rng)[0] for _ in range(20000)])
    freq = np.bincount(draws, minlength=5) / draws.size
    np.testing.assert_allclose(freq, scores / scores.sum(), atol=0.015)  # ~3.5 binomial s.d.
    # Temperature → 0 is top-k; equal generators give equal draws; zero scores come last.
    assert gumbel_top_k(scores, 3, np.random.default_rng(1), temperature=1e-6).tolist() == [3, 2, 1]
    assert gumbel_top_k(scores, 5, np.random.default_rng(2))[-1] == 4
    same_seed = gumbel_top_k(scores, 4, np.random.default_rng(3)), gumbel_top_k(scores, 4, np.random.default_rng(3))
    assert (same_seed[0] == same_seed[1]).all()
    with pytest.raises(ValueError, match="temperature"):
        gumbel_top_k(scores, 1, rng, temperature=0.0)


def test_select_kmeanspp_starts_at_the_top_score_and_stays_in_the_pool():
    pr = problem(seed=6, m=40)
    sysm = system(pr)
    cand = np.arange(40)
    top, _ = select_lookahead(Posterior(sysm), cand, 5)
    picked, _ = select_lookahead(Posterior(sysm), cand, 5, selection="kmeanspp", diversity_pool=12,
                                 rng=np.random.default_rng(0))
    scores = lookahead_scores(Posterior(sysm), torch.arange(40)).numpy()
    pool = set(np.argsort(-scores, kind="stable")[:12].tolist())
    assert picked[0] == top[0] and set(picked.tolist()) <= pool and len(set(picked.tolist())) == 5
    again, _ = select_lookahead(Posterior(sysm), cand, 5, selection="kmeanspp", diversity_pool=12,
                                rng=np.random.default_rng(0))
    assert again.tolist() == picked.tolist()
    with pytest.raises(ValueError, match="rng"):
        select_lookahead(Posterior(sysm), cand, 5, selection="gumbel")


def test_strategy_options_reach_the_selection(tmp_path):
    """End to end on digits: new options change the queries, are reproducible, and bad values fail."""
    from entk_al.run.config import RunConfig
    from entk_al.run.loop import ActiveLearningLoop
    from strategies.lookahead import LookaheadSampling

    def run(opts, out):
        cfg = RunConfig(strategy="lookahead", initial=10, query=4, rounds=1, subset=120, min_steps=20, epochs=1,
                        device="cpu", strategy_options=opts)
        return ActiveLearningLoop(cfg, out).run()[0]["queried"]

    default = run({}, tmp_path / "a")
    assert run(dict(ridge_rel=1e-3), tmp_path / "b") == default
    with pytest.warns(FutureWarning, match="removed in 0.3.*ridge_rel"):
        assert run(dict(ridge=1e-3), tmp_path / "c") == default
    with pytest.warns(FutureWarning, match="faiss_gpu.*removed in 0.3"):
        assert vars(LookaheadSampling(faiss_gpu=True)) == vars(LookaheadSampling())  # accepted, ignored
    gumbel = run(dict(selection="gumbel"), tmp_path / "d")
    assert gumbel == run(dict(selection="gumbel"), tmp_path / "e") and gumbel != default
    for bad in (dict(selection="greedy"), dict(reference="labels"), dict(eval_weight="x"),
                dict(gumbel_temperature=0.0), dict(diversity_pool=0), dict(ridge_rel=-1.0),
                dict(acquisition="bald")):
        with pytest.raises(ValueError):
            LookaheadSampling(**bad)
