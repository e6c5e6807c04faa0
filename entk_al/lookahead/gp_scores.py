"""Acquisition scores under a Gaussian predictive over the logits (the GP of :mod:`entk_al.lookahead.gp`).

Each candidate j has latent outputs f_j ~ N(μ_j, v_j I_O) (pNTK ⊗ I: one variance for every
class), and, for the information scores, the label y_j ~ p(f_j) with the link p = softmax, or
p = the Euclidean projection onto the simplex (``link="simplex"``: a network trained with the
squared loss on one-hot targets estimates the class probabilities themselves, E[y | x], and
the softmax of such outputs is nearly flat; :func:`entk_al.lookahead.acquisition.project_simplex`,
Duchi et al. 2008). All scores are float64,
higher = more informative, information in nats. Monte Carlo estimates take their standard
normal draws ``eps`` from the caller (the round's seeded stream), so a round is reproducible
and the same draws can be reused after conditioning (common random numbers).
"""

from __future__ import annotations

import math

import torch

from .acquisition import project_simplex
from .uncertainty import entropy

F64 = torch.float64
#: Links from latent outputs to class probabilities.
LINKS = ("softmax", "simplex")
#: C of Houlsby et al. 2011, Sec. 3: h(Φ(x)) ≈ exp(−x² / (π ln 2)) = exp(−x² / (2C²)).
HOULSBY_C2 = math.pi * math.log(2.0) / 2.0
#: λ₀ of the probit approximation to the logistic sigmoid, σ(x) ≈ Φ(√λ₀ x) (MacKay 1992).
PROBIT_LAMBDA = math.pi / 8.0


def _check(mean: torch.Tensor, var: torch.Tensor) -> None:
    if mean.ndim != 2 or var.shape != mean.shape[:1]:
        raise ValueError(f"mean must be (c, O) and var (c,), got {tuple(mean.shape)} and {tuple(var.shape)}")


def link_probs(f: torch.Tensor, link: str = "softmax") -> torch.Tensor:
    """Class probabilities p(f) over the last axis of ``f`` (…, O): float64.

    Raises:
        ValueError: unknown link.
    """
    if link == "softmax":
        return torch.softmax(f.to(F64), dim=-1)
    if link == "simplex":
        return project_simplex(f.to(F64).reshape(-1, f.shape[-1])).reshape(f.shape)
    raise ValueError(f"link must be one of {', '.join(LINKS)}, got {link!r}")


def sample_probs(mean: torch.Tensor, var: torch.Tensor, eps: torch.Tensor, link: str = "softmax") -> torch.Tensor:
    """Class probabilities p(f) of the draws f = μ + √v ε: (S, c, O) float64.

    Args:
        mean: (c, O) μ.
        var: (c,) v ≥ 0.
        eps: (S, c, O) standard normal draws.
        link: ``softmax`` | ``simplex`` (:func:`link_probs`).

    Raises:
        ValueError: shapes that do not fit, or an unknown link.
    """
    _check(mean, var)
    if eps.ndim != 3 or eps.shape[1:] != mean.shape:
        raise ValueError(f"eps must be (S, {mean.shape[0]}, {mean.shape[1]}), got {tuple(eps.shape)}")
    f = mean.to(F64) + var.to(F64).clamp_min(0).sqrt()[:, None] * eps.to(F64)
    return link_probs(f, link)


def expected_probs(mean: torch.Tensor, var: torch.Tensor, eps: torch.Tensor | None = None,
                   link: str = "softmax") -> torch.Tensor:
    """E[p(f)] under f ~ N(μ, v I): (c, O) float64.

    With ``eps``: the Monte Carlo mean of :func:`sample_probs`. Without (softmax link only):
    the probit (mean-field) approximation softmax(μ / √(1 + π v / 4)) — Lu, Ie & Sha 2020
    (arXiv 2006.07584), mean-field form with pairwise variances v_k + v_l = 2v, built on the
    probit approximation σ(x) ≈ Φ(√(π/8) x) (MacKay 1992); exact up to that approximation
    for O = 2.

    Args:
        mean: (c, O) μ.
        var: (c,) v ≥ 0.
        eps: (S, c, O) standard normal draws, or None for the closed form.
        link: ``softmax`` | ``simplex``.

    Raises:
        ValueError: the closed form with a link other than softmax, or bad shapes.
    """
    _check(mean, var)
    if eps is not None:
        return sample_probs(mean, var, eps, link).mean(dim=0)
    if link != "softmax":
        raise ValueError(f"the probit closed form needs the softmax link, got {link!r}")
    scale = torch.sqrt(1.0 + 2.0 * PROBIT_LAMBDA * var.to(F64).clamp_min(0))
    return torch.softmax(mean.to(F64) / scale[:, None], dim=1)


