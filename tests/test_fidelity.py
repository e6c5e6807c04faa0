"""Fidelity: for a linear model the look-ahead is exact, so prediction must match MSE retraining
(and, trained with cross-entropy, it must not)."""

import copy
import json

import numpy as np
import pytest
import torch

from entk_al.nets.train import TrainConfig
from entk_al.ntk import pntk
from entk_al.report.fidelity import measure_fidelity, plot_fidelity


def test_linear_model_lookahead_matches_converged_retraining(tmp_path):
    # For f(x) = Wx + b, pNTK ⊗ I is the exact eNTK, and gradient descent from θ_L on an
    # interpolable least-squares problem converges to the kernel-regression solution
    # (ridge → 0): the look-ahead prediction and real retraining must coincide.
    g = torch.Generator().manual_seed(0)
    d, o, n, m = 40, 3, 8, 20
    model = torch.nn.Linear(d, o).double()
    x_l = torch.randn(n, d, generator=g, dtype=torch.float64)
    y_l = torch.randint(0, o, (n,), generator=g)
    x_u = torch.randn(m, d, generator=g, dtype=torch.float64)
    cfg = TrainConfig(loss="mse", epochs=1, min_steps=400, batch_size=64, lr=0.05, weight_decay=0.0)
    from entk_al.nets.train import train_model

    train_model(model, x_l, y_l, cfg, torch.Generator().manual_seed(1))
    cand = np.array([0, 3, 7, 11, 19])
    res = measure_fidelity(model, lambda mdl, a, b=None: pntk(mdl, a, b), x_l, y_l, x_u, cand, cfg,
                           lambda: torch.Generator().manual_seed(2), o, ridge_rel=1e-10, top_k=2)
    assert res["mean_relative_error"] < 1e-3
    assert res["mean_relative_error"] < 0.05 * res["mean_relative_error_no_change"]
    np.testing.assert_allclose(res["predicted_change"], res["real_change"], rtol=1e-2)
    assert res["spearman"] > 0.99 and res["pearson"] > 0.99 and res["top_k_overlap"] == 1.0
    assert res["num_candidates"] == 5 and res["retrain_steps"] == 400
    plot_fidelity(res, tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    json.dumps(res)


def test_cross_entropy_retraining_against_the_squared_loss_look_ahead():
    """--loss ce: the network is trained and retrained with cross-entropy and compared with the
    look-ahead's squared-loss prediction. On a linear model (pNTK exact, d > n) that prediction
    is exact for MSE retraining and misses CE retraining: CE keeps growing the logits of
    confident points where the squared loss stops at one-hot, so the prediction is further
    from the CE-retrained outputs than "nothing changes" is."""
    from scipy.stats import spearmanr

    from entk_al.nets.train import train_model

    g = torch.Generator().manual_seed(0)
    d, o, n, m = 40, 3, 8, 20
    x_l = torch.randn(n, d, generator=g, dtype=torch.float64)
    y_l = torch.randint(0, o, (n,), generator=g)
    x_u = torch.randn(m, d, generator=g, dtype=torch.float64)
    cand = np.array([0, 3, 7, 11, 19])
    got = {}
    for loss in ("mse", "ce"):
        torch.manual_seed(0)
        model = torch.nn.Linear(d, o).double()
        cfg = TrainConfig(loss=loss, epochs=1, min_steps=400, batch_size=64, lr=0.05, weight_decay=0.0)
        train_model(model, x_l, y_l, cfg, torch.Generator().manual_seed(1))
        got[loss] = res = measure_fidelity(model, lambda mdl, a, b=None: pntk(mdl, a, b), x_l, y_l, x_u, cand, cfg,
                                           lambda: torch.Generator().manual_seed(2), o, ridge_rel=1e-10, top_k=2)
        assert res["loss"] == loss
        # candidate 3's real retraining, redone here with the same loss, generator and labels
        pos, y_hat = int(cand[1]), int(res["candidate_labels"][1])
        net = copy.deepcopy(model)
        train_model(net, torch.cat([x_l, x_u[pos:pos + 1]]), torch.cat([y_l, y_l.new_tensor([y_hat])]), cfg,
                    torch.Generator().manual_seed(2))
        with torch.no_grad():
            f_u, f_new = model(x_u), net(x_u)
        assert res["real_change"][1] == pytest.approx(float((f_new - f_u).norm(dim=1).sum()), rel=1e-9)
        p_u, p_new = torch.softmax(f_u, 1), torch.softmax(f_new, 1)
        assert res["real_change_probs"][1] == pytest.approx(float((p_new - p_u).norm(dim=1).sum()), rel=1e-9)
        assert res["spearman_probs"] == pytest.approx(
            spearmanr(res["predicted_change_probs"], res["real_change_probs"]).statistic)
        ratio = np.median(np.asarray(res["real_change"]) / np.asarray(res["predicted_change"]))
        assert res["change_ratio"] == pytest.approx(ratio)
    assert got["mse"]["mean_relative_error"] < 1e-3 and got["mse"]["change_ratio"] == pytest.approx(1, abs=1e-3)
    ce = got["ce"]
    assert ce["mean_relative_error"] > ce["mean_relative_error_no_change"] > 0.1
    assert ce["change_ratio"] < 0.5  # the squared-loss update overstates how much CE retraining moves U


def test_reference_base_score_is_the_change_from_the_refit_on_l():
    """predicted_change_from_base is Σ_i ‖f̂_{L+j}(U_i) − base(U_i)‖ with base recomputed here by a
    direct kernel-regression refit on L alone (float64 solve)."""
    from scipy.stats import spearmanr

    from entk_al.report.fidelity import lookahead_eval_outputs

    g = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).double()
    x_l, x_u = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(9, 5, generator=g, dtype=torch.float64)
    y_l = torch.randint(0, 3, (6,), generator=g)
    cand = np.array([0, 2, 4, 8])
    cfg = TrainConfig(loss="ce", epochs=1, min_steps=5, batch_size=8, lr=0.01, weight_decay=0.0)
    kfn = lambda mdl, a, b=None: pntk(mdl, a, b)  # noqa: E731
    res = measure_fidelity(model, kfn, x_l, y_l, x_u, cand, cfg, lambda: torch.Generator().manual_seed(2), 3,
                           ridge_rel=1e-3)
    k_ll, k_ul = pntk(model, x_l), pntk(model, x_u, x_l)
    lam = 1e-3 * float(k_ll.trace()) / 6
    with torch.no_grad():
        f_l, f_u = model(x_l), model(x_u)
    y1 = torch.nn.functional.one_hot(y_l, 3).double()
    base = f_u + k_ul @ torch.linalg.solve(k_ll + lam * torch.eye(6, dtype=torch.float64), y1 - f_l)
    pred, _, meta = lookahead_eval_outputs(model, kfn, x_l, y_l, x_u, torch.from_numpy(cand),
                                           torch.tensor(res["candidate_labels"]), 1e-3, 3)
    torch.testing.assert_close(meta["base"], base, rtol=1e-6, atol=1e-9)
    want = (pred - base).norm(dim=2).sum(dim=1).numpy()
    np.testing.assert_allclose(res["predicted_change_from_base"], want, rtol=1e-9)
    assert res["spearman_reference_base_vs_control"] == pytest.approx(
        spearmanr(want, res["real_change_vs_control"]).statistic)
