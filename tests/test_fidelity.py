"""Fidelity: for a linear model the look-ahead is exact, so prediction must match retraining."""

import json

import numpy as np
import torch

from entk_al.fidelity import measure_fidelity, plot_fidelity
from entk_al.ntk import pntk
from entk_al.train import TrainConfig


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
    from entk_al.train import train_model

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
