"""MaxHerding and Uncertainty Herding against brute force.

Independent references: the coverage Σ_u w_u max_{s∈S} k(u, s) evaluated explicitly for every
candidate set of a tiny problem (float64), the pNTK from torch.func Jacobians of the
sum-of-logits output in float64 (normalized by hand), the leave-one-out outputs from literally
refitting without each point, and temperatures recovered from labels drawn at a known one.
"""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
from kernel_problems import brute_pntk, problem

from entk_al.lookahead.herding import (
    calibrate_temperature,
    cosine_from_kernel,
    expected_calibration_error,
    greedy_coverage,
    loo_outputs,
    min_nonzero_distance,
    similarity_kernel,
    uncertainty_weights,
)
from entk_al.lookahead.system import cholesky_with_jitter
from entk_al.run.plugins import load_strategy

from fakes import digits_round


def coverage(kern, covered, weights, chosen):
    """Σ_u w_u max(m_u, max_{s∈chosen} K[u, s]), written out."""
    total = 0.0
    for u in range(kern.shape[0]):
        best = float(covered[u])
        for s in chosen:
            best = max(best, float(kern[u, s]))
        total += float(weights[u]) * best
    return total


def brute_greedy(kern, covered, weights, k):
    """Greedy on the explicit coverage of every extension S ∪ {c} (first maximum on ties)."""
    chosen: list[int] = []
    for _ in range(k):
        values = [coverage(kern, covered, weights, chosen + [c]) if c not in chosen else -math.inf
                  for c in range(kern.shape[1])]
        chosen.append(int(np.argmax(values)))
    return chosen


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("weighted", [False, True])
def test_greedy_matches_explicit_coverage_and_the_greedy_bound(seed, weighted):
    g = torch.Generator().manual_seed(seed)
    phi = torch.randn(12, 5, generator=g, dtype=torch.float64)
    phi = phi / phi.norm(dim=1, keepdim=True)
    kern = phi[:9] @ phi[:9].T  # U = the 9 candidates, cosines
    covered = (phi[:9] @ phi[9:].T).max(dim=1).values  # three labeled points
    weights = torch.rand(9, generator=g, dtype=torch.float64) if weighted else torch.ones(9, dtype=torch.float64)
    k = 3
    picks, gains = greedy_coverage(kern, covered, k, weights if weighted else None, chunk_rows=2)
    assert picks.tolist() == brute_greedy(kern, covered, weights, k)
    # each gain is the explicit increase of the coverage
    base = coverage(kern, covered, weights, [])
    running = [coverage(kern, covered, weights, picks[:i + 1].tolist()) for i in range(k)]
    assert np.allclose(gains, np.diff([base, *running]), rtol=1e-12, atol=1e-12)
    # the coverage gain is monotone submodular: greedy reaches (1 − 1/e) of the best set of size k
    best = max(coverage(kern, covered, weights, list(s)) for s in itertools.combinations(range(9), k))
    assert running[-1] - base >= (1 - 1 / math.e) * (best - base) - 1e-12


def test_greedy_chunking_changes_nothing():
    g = torch.Generator().manual_seed(3)
    phi = torch.randn(40, 6, generator=g, dtype=torch.float64)
    phi = phi / phi.norm(dim=1, keepdim=True)
    kern = similarity_kernel(phi @ phi.T, 0.8).float()
    covered = torch.zeros(40, dtype=torch.float64)
    w = torch.rand(40, generator=g, dtype=torch.float64)
    a = greedy_coverage(kern, covered, 7, w, chunk_rows=1)
    b = greedy_coverage(kern, covered, 7, w, chunk_rows=1000)
    assert a[0].tolist() == b[0].tolist() and a[1] == b[1]


def test_duplicates_add_nothing_and_are_not_picked_while_anything_else_covers():
    # candidates 0 and 1 are the same point; 2 and 3 lie elsewhere
    phi = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    kern = similarity_kernel(phi @ phi.T, 1.0)
    picks, gains = greedy_coverage(kern, torch.zeros(4, dtype=torch.float64), 4)
    assert set(picks[:3].tolist()) == {0, 2, 3} and picks[3] == 1  # the copy comes last
    assert gains[3] == 0.0


def test_greedy_rejects_bad_input():
    kern = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="k must be in"):
        greedy_coverage(kern, torch.zeros(3), 4)
    with pytest.raises(ValueError, match="weights"):
        greedy_coverage(kern, torch.zeros(3), 1, torch.tensor([1.0, -1.0, 1.0]))


