"""Look-ahead (Eq. 11–12 of arXiv 2206.12569) against a direct refit of the kernel regression."""

import pytest
import torch

from entk_al.lookahead.system import cholesky_with_jitter, fit_lookahead, lookahead_outputs, mlmoc_scores


def problem(n=7, m=9, o=3, p=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    phi_l = torch.randn(n, p, generator=g, dtype=torch.float64)
    phi_u = torch.randn(m, p, generator=g, dtype=torch.float64)
    k_ll, k_ul, k_uu = phi_l @ phi_l.T, phi_u @ phi_l.T, phi_u @ phi_u.T
    f_l = torch.randn(n, o, generator=g, dtype=torch.float64)
    y_l = torch.nn.functional.one_hot(torch.randint(o, (n,), generator=g), o).double()
    f_u = torch.randn(m, o, generator=g, dtype=torch.float64)
    return k_ll, k_ul, k_uu, f_l, y_l, f_u


def direct_refit(k_ll, k_ul, k_uu, f_l, y_l, f_u, j, y, ridge):
    """f_u + k(U, X+) (k(X+, X+) + ridge I)^-1 (Y+ - f(X+)) with one dense solve."""
    kp = torch.cat([torch.cat([k_ll, k_ul[j:j + 1].T], 1), torch.cat([k_ul[j:j + 1], k_uu[j:j + 1, j:j + 1]], 1)])
    k_up = torch.cat([k_ul, k_uu[:, j:j + 1]], 1)
    resid = torch.cat([y_l - f_l, (y - f_u[j])[None]])
    return f_u + k_up @ torch.linalg.solve(kp + ridge * torch.eye(len(kp), dtype=kp.dtype), resid)


@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_outputs_match_direct_refit(ridge):
    k_ll, k_ul, k_uu, f_l, y_l, f_u = problem()
    cand = torch.tensor([0, 3, 8, 5])
    g = torch.Generator().manual_seed(1)
    y_cand = torch.randn(4, 3, generator=g, dtype=torch.float64)
    out = lookahead_outputs(k_ll, k_ul, k_uu, f_l, y_l, f_u, cand=cand, y_cand=y_cand, ridge=ridge)
    assert out.shape == (4, 9, 3)
    for c, j in enumerate(cand.tolist()):
        ref = direct_refit(k_ll, k_ul, k_uu, f_l, y_l, f_u, j, y_cand[c], ridge)
        torch.testing.assert_close(out[c], ref, rtol=1e-8, atol=1e-8)


def test_ridge_zero_interpolates_candidate():
    k_ll, k_ul, k_uu, f_l, y_l, f_u = problem()
    y_cand = torch.eye(3, dtype=torch.float64)[[2, 0]]
    out = lookahead_outputs(k_ll, k_ul, k_uu, f_l, y_l, f_u, cand=torch.tensor([1, 6]), y_cand=y_cand)
    torch.testing.assert_close(out[0, 1], y_cand[0], rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(out[1, 6], y_cand[1], rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("budget", [10**9, 1])  # one block, and one candidate per block
def test_mlmoc_matches_outputs(exclude_self, budget):
    k_ll, k_ul, k_uu, f_l, y_l, f_u = problem(seed=3)
    ridge = 0.05
    cand = torch.arange(9)
    y_cand = torch.nn.functional.one_hot(f_u.argmax(1), 3).double()
    out = lookahead_outputs(k_ll, k_ul, k_uu, f_l, y_l, f_u, cand=cand, y_cand=y_cand, ridge=ridge)
    norms = (out - f_u[None]).norm(dim=2)  # (C, m)
    if exclude_self:
        norms = norms * (1 - torch.eye(9, dtype=norms.dtype))
    sysm = fit_lookahead(k_ll, k_ul, k_uu, f_l, y_l, f_u, ridge=ridge)
    got = mlmoc_scores(sysm, cand, y_cand, exclude_self=exclude_self, memory_budget_bytes=budget)
    torch.testing.assert_close(got, norms.sum(1), rtol=1e-9, atol=1e-9)


def test_streamed_columns_without_full_b():
    k_ll, k_ul, k_uu, f_l, y_l, f_u = problem(seed=4)
    full = fit_lookahead(k_ll, k_ul, k_uu, f_l, y_l, f_u, ridge=0.1)
    part = fit_lookahead(k_ll, k_ul, None, f_l, y_l, f_u, k_uu_diag=k_uu.diagonal(), ridge=0.1)
    cols = torch.tensor([2, 7])
    torch.testing.assert_close(part.m_columns(cols, k_uu[:, cols]), full.m_columns(cols))
    torch.testing.assert_close(part.m_diag, full.m_diag)


def test_jitter_recorded_for_singular_kernel():
    phi = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    k = phi @ phi.T  # rank 2: not positive definite
    chol, jitter = cholesky_with_jitter(k)
    assert jitter > 0
    torch.testing.assert_close(chol @ chol.T, k + jitter * torch.eye(6, dtype=torch.float64))
    _, none_needed = cholesky_with_jitter(k + torch.eye(6, dtype=torch.float64))
    assert none_needed == 0.0


def test_bad_shapes_raise():
    k_ll, k_ul, k_uu, f_l, y_l, f_u = problem()
    with pytest.raises(ValueError):
        lookahead_outputs(k_ll, k_ul[:, :3], k_uu, f_l, y_l, f_u, cand=torch.tensor([0]), y_cand=torch.zeros(1, 3))
    with pytest.raises(ValueError):
        lookahead_outputs(k_ll, k_ul, k_uu, f_l, y_l, f_u, cand=torch.tensor([99]), y_cand=torch.zeros(1, 3))
    with pytest.raises(ValueError):
        cholesky_with_jitter(torch.zeros(2, 3))


def test_duplicate_of_labeled_point_predicts_no_change_without_ridge():
    """A candidate equal to a labeled input has M_jj = 0 (up to round-off): with no ridge its
    update is defined as zero instead of round-off divided by round-off."""
    g = torch.Generator().manual_seed(5)
    phi_l = torch.randn(5, 30, generator=g, dtype=torch.float64)
    phi_u = torch.cat([torch.randn(4, 30, generator=g, dtype=torch.float64), phi_l[2:3]])  # U_4 == X_L[2]
    k_ll, k_ul, k_uu = phi_l @ phi_l.T, phi_u @ phi_l.T, phi_u @ phi_u.T
    f_l, f_u = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    y_l = torch.eye(3, dtype=torch.float64)[[0, 1, 2, 0, 1]]
    sysm = fit_lookahead(k_ll, k_ul, k_uu, f_l, y_l, f_u)
    out = sysm.outputs(torch.tensor([4, 0]), torch.eye(3, dtype=torch.float64)[[1, 2]])
    torch.testing.assert_close(out[0], sysm.base)  # no change from the duplicate
    ref = direct_refit(k_ll, k_ul, k_uu, f_l, y_l, f_u, 0, torch.eye(3, dtype=torch.float64)[2], 0.0)
    torch.testing.assert_close(out[1], ref, rtol=1e-8, atol=1e-8)  # ordinary candidates unchanged
    scores = mlmoc_scores(sysm, torch.arange(5), torch.eye(3, dtype=torch.float64)[[0, 1, 2, 0, 1]])
    assert torch.isfinite(scores).all()


def test_one_name_per_ridge_and_the_old_names_warn():
    """ridge_rel (relative) -> ridge (absolute λ) -> ridge_eff (λ + jitter): a singular K needs
    jitter, and every denominator uses λ + jitter; the old names still work, with a warning."""
    from entk_al.lookahead.posterior import Posterior
    from entk_al.lookahead.system import relative_ridge

    _, _, k_uu, f_l, y_l, f_u = problem(n=7, p=40)
    phi_u = torch.linalg.cholesky(k_uu + torch.eye(9, dtype=torch.float64))  # any features of U
    k_uu = phi_u @ phi_u.T
    phi_l = torch.zeros(7, 9, dtype=torch.float64)
    phi_l[:, 0] = 1.0  # seven copies of one point: K = ones, whose Cholesky meets an exact 0 pivot
    k_ll, k_ul = phi_l @ phi_l.T, phi_u @ phi_l.T
    assert relative_ridge(k_ll, 0.5) == pytest.approx(0.5 * float(k_ll.diagonal().sum()) / 7)
    sysm = fit_lookahead(k_ll, k_ul, k_uu, f_l, y_l, f_u, ridge=0.0)
    assert sysm.jitter > 0 and sysm.ridge_eff == sysm.jitter
    post = Posterior(sysm)
    cols = torch.tensor([1, 4])
    torch.testing.assert_close(post.denominators(cols), sysm.m_diag[cols] + sysm.jitter)
    for obj in (sysm, post):
        with pytest.warns(FutureWarning, match=r"\.ridge is deprecated and will be removed in 0\.3.*ridge_eff"):
            assert obj.ridge == obj.ridge_eff
    with pytest.warns(FutureWarning, match=r"rel=.*removed in 0\.3.*ridge_rel"):
        assert relative_ridge(k_ll, rel=0.5) == relative_ridge(k_ll, 0.5)