def bald_mc(mean: torch.Tensor, var: torch.Tensor, eps: torch.Tensor, link: str = "softmax") -> torch.Tensor:
    """Mutual information I(y; f) under f ~ N(μ, v I), y ~ p(f), by Monte Carlo: (c,) nats.

    BALD = H[E p] − E H[p] (Houlsby et al. 2011, arXiv 1112.5745, Eq. 3), estimated from the
    S draws as in Gal, Islam & Ghahramani 2017, Eq. 4; ≥ 0 up to round-off.

    Args:
        mean: (c, O) μ.
        var: (c,) v ≥ 0.
        eps: (S, c, O) standard normal draws.
        link: ``softmax`` | ``simplex``.
    """
    p = sample_probs(mean, var, eps, link)
    return entropy(p.mean(dim=0)) - entropy(p).mean(dim=0)


def bald_probit(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Closed-form BALD of the decision between the two most likely classes: (c,) nats.

    With a, b the classes of the two largest μ, the label between them follows
    σ(f_a − f_b) ≈ Φ(√(π/8) d), d = f_a − f_b ~ N(μ_a − μ_b, 2v). For y ~ Φ(g), g ~ N(m, s²),
    Houlsby et al. 2011 (arXiv 1112.5745, Sec. 3, their closed form for GP classification with
    the probit link) give, in bits,

        I ≈ h(Φ(m / √(s² + 1))) − C / √(s² + C²) · exp(−m² / (2(s² + C²))),  C² = π ln 2 / 2,

    h the binary entropy; here m = √(π/8)(μ_a − μ_b), s² = (π/8)·2v, and the result is
    converted to nats and clamped at 0. Exact for O = 2 up to the two approximations (probit
    for sigmoid, exp(−x²/(π ln 2)) for h(Φ(x))); for O > 2 it ignores the other classes.

    Args:
        mean: (c, O) μ, O ≥ 2.
        var: (c,) v ≥ 0.

    Raises:
        ValueError: fewer than two classes, or shapes that do not fit.
    """
    _check(mean, var)
    if mean.shape[1] < 2:
        raise ValueError("BALD between two classes needs O >= 2")
    top2 = mean.to(F64).topk(2, dim=1).values
    m = math.sqrt(PROBIT_LAMBDA) * (top2[:, 0] - top2[:, 1])
    s2 = PROBIT_LAMBDA * 2.0 * var.to(F64).clamp_min(0)
    p = torch.special.ndtr(m / torch.sqrt(s2 + 1.0))
    h_bits = -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p)) / math.log(2.0)
    expected = math.sqrt(HOULSBY_C2) / torch.sqrt(s2 + HOULSBY_C2) * torch.exp(-m * m / (2.0 * (s2 + HOULSBY_C2)))
    # clamped at 0: the approximation of h(Φ(x)) can put it slightly below (≈ 1e-3 at v = 0)
    return ((h_bits - expected) * math.log(2.0)).clamp_min(0.0)


def z_margin(outputs: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Top-2 margin in predictive standard deviations, (f_(1) − f_(2)) / √v: (c,) float64.

    Under f ~ N(f, v I) the two leading classes swap with probability Φ(−z/√2), so a small
    z is a likely swap; any common scale of v (the GP's σ²) leaves the ranking unchanged.

    Args:
        outputs: (c, O) logits (the network's, or the GP mean), O ≥ 2.
        var: (c,) v > 0 (floor it at the round-off level first).
    """
    _check(outputs, var)
    top2 = outputs.to(F64).topk(2, dim=1).values
    return (top2[:, 0] - top2[:, 1]) / var.to(F64).sqrt()


def epig_mc(mean_c: torch.Tensor, var_c: torch.Tensor, mean_t: torch.Tensor, var_t: torch.Tensor,
            cov_tc: torch.Tensor, eps_c: torch.Tensor, eps_t: torch.Tensor, link: str = "softmax",
            chunk: int = 64) -> torch.Tensor:
    """Expected predictive information gain about the targets, by Monte Carlo: (C,) nats.

    EPIG(x) = E_{x*}[I(y; y* | x, x*)] (the definition of Bickford Smith et al., AISTATS 2023,
    arXiv 2304.08151, Sec. 3), averaged over the T given targets. Their classification estimator with
    function draws instead of parameter draws: per pair (x, x*) the latent outputs are jointly
    Gaussian, f_x = μ_x + √v_x ε, f_* = μ_* + √v_* (ρ ε + √(1 − ρ²) η), ρ = cov/√(v_x v_*);
    p̂(y, y*) = (1/S) Σ_s p(f_x^s)_y p(f_*^s)_{y*}, and I is the KL divergence of
    p̂(y, y*) from the product of its marginals (≥ 0). ε is the candidate's draw, η the
    target's, shared across pairs (each pair's joint law is exact).

    Args:
        mean_c: (C, O) candidates' μ.
        var_c: (C,) their variances.
        mean_t: (T, O) targets' μ.
        var_t: (T,) their variances.
        cov_tc: (T, C) covariances of a target's and a candidate's latent output (one class).
        eps_c: (S, C, O) standard normal draws of the candidates.
        eps_t: (S, T, O) standard normal draws of the targets.
        link: ``softmax`` | ``simplex``.
        chunk: candidates per block (memory S·chunk·T·O floats).

    Raises:
        ValueError: shapes that do not fit.
    """
    _check(mean_c, var_c)
    _check(mean_t, var_t)
    if cov_tc.shape != (len(var_t), len(var_c)):
        raise ValueError(f"cov_tc must be (T, C) = ({len(var_t)}, {len(var_c)}), got {tuple(cov_tc.shape)}")
    sd_c, sd_t = var_c.to(F64).clamp_min(0).sqrt(), var_t.to(F64).clamp_min(0).sqrt()
    denom = sd_t[:, None] * sd_c[None, :]
    rho = torch.where(denom > 0, cov_tc.to(F64) / denom.clamp_min(torch.finfo(F64).tiny), torch.zeros_like(denom))
    rho = rho.clamp(-1.0, 1.0)
    out = torch.empty(len(var_c), dtype=F64)
    eps_t = eps_t.to(F64)
    for s in range(0, len(var_c), chunk):
        sl = slice(s, s + chunk)
        p_c = sample_probs(mean_c[sl], var_c[sl], eps_c[:, sl], link)  # (S, c, O)
        r = rho[:, sl].T  # (c, T)
        e_c = eps_c[:, sl].to(F64)  # (S, c, O)
        # f_* for every (sample, candidate, target): (S, c, T, O)
        z = r[None, :, :, None] * e_c[:, :, None, :] + torch.sqrt(1.0 - r * r)[None, :, :, None] * eps_t[:, None]
        p_t = link_probs(mean_t.to(F64)[None, None] + sd_t[None, None, :, None] * z, link)
        joint = torch.einsum("sco,sctq->ctoq", p_c, p_t) / p_c.shape[0]  # (c, T, O, O)
        marg_c, marg_t = joint.sum(dim=3), joint.sum(dim=2)  # (c, T, O) each
        indep = marg_c[..., :, None] * marg_t[..., None, :]
        kl = (torch.xlogy(joint, joint) - torch.xlogy(joint, indep)).sum(dim=(2, 3))  # (c, T)
        out[sl] = kl.mean(dim=1)
    return out


def epig_gaussian(var_c: torch.Tensor, var_t: torch.Tensor, cov_tc: torch.Tensor, noise: float,
                  num_outputs: int) -> torch.Tensor:
    """EPIG of the GP's own regression model (Gaussian labels), in closed form: (C,) nats.

    With y = f + ε, ε ~ N(0, noise) per class, (y_x, y_*) is bivariate Gaussian per class with
    correlation ρ = cov / √((v_x + noise)(v_* + noise)), and I(y_x; y_*) = −½ log(1 − ρ²)
    per class (Cover & Thomas 2006, Example 8.5.1), O independent classes; averaged over the
    targets as EPIG (Bickford Smith et al. 2023, Sec. 3). Unchanged when every variance and the
    noise scale by one factor (the GP's σ²).

    Args:
        var_c: (C,) candidates' latent variances.
        var_t: (T,) targets' latent variances.
        cov_tc: (T, C) latent covariances.
        noise: label noise variance (≥ 0; the GP's σ²λ).
        num_outputs: O.

    Raises:
        ValueError: noise < 0 or shapes that do not fit.
    """
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    if cov_tc.shape != (len(var_t), len(var_c)):
        raise ValueError(f"cov_tc must be (T, C) = ({len(var_t)}, {len(var_c)}), got {tuple(cov_tc.shape)}")
    den = (var_t.to(F64)[:, None] + noise) * (var_c.to(F64)[None, :] + noise)
    rho2 = torch.where(den > 0, cov_tc.to(F64) ** 2 / den.clamp_min(torch.finfo(F64).tiny), torch.zeros_like(den))
    return (-0.5 * num_outputs * torch.log1p(-rho2.clamp(max=1.0 - 1e-15))).mean(dim=0)