def test_similarity_kernel_and_adaptive_radius_known_values():
    cos = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    assert similarity_kernel(cos, None).equal(cos)
    # ‖a − b‖² = 2 − 2·0.5 = 1: exp(−1/h²)
    expected = torch.exp(-torch.tensor([[0.0, 0.25], [0.25, 0.0]], dtype=torch.float64))
    assert torch.allclose(similarity_kernel(cos, 2.0), expected)
    assert min_nonzero_distance(cos) == pytest.approx(1.0)
    # exact duplicates are skipped; no distinct pair: None
    dup = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert min_nonzero_distance(dup) == pytest.approx(math.sqrt(2.0))
    assert min_nonzero_distance(torch.ones(2, 2, dtype=torch.float64)) is None
    with pytest.raises(ValueError, match="bandwidth"):
        similarity_kernel(cos, 0.0)
    k = torch.tensor([[4.0, 2.0], [2.0, 9.0]])
    assert torch.allclose(cosine_from_kernel(k, k.diagonal(), k.diagonal()),
                          torch.tensor([[1.0, 1 / 3], [1 / 3, 1.0]], dtype=torch.float64))


def test_loo_outputs_equal_refitting_without_each_point(f64):
    pr = problem(seed=4, n=9)
    k, y, f = pr["k_ll"], pr["y_l"], pr["f_l"]
    lam = 0.05
    chol, jitter = cholesky_with_jitter(k, lam)
    assert jitter == 0.0
    got = loo_outputs(chol, y, f)
    for i in range(len(k)):
        rest = [j for j in range(len(k)) if j != i]
        sol = torch.linalg.solve(k[rest][:, rest] + lam * torch.eye(len(rest), **f64), y[rest] - f[rest])
        refit = f[i] + k[i, rest] @ sol
        assert torch.allclose(got[i], refit, rtol=1e-10, atol=1e-12)


def brute_ece(probs, labels, bins=15):
    conf, pred = probs.max(dim=1)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i in range(len(conf)) if (lo < conf[i] <= hi) or (b == 0 and conf[i] == 0)]
        if idx:
            acc = np.mean([float(pred[i] == labels[i]) for i in idx])
            total += len(idx) / len(conf) * abs(acc - float(conf[idx].mean()))
    return total


def test_ece_and_temperature_recovered_from_a_known_one():
    g = torch.Generator().manual_seed(0)
    logits = 3.0 * torch.randn(20000, 4, generator=g, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(logits / 2.5, dim=1), 1, generator=g).squeeze(1)
    p = torch.softmax(logits, dim=1)
    assert expected_calibration_error(p[:500], labels[:500]) == pytest.approx(brute_ece(p[:500], labels[:500]),
                                                                             abs=1e-12)
    t = calibrate_temperature(logits, labels)
    assert 2.2 < t < 2.8  # the labels were drawn at T = 2.5


def test_uncertainty_weights_known_values():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.9, 0.05, 0.05]], dtype=torch.float64))
    assert torch.allclose(uncertainty_weights(logits), torch.tensor([0.8, 0.15], dtype=torch.float64))
    assert torch.allclose(uncertainty_weights(logits, kind="least_confidence"),
                          torch.tensor([0.5, 0.1], dtype=torch.float64))
    # T → large flattens every row: the margin weight goes to 1
    assert torch.allclose(uncertainty_weights(logits, 1e6), torch.ones(2, dtype=torch.float64), atol=1e-6)
    with pytest.raises(ValueError, match="unknown uncertainty"):
        uncertainty_weights(logits, kind="bald")


# -- the strategies on a trained digits round, against float64 brute force ------------------------

def brute_herding(setup, weights_fn=None, bandwidth=None):
    """The expected picks: explicit greedy coverage of the candidates in float64."""
    cand, lab = setup.candidate_ids, setup.labeled_ids
    ids = np.concatenate([cand, lab])
    k = brute_pntk(setup.model, setup.x_pool[torch.from_numpy(ids)])
    d = k.diagonal().sqrt()
    cos = k / (d[:, None] * d[None, :])
    c = len(cand)
    h = bandwidth(cos[c:, c:]) if callable(bandwidth) else bandwidth
    kern = cos if h is None else torch.exp(-(2 - 2 * cos) / h**2)
    covered = kern[:c, c:].max(dim=1).values
    w = torch.ones(c, dtype=torch.float64) if weights_fn is None else weights_fn(cand)
    return cand[brute_greedy(kern[:c, :c], covered, w, 5)]


@pytest.fixture(scope="module")
def small_round():
    return digits_round(seed=1, n_labeled=12, n_candidates=40, width=16)


def test_max_herding_selects_the_brute_force_greedy_on_digits(small_round):
    got = load_strategy("max_herding").select(small_round.context(), 5)
    assert got.tolist() == brute_herding(small_round).tolist()


