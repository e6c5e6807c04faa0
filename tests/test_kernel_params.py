"""Kernels over a subset of the parameters (issue 17): ``params=`` of pntk/entk/kernel, the
feature kernel, ``RoundContext.kernel(params=)`` and the look-ahead's ``kernel_params``.

Reference: float64 per-sample gradients of the chosen parameters only (torch.func), J_S J_S^T.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from entk_al.ntk import FeatureKernel, entk, pntk
from entk_al.ntk.common import parse_params, select_params


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 5 * 5, 7), nn.Tanh(), nn.Linear(7, 4)).double().eval()


def _brute_entk(model, x, names):
    """(N, N, O, O) eNTK over the parameters ``names`` only, by full Jacobians."""
    params = {n: p.detach() for n, p in model.named_parameters()}

    def f(sub, xi):
        return functional_call(model, {**params, **sub}, (xi.unsqueeze(0),)).reshape(-1)

    jac = vmap(jacrev(f), in_dims=(None, 0))({n: params[n] for n in names}, x)
    j = torch.cat([jac[n].reshape(len(x), jac[n].shape[1], -1) for n in names], dim=2)  # (N, O, P_S)
    return torch.einsum("aop,bqp->aboq", j, j)


@pytest.mark.parametrize("spec,names", [
    ("last:1", ["6.weight", "6.bias"]),
    ("last:2", ["4.weight", "4.bias", "6.weight", "6.bias"]),
    (["0."], ["0.weight", "0.bias"]),
    ("1.,6.bias", ["1.weight", "1.bias", "6.bias"]),
])
def test_subset_kernels_equal_the_brute_force_jacobian_of_the_subset(spec, names):
    model = _net()
    x = torch.randn(6, 1, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = _brute_entk(model, x, names)
    spec = parse_params(spec)
    assert sorted(select_params(model, spec)) == sorted(names)
    got = entk(model, x, params=spec)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)
    o = ref.shape[-1]
    p_ref = ref.sum((2, 3)) / o
    torch.testing.assert_close(pntk(model, x, params=spec), p_ref, rtol=1e-9, atol=1e-12)
    prep = FeatureKernel(params=spec).prepare(model, x)
    f = prep.features(x)
    torch.testing.assert_close(prep.block(f, f), p_ref, rtol=1e-9, atol=1e-12)
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_all_includes_frozen_parameters_and_trainable_leaves_them_out():
    model = _net()
    for p in model[0].parameters():
        p.requires_grad_(False)
    x = torch.randn(5, 1, 5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    ref_all = _brute_entk(model, x, names).sum((2, 3)) / 4
    ref_train = _brute_entk(model, x, names[2:]).sum((2, 3)) / 4
    torch.testing.assert_close(pntk(model, x, params="all"), ref_all, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(pntk(model, x), ref_train, rtol=1e-9, atol=1e-12)
    assert [p.requires_grad for p in model.parameters()] == [False, False] + [True] * 6


@pytest.mark.parametrize("spec,needle", [(["nope."], "match no parameter"), ("last:0", "N >= 1"),
                                         (3, "must be 'trainable'")])
def test_bad_specs_are_one_clear_error(spec, needle):
    with pytest.raises(ValueError, match=needle):
        pntk(_net(), torch.randn(2, 1, 5, 5, dtype=torch.float64), params=spec)


def test_lookahead_kernel_params_equals_freezing_the_rest():
    """-o kernel_params=last:1 on a model equals the default on the same model with every other
    parameter frozen (requires_grad False), and the round context reports it."""
    from strategies.lookahead import LookaheadSampling

    from fakes import digits_round

    r = digits_round(n_labeled=30, n_candidates=120)
    ctx = r.context()
    picks = LookaheadSampling(kernel_params="last:1").select(ctx, 6)
    assert ctx.info["kernel_params"] == "last:1"
    model = copy.deepcopy(r.model)
    for p in list(model.parameters())[:-2]:
        p.requires_grad_(False)
    # frozen before the context exists: its executor works on its own copy of the round's model
    frozen = r.context(model=model)
    assert np.array_equal(LookaheadSampling().select(frozen, 6), picks)
    with pytest.raises(ValueError, match="must be 'trainable'|match no|N >= 1"):
        LookaheadSampling(kernel_params="last:x")
