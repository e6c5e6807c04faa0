"""Fidelity of the look-ahead: predicted vs real retraining on L ∪ {(x, y)}.

For a trained network f_L and candidates x_j with their predicted labels y_j, the look-ahead
(Mohamadi, Bae & Sutherland, NeurIPS 2022, arXiv 2206.12569, Eq. 11–12, with pNTK ⊗ I)
predicts the retrained outputs on an evaluation set U in closed form. Here the network is
actually retrained on L ∪ {(x_j, y_j)} with the loop's recipe (warm start from θ_L, same
optimizer, schedule, step count and mini-batch seed), once per candidate, and compared.

The look-ahead's prediction is always that of the linearized network retrained with the
squared loss on one-hot targets; the real retraining uses the recipe's loss
(``TrainConfig.loss``). With ``loss="ce"`` this measures how well that MSE-style update
predicts a cross-entropy-trained network (docs/lookahead.md, "Cross-entropy-trained
networks"); since cross-entropy acts on the softmax, the changes are also compared in
probabilities.

Reported (all per candidate j, over U):
- predicted change  p_j = Σ_i ‖f̂_{L+j}(U_i) − f_L(U_i)‖₂  (the MLMOC score, Eq. 13);
- real change       r_j = Σ_i ‖f_{L+j}(U_i) − f_L(U_i)‖₂;
- real change against a control retrained on L alone with the same recipe,
  r°_j = Σ_i ‖f_{L+j}(U_i) − f_ctrl(U_i)‖₂, which removes the drift that further SGD steps
  cause with or without the new point;
- Spearman and Pearson correlation of p with r and with r° (scipy.stats);
- top-k overlap |top_k(p) ∩ top_k(r)| / k;
- mean relative output error mean_j ‖F̂_j − F_j‖_F / ‖F_j‖_F, next to the same error of the
  "nothing changes" guess F_j ≈ f_L(U);
- the same correlations and top-k overlap for the change in softmax probabilities,
  Σ_i ‖softmax f̂_{L+j}(U_i) − softmax f_L(U_i)‖₂ (and against the control);
- the median ratio of real to predicted change (1 when the look-ahead gets the magnitude right);
- the Spearman correlation of the look-ahead's ``-o reference=base`` score, Σ_i ‖f̂_{L+j}(U_i) −
  base(U_i)‖₂ (base = the linearized network refit on L alone), with the real change and with
  the real change against the control;
- look-ahead time (kernel + factorization + outputs) against retraining time, as a ratio.
"""

from __future__ import annotations

import copy
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..lookahead.system import fit_lookahead, relative_ridge
from ..nets.models import eval_mode, predict
from ..nets.train import TrainConfig, train_model