def test_uncertainty_herding_selects_the_brute_force_greedy_on_digits(small_round):
    setup = small_round
    model = copy.deepcopy(setup.model).double().eval()

    def margin_weights(cand):
        with torch.no_grad():
            p = torch.softmax(model(setup.x_pool[torch.from_numpy(cand)].double()), dim=1)
        top2 = p.sort(dim=1, descending=True).values[:, :2]
        return 1.0 - (top2[:, 0] - top2[:, 1])

    def radius(cos_ll):
        n = cos_ll.shape[0]
        dists = [math.sqrt(max(2 - 2 * float(cos_ll[i, j]), 0.0)) for i in range(n) for j in range(i + 1, n)]
        return min(x for x in dists if x > 1e-3)

    ctx = setup.context()
    got = load_strategy("uncertainty_herding", {"temperature": 1.0}).select(ctx, 5)
    assert got.tolist() == brute_herding(setup, margin_weights, radius).tolist()
    assert ctx.info["bandwidth"] == pytest.approx(radius(_labeled_cos(setup)), rel=1e-4)


def _labeled_cos(setup):
    k = brute_pntk(setup.model, setup.x_pool[torch.from_numpy(setup.labeled_ids)])
    d = k.diagonal().sqrt()
    return k / (d[:, None] * d[None, :])


def test_uncertainty_herding_loo_temperature_is_the_calibrated_one(small_round):
    setup = small_round
    ctx = setup.context()
    strat = load_strategy("uncertainty_herding")
    t = strat.fitted_temperature(ctx)
    # reference: LOO outputs by refitting, in float64 from the brute-force kernel, then the grid search
    lab = setup.labeled_ids
    k = brute_pntk(setup.model, setup.x_pool[torch.from_numpy(lab)])
    lam = 1e-3 * float(k.diagonal().sum()) / len(lab)
    model = copy.deepcopy(setup.model).double().eval()
    with torch.no_grad():
        f = model(setup.x_pool[torch.from_numpy(lab)].double())
    y = torch.nn.functional.one_hot(torch.from_numpy(setup.y_pool.numpy()[lab]), setup.num_classes).double()
    loo = torch.stack([f[i] + k[i, r] @ torch.linalg.solve(k[r][:, r] + lam * torch.eye(len(r), dtype=torch.float64),
                                                             y[r] - f[r])
                       for i in range(len(lab)) for r in [[j for j in range(len(lab)) if j != i]]])
    assert t == pytest.approx(calibrate_temperature(loo, torch.from_numpy(setup.y_pool.numpy()[lab])))
    strat.select(ctx, 5)
    assert ctx.info["temperature"] == t and ctx.info["uncertainty"] == "margin"


@pytest.mark.parametrize("name,options", [
    ("max_herding", {"kernel": "embedding"}), ("max_herding", {"bandwidth": 0.5}),
    ("uncertainty_herding", {"kernel": "embedding", "uncertainty": "entropy"}),
    ("uncertainty_herding", {"bandwidth": "none", "temperature": 2.0}),
])
def test_options_select_valid_ids_and_tiny_memory_budget_changes_nothing(name, options):
    setup = digits_round()
    got = load_strategy(name, options).select(setup.context(), 6)
    tiny = load_strategy(name, {**options, "memory_budget_mb": 1}).select(setup.context(), 6)
    assert got.tolist() == tiny.tolist()
    assert len(set(got.tolist())) == 6 and set(got.tolist()) <= set(setup.candidate_ids.tolist())


def test_embedding_kernel_selects_the_brute_force_greedy(small_round):
    setup = small_round
    ctx = setup.context()
    got = load_strategy("max_herding", {"kernel": "embedding"}).select(ctx, 5)
    e = ctx.embeddings(np.concatenate([setup.candidate_ids, setup.labeled_ids])).double()
    e = e / e.norm(dim=1, keepdim=True)
    kern = torch.exp(-(2 - 2 * (e @ e.T)))  # h = 1
    c = len(setup.candidate_ids)
    expected = brute_greedy(kern[:c, :c], kern[:c, c:].max(dim=1).values, torch.ones(c, dtype=torch.float64), 5)
    assert got.tolist() == setup.candidate_ids[expected].tolist()
    assert ctx.info["bandwidth"] == 1.0 and ctx.info["kernel"] == "embedding"


@pytest.mark.parametrize("name,options,match", [
    ("max_herding", {"kernel": "rbf"}, "kernel must be one of"),
    ("max_herding", {"bandwidth": "wide"}, "bandwidth must be"),
    ("max_herding", {"bandwidth": -1.0}, "bandwidth must be > 0"),
    ("uncertainty_herding", {"temperature": "cv"}, "temperature must be"),
    ("uncertainty_herding", {"temperature": 0.0}, "temperature must be > 0"),
    ("uncertainty_herding", {"uncertainty": "bald"}, "uncertainty must be one of"),
])
def test_bad_options_are_refused_by_name(name, options, match):
    from entk_al.errors import StrategyError

    with pytest.raises((ValueError, StrategyError), match=match):
        load_strategy(name, options)