def lookahead_eval_outputs(model: nn.Module, kernel_fn: Callable[..., torch.Tensor], x_l: torch.Tensor,
                           y_l: torch.Tensor, x_u: torch.Tensor, cand: torch.Tensor, y_cand: torch.Tensor,
                           ridge_rel: float, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Predicted outputs (C, m, O) float64 on U after adding each candidate, and f_L(U) (m, O).

    ``cand`` are positions in ``x_u``; ``y_cand`` (C,) int64 labels; the absolute ridge is
    ``ridge_rel · trace(K)/n`` as in the strategy. Returns also {ridge, jitter, base}, base (m, O)
    float64 = f(U) + A(K+λI)⁻¹R, the linearized network refit on L alone (Eq. 11).

    Args:
        model: the network trained on (x_l, y_l) (θ_L).
        kernel_fn: ``kernel_fn(model, x1, x2=None) -> (N1, N2)`` pNTK.
        x_l: (n, *F) labeled inputs.
        y_l: (n,) int64 labels.
        x_u: (m, *F) evaluation inputs U.
        ridge_rel: relative ridge (see :func:`entk_al.lookahead.system.relative_ridge`).
        num_classes: O.
    """
    m = len(x_u)
    kfull = kernel_fn(model, torch.cat([x_u, x_l]))
    k_uu, k_ul, k_ll = kfull[:m, :m], kfull[:m, m:], kfull[m:, m:]
    ridge = relative_ridge(k_ll, ridge_rel)
    dev = next(model.parameters()).device
    f_l, f_u = predict(model, x_l, device=dev), predict(model, x_u, device=dev)
    sysm = fit_lookahead(k_ll, k_ul, k_uu, f_l, F.one_hot(y_l.to(dev), num_classes).double(), f_u, ridge=ridge)
    out = sysm.outputs(cand.to(dev), F.one_hot(y_cand.to(dev), num_classes).double())
    return out, sysm.f_u, {"ridge": ridge, "jitter": sysm.jitter, "base": sysm.base}


def measure_fidelity(model: nn.Module, kernel_fn: Callable[..., torch.Tensor], x_l: torch.Tensor,
                     y_l: torch.Tensor, x_u: torch.Tensor, cand: np.ndarray, train_cfg: TrainConfig,
                     make_generator: Callable[[], torch.Generator], num_classes: int, *,
                     ridge_rel: float = 1e-3, top_k: int = 10,
                     progress: Callable[[int], None] | None = None) -> dict:
    """Compare look-ahead predictions with real retraining for each candidate.

    Args:
        model: the network trained on (x_l, y_l) (θ_L); left unchanged (copies are trained).
        kernel_fn: ``kernel_fn(model, x1, x2=None) -> (N1, N2)`` pNTK.
        x_l, y_l: (n, ...) inputs and (n,) int64 labels of L.
        x_u: (m, ...) evaluation inputs U.
        cand: (C,) int64 positions in ``x_u`` to add one at a time, with the predicted label.
        train_cfg: the loop's recipe; each retraining runs ``train_cfg.steps_for(n + 1)`` steps.
        make_generator: fresh mini-batch generator per retraining (same seed for each).
        top_k: k of the top-k overlap (capped at C).
        progress: called with the number of retrainings finished.
        num_classes: O.
        ridge_rel: relative ridge; absolute λ = ridge_rel · trace(K)/n
            (:func:`entk_al.lookahead.system.relative_ridge`).

    Returns:
        JSON-ready dict: the metrics listed in the module docstring and per-candidate arrays.

    Raises:
        ValueError: fewer than 3 candidates (correlations undefined).
    """
    cand = np.asarray(cand, dtype=np.int64)
    if len(cand) < 3:
        raise ValueError(f"need at least 3 candidates, got {len(cand)}")
    dev = next(model.parameters()).device
    with eval_mode(model):
        return _measure(model, kernel_fn, x_l, y_l, x_u, cand, train_cfg, make_generator, num_classes,
                        ridge_rel, top_k, progress, dev)


def _measure(model, kernel_fn, x_l, y_l, x_u, cand, train_cfg, make_generator, num_classes, ridge_rel, top_k,
             progress, dev) -> dict:
    from scipy.stats import pearsonr, spearmanr

    f_u_net = predict(model, x_u, device=dev)
    y_cand = f_u_net[torch.from_numpy(cand).to(dev)].argmax(dim=1).cpu()
    t0 = time.perf_counter()
    pred, f_u, meta = lookahead_eval_outputs(model, kernel_fn, x_l, y_l, x_u, torch.from_numpy(cand), y_cand,
                                             ridge_rel, num_classes)
    lookahead_s = time.perf_counter() - t0
    base = meta.pop("base")

    def retrain(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        net = copy.deepcopy(model)
        train_model(net, x, y, train_cfg, make_generator())
        return predict(net, x_u, device=dev).double()

    t1 = time.perf_counter()
    control = retrain(x_l, y_l)
    control_s = time.perf_counter() - t1
    real = torch.empty_like(pred)
    t2 = time.perf_counter()
    for j, (pos, yj) in enumerate(zip(cand.tolist(), y_cand.tolist())):
        real[j] = retrain(torch.cat([x_l, x_u[pos:pos + 1]]), torch.cat([y_l, y_l.new_tensor([yj])]))
        if progress is not None:
            progress(j + 1)
    retrain_s = time.perf_counter() - t2

    change = lambda a, b: (a - b).norm(dim=2).sum(dim=1).cpu().numpy()  # noqa: E731  (C,) Σ_i ‖a_i − b_i‖₂
    p_change, r_change, r_ctrl = change(pred, f_u), change(real, f_u), change(real, control)
    p_from_base = change(pred, base)  # the look-ahead's -o reference=base score
    sm = lambda t: torch.softmax(t.double(), dim=-1)  # noqa: E731
    p_prob, r_prob, r_prob_ctrl = change(sm(pred), sm(f_u)), change(sm(real), sm(f_u)), change(sm(real), sm(control))
    real_norm = real.flatten(1).norm(dim=1)
    rel_err = ((pred - real).flatten(1).norm(dim=1) / real_norm).cpu().numpy()
    rel_err_static = ((f_u - real).flatten(1).norm(dim=1) / real_norm).cpu().numpy()
    k = min(top_k, len(cand))
    top = lambda s: set(np.argsort(-s, kind="stable")[:k].tolist())  # noqa: E731
    per_cand_la = lookahead_s / len(cand)
    per_cand_rt = retrain_s / len(cand)
    return {
        "num_candidates": int(len(cand)), "num_eval": int(len(x_u)), "num_labeled": int(len(x_l)),
        "retrain_steps": int(train_cfg.steps_for(len(x_l) + 1)), **meta,
        "spearman": float(spearmanr(p_change, r_change).statistic),
        "pearson": float(pearsonr(p_change, r_change).statistic),
        "spearman_vs_control": float(spearmanr(p_change, r_ctrl).statistic),
        "pearson_vs_control": float(pearsonr(p_change, r_ctrl).statistic),
        "top_k": k, "top_k_overlap": len(top(p_change) & top(r_change)) / k,
        "top_k_overlap_vs_control": len(top(p_change) & top(r_ctrl)) / k,
        "loss": train_cfg.loss,
        "spearman_probs": float(spearmanr(p_prob, r_prob).statistic),
        "spearman_probs_vs_control": float(spearmanr(p_prob, r_prob_ctrl).statistic),
        "top_k_overlap_probs": len(top(p_prob) & top(r_prob)) / k,
        "spearman_reference_base": float(spearmanr(p_from_base, r_change).statistic),
        "spearman_reference_base_vs_control": float(spearmanr(p_from_base, r_ctrl).statistic),
        "change_ratio": float(np.median(r_change / np.maximum(p_change, 1e-300))),
        "change_ratio_vs_control": float(np.median(r_ctrl / np.maximum(p_change, 1e-300))),
        "mean_relative_error": float(rel_err.mean()),
        "mean_relative_error_no_change": float(rel_err_static.mean()),
        "lookahead_seconds": lookahead_s, "retrain_seconds": retrain_s, "control_retrain_seconds": control_s,
        "lookahead_seconds_per_candidate": per_cand_la, "retrain_seconds_per_candidate": per_cand_rt,
        "speedup_retrain_over_lookahead": per_cand_rt / max(per_cand_la, 1e-12),
        "predicted_change": p_change.tolist(), "real_change": r_change.tolist(),
        "real_change_vs_control": r_ctrl.tolist(), "relative_error": rel_err.tolist(),
        "predicted_change_from_base": p_from_base.tolist(),
        "predicted_change_probs": p_prob.tolist(), "real_change_probs": r_prob.tolist(),
        "real_change_probs_vs_control": r_prob_ctrl.tolist(),
        "candidate_positions": cand.tolist(), "candidate_labels": y_cand.tolist(),
    }


#: The caption under ``fidelity.png``: what its axes measure.
FIDELITY_CAPTION = ("One point per candidate x. Real change: Σ_i ‖f'(U_i) − g(U_i)‖₂ over the evaluation set U, f' "
                    "the network really retrained on L ∪ {(x, ŷ)} (warm start, the loop's recipe).\nLeft: g = f_L, "
                    "the network trained on the labeled set L that the look-ahead linearizes. Right: g = a control "
                    "retrained on L alone with the same steps and mini-batch seed,\nwhich removes the drift that "
                    "further SGD causes with or without x.")


def plot_fidelity(result: dict, path, title: str = "") -> None:
    """Scatter of predicted vs real output change, written atomically as PNG.

    Left panel: the real change from f_L (the network trained on L); right panel: from a control
    retrained on L alone with the same steps (:data:`FIDELITY_CAPTION` is printed under them).

    Args:
        result: the dict returned by :func:`measure_fidelity`.
        path: PNG file to write.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..fileio import atomic_write
    from ..text import printable

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
    p = np.asarray(result["predicted_change"])
    for ax, key, lab, rho in ((axes[0], "real_change", "real change from f_L, the model trained on L",
                               result["spearman"]),
                              (axes[1], "real_change_vs_control", "real change from a control retrained on L alone",
                               result["spearman_vs_control"])):
        ax.scatter(p, result[key], s=12, alpha=0.7)
        ax.set_xlabel("look-ahead predicted change Σ_i ‖f_{L+x}(U_i) − f_L(U_i)‖₂")
        ax.set_ylabel(lab, fontsize=9)
        ax.set_title(f"Spearman {rho:.3f}")
        ax.grid(alpha=0.3)
    fig.suptitle(printable(title) or "look-ahead fidelity")
    fig.text(0.5, 0.01, FIDELITY_CAPTION, ha="center", va="bottom", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
