"""Exactness of the NTK engines against an independent torch.func brute force (float64)."""
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from entk_al.ntk import entk, gram, kernel, layers, pntk

RTOL = 1e-10


def brute_entk(model, x1, x2=None):
    """Independent brute force: jacrev of the whole batch output w.r.t. all trainable
    parameters flattened, Theta = J J^T (Jacot et al. 2018, eq. 3).
    Returns the (N1, N2, O, O) eNTK in eval mode; restores model.training."""
    was = model.training
    model.eval()
    try:
        params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

        def jac(x):
            j = jacrev(lambda p: functional_call(model, p, (x,)))(params)
            n = x.shape[0]
            # j[k]: (N, O, *param_shape) -> (N, O, P)
            return torch.cat([j[k].reshape(n, -1, params[k].numel()) for k in params], dim=2)

        j1 = jac(x1)
        j2 = j1 if x2 is None else jac(x2)
        return torch.einsum("nkp,mlp->nmkl", j1, j2)
    finally:
        model.train(was)


def close(a, b, rtol=RTOL):
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = b.abs().max().item()
    err = (a - b).abs().max().item()
    assert err <= rtol * max(scale, 1e-300), f"max err {err:.3e} vs scale {scale:.3e}"


def check_all(model, x1, x2=None, methods=("gram", "jacobian"), tile=None):
    ref = brute_entk(model, x1, x2)
    n_out = ref.shape[-1]
    for method in methods:
        e = entk(model, x1, x2, method=method, tile_size=tile)
        close(e, ref)
        close(pntk(model, x1, x2, method=method, tile_size=tile), ref.sum((2, 3)) / n_out)
        diag = torch.diagonal(ref, dim1=2, dim2=3)
        close(kernel(model, x1, x2, kind="block_diag", method=method, tile_size=tile), diag)
        close(kernel(model, x1, x2, kind="trace", method=method, tile_size=tile), diag.mean(-1))
        close(kernel(model, x1, x2, kind="first_logit", method=method, tile_size=tile),
              ref[..., 0, 0])
    return ref


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 8), nn.ReLU(),
                         nn.Linear(8, 3)).double()


def test_mlp_symmetric_cross_and_tiling():
    m = mlp()
    x1, x2 = torch.randn(7, 6, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
    check_all(m, x1, tile=3)  # 7 = 3 + 3 + 1: tile boundaries, symmetric fill
    check_all(m, x1, x2, tile=2)
    ref = brute_entk(m, x1)
    close(pntk(m, x1), ref.sum((2, 3)) / 3)  # defaults (auto)
    k = pntk(m, x1)
    assert k.dtype == torch.float64 and torch.equal(k, k.T)


def test_pntk_is_mean_of_entk_and_auto_equals_gram():
    m = mlp()
    x = torch.randn(5, 6, dtype=torch.float64)
    e = entk(m, x, method="gram")
    close(pntk(m, x, method="auto"), e.sum((2, 3)) / e.shape[-1])


class BNCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Conv2d(4, 6, 3, stride=2), nn.BatchNorm2d(6),
            nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(6 * 3 * 3, 12), nn.BatchNorm1d(12),
            nn.Tanh(), nn.Linear(12, 4))

    def forward(self, x):
        return self.f(x)


def test_cnn_batchnorm_eval_mode_and_mode_restored():
    torch.manual_seed(1)
    m = BNCNN().double()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m.train()
    for _ in range(3):
        opt.zero_grad()
        m(torch.randn(16, 2, 8, 8, dtype=torch.float64) * 2 + 1).pow(2).mean().backward()
        opt.step()
    assert m.f[1].running_mean.abs().sum() > 0
    x1, x2 = torch.randn(5, 2, 8, 8, dtype=torch.float64), torch.randn(3, 2, 8, 8, dtype=torch.float64)
    check_all(m, x1, tile=2)
    check_all(m, x1, x2)
    assert m.training and all(mod.training for mod in m.modules())
    m.f[3].eval()  # mixed modes are restored per module
    pntk(m, x1)
    assert m.training and not m.f[3].training
    m.eval()
    pntk(m, x1)
    assert not m.training


def conv_model():
    torch.manual_seed(2)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv1d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2)
            self.c1b = nn.Conv1d(6, 6, 3, padding="same", padding_mode="circular", bias=False)
            self.c2 = nn.Conv2d(6, 8, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
            self.c3 = nn.Conv2d(8, 4, 3, padding="same", padding_mode="reflect", groups=4)
            self.head = nn.Linear(4 * 3 * 10, 3)

        def forward(self, x):  # x (N, 4, 10)
            h = torch.tanh(self.c1b(torch.tanh(self.c1(x))))  # (N, 6, 5)
            h = h.unsqueeze(-1) * torch.linspace(-1, 1, 8, dtype=h.dtype)  # (N, 6, 5, 8)
            h = torch.tanh(self.c3(torch.tanh(self.c2(h))))  # (N, 4, 3, 10)
            return self.head(h.flatten(1))

    return M().double()


@pytest.mark.parametrize("form", ["exact", "materialized"])
def test_grouped_dilated_strided_padded_convs(form, monkeypatch):
    monkeypatch.setattr(layers, "FORCE_FORM", form)
    m = conv_model()
    x1, x2 = torch.randn(5, 4, 10, dtype=torch.float64), torch.randn(2, 4, 10, dtype=torch.float64)
    check_all(m, x1, tile=3, methods=("gram",))
    check_all(m, x1, x2, methods=("gram",))
    plan = _plan(m, x1)
    assert not plan.fallback and len(plan.layers) == 5
    assert all(lp.exact == (form == "exact") for lp in plan.layers)


def _plan(m, x, kind="pntk"):
    from entk_al.ntk import common
    with common.eval_mode(m):
        V, full = common.directions(kind, m(x[:1]).shape[-1], "cpu", torch.float64)
        return gram.build_plan(m, common.trainable(m), x, V, 512, full)


class SeqModel(nn.Module):
    """Embedding -> Linear on (N, T, d) -> LayerNorm -> GroupNorm -> pooled head."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6, padding_idx=0)
        self.lin = nn.Linear(6, 8)
        self.ln = nn.LayerNorm(8)
        self.gn = nn.GroupNorm(2, 4)
        self.ln2 = nn.LayerNorm((4, 8), bias=False)
        self.proj = nn.Linear(8, 4 * 8)
        self.head = nn.Linear(8, 3)

    def forward(self, ids):  # (N, T)
        h = torch.tanh(self.ln(self.lin(self.emb(ids))))  # (N, T, 8)
        z = self.proj(h.mean(1)).reshape(len(ids), 4, 8)
        z = torch.tanh(self.ln2(self.gn(z)))
        return self.head(z.mean(1) + h[:, 0])


@pytest.mark.parametrize("form", ["exact", "materialized", None])
def test_layernorm_groupnorm_embedding(form, monkeypatch):
    monkeypatch.setattr(layers, "FORCE_FORM", form)
    torch.manual_seed(3)
    m = SeqModel().double()
    with torch.no_grad():
        for mod in (m.ln, m.gn, m.ln2):
            mod.weight.normal_()
    x1 = torch.randint(0, 11, (5, 7))
    x1[0, :3] = 0  # padding_idx gets no gradient
    x2 = torch.randint(0, 11, (3, 7))
    check_all(m, x1, tile=2, methods=("gram",))
    check_all(m, x1, x2, methods=("gram", "jacobian"))
    plan = _plan(m, x1)
    assert not plan.fallback and len(plan.layers) == 7


class Scale(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, d))

    def forward(self, x):
        return x * self.scale


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 6)
        self.s = Scale(6)
        self.shift = nn.Parameter(torch.randn(6))  # on a module that has children
        self.shared = nn.Linear(6, 6)  # called twice: weight sharing
        self.frozen = nn.Linear(6, 6)
        self.frozen.weight.requires_grad_(False)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.s(self.a(x)) + self.shift)
        h = torch.tanh(self.shared(torch.tanh(self.shared(h))))
        h = torch.tanh(self.frozen(h))
        return self.out(h)


def test_custom_parameters_weight_sharing_and_frozen():
    torch.manual_seed(4)
    m = Custom().double()
    x1, x2 = torch.randn(6, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    check_all(m, x1, tile=4)
    check_all(m, x1, x2, methods=("gram",))
    plan = _plan(m, x1)
    assert set(plan.fallback) == {"s.scale", "shift", "shared.weight", "shared.bias"}
    assert {id(lp.mod) for lp in plan.layers} == {id(m.a), id(m.frozen), id(m.out)}
    assert [lp.names for lp in plan.layers if lp.mod is m.frozen] == [["bias"]]


class Tied(nn.Module):
    """Output layer reuses the embedding matrix functionally: the hook on the embedding alone
    misses that use, which the probe's gradient check must detect."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.lin = nn.Linear(4, 4)

    def forward(self, ids):
        h = torch.tanh(self.lin(self.emb(ids).mean(1)))
        return nn.functional.linear(h, self.emb.weight)


def test_functional_weight_reuse_goes_to_fallback():
    torch.manual_seed(5)
    m = Tied().double()
    x1 = torch.randint(0, 7, (5, 3))
    check_all(m, x1, tile=2, methods=("gram",))
    assert set(_plan(m, x1).fallback) == {"emb.weight"}


def test_float32_model_casts_inputs():
    torch.manual_seed(6)
    m = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    x = torch.randn(6, 4, dtype=torch.float64)
    k = pntk(m, x)
    assert k.dtype == torch.float32 and k.shape == (6, 6)
    ref = brute_entk(m.double(), x).sum((2, 3)) / 2
    close(k.double(), ref, rtol=1e-5)


@pytest.mark.parametrize("call", [
    lambda m, x: kernel(m, x, kind="nope"),
    lambda m, x: pntk(m, x, method="fast"),
    lambda m, x: pntk(m, x, torch.randn(3, 5)),
    lambda m, x: pntk(m, x[:0]),
    lambda m, x: pntk(m, x, tile_size=0),
    lambda m, x: entk(m, x, batch_size=-2),
    lambda m, x: pntk(m.requires_grad_(False), x),
])
def test_bad_args_raise_value_error(call):
    m = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(ValueError):
        call(m, torch.randn(3, 4))


@pytest.mark.slow
def test_resnet18_cifar_shape():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(7)
    m = tv.models.resnet18(num_classes=10).double()
    m.train()
    with torch.no_grad():
        m(torch.randn(8, 3, 32, 32, dtype=torch.float64))  # non-trivial running stats
    x1, x2 = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.randn(2, 3, 32, 32, dtype=torch.float64)
    ref = brute_entk(m, x1, x2)
    close(entk(m, x1, x2, method="gram"), ref)
    close(pntk(m, x1, x2), ref.sum((2, 3)) / 10)
    plan = _plan(m, x1)
    assert not plan.fallback
    assert m.training


def test_cost_model_picks_form_for_the_tile_it_is_called_with():
    """CIFAR ResNet-18 shapes: the old model forced the factored form (cost n^2 T^2) on
    layer2/layer3 convs whenever their materialized block exceeded a fixed budget at
    n = 1024, whatever N was. Large-T convs must stay materialized at any tile size; small-T
    wide convs (layer4) are cheaper factored."""
    use = layers.linear_use_exact
    for n in (16, 128, 1024):
        assert not use(1024, 1, 576, 64, 1, n, n, 4, True)  # layer1: T = 32*32
        assert not use(256, 1, 1152, 128, 1, n, n, 4, True)  # layer2
        assert not use(64, 1, 2304, 256, 1, n, n, 4, True)  # layer3
        assert use(16, 1, 4608, 512, 1, n, n, 4, True)  # layer4: T = 4*4, di = 4608
    assert use(1, 1, 512, 10, 1, 64, 64, 4, True)  # dense readout: Hadamard form


def test_default_tile_shrinks_to_feature_budget(monkeypatch):
    """With a tiny feature budget the default tile shrinks (and the kernel stays exact)."""
    seen = []
    real = gram.tiled_kernel

    def spy(feats, pair_fn, x1, x2, tile, full, *a, **k):
        seen.append(tile)
        return real(feats, pair_fn, x1, x2, tile, full, *a, **k)

    monkeypatch.setattr(gram, "tiled_kernel", spy)
    m = mlp()
    x = torch.randn(9, 6, dtype=torch.float64)
    ref = brute_entk(m, x).sum((2, 3)) / 3
    close(pntk(m, x, method="gram"), ref)
    assert seen[-1] >= 9  # fits: one tile
    monkeypatch.setattr(gram, "MIN_TILE", 2)
    monkeypatch.setattr(gram, "FEATURE_TILE_BYTES", 3 * gram.build_plan(
        m, dict(m.named_parameters()), x, torch.ones(1, 3, dtype=torch.float64) / 3 ** 0.5, 9,
        True).bytes_per_sample(1, 8))
    close(pntk(m, x, method="gram"), ref)
    assert seen[-1] == 3


def _pntk_brute_autograd(m, x1, x2):
    """pNTK from per-sample gradients of s(x) = sum_k f_k(x) / sqrt(O), one plain autograd call
    per sample (independent of both engines and of torch.func)."""
    params = [p for p in m.parameters() if p.requires_grad]

    def g(x):
        out = m(x.unsqueeze(0)).reshape(-1)
        gs = torch.autograd.grad(out.sum() / out.numel() ** 0.5, params)
        return torch.cat([t.reshape(-1) for t in gs])

    was = m.training
    m.eval()
    try:
        j1 = torch.stack([g(x) for x in x1])
        j2 = torch.stack([g(x) for x in x2])
    finally:
        m.train(was)
    return j1 @ j2.T


@pytest.mark.slow
@pytest.mark.parametrize("form", [None, "materialized"])
def test_resnet18_cifar_exact(form, monkeypatch):
    """CIFAR-form ResNet-18 (3x3 stride-1 stem, no max-pool: 32x32 first stage), float64,
    against per-sample autograd gradients: default cost-model forms (layer4 factored, the rest
    materialized) and everything materialized; cross kernel, symmetric kernel, tiles of 2."""
    pytest.importorskip("torchvision")
    from entk_al.nets.models import resnet18_32

    monkeypatch.setattr(layers, "FORCE_FORM", form)
    torch.manual_seed(8)
    m = resnet18_32((3, 32, 32), 10).double()
    m.train()
    with torch.no_grad():
        m(torch.randn(8, 3, 32, 32, dtype=torch.float64))  # non-trivial running stats
    x1 = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    x2 = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    ref = _pntk_brute_autograd(m, x1, torch.cat([x1, x2]))
    close(pntk(m, x1, x2, method="gram"), ref[:, 4:])
    close(pntk(m, x1, method="gram", tile_size=2), ref[:, :4])
    plan = _plan(m, x1)
    assert not plan.fallback
    if form is None:
        assert {lp.mod.weight.shape[0] for lp in plan.layers if lp.exact} == {512, 10}
    assert m.training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_smoke():
    """Same code on CUDA: gram engine vs the jacobian path, CNN with BatchNorm, float32."""
    torch.manual_seed(9)
    m = BNCNN().cuda().eval()
    x1 = torch.randn(6, 2, 8, 8, device="cuda")
    x2 = torch.randn(3, 2, 8, 8, device="cuda")
    g = pntk(m, x1, x2, method="gram")
    j = pntk(m, x1, x2, method="jacobian")
    assert g.device.type == "cuda" and g.shape == (6, 3)
    close(g.double(), j.double(), rtol=1e-4)
    close(pntk(m, x1, tile_size=4).double(), pntk(m, x1, method="jacobian").double(), rtol=1e-4)


def test_long_float32_contractions_keep_float64_accuracy():
    # Reference: the same Gram in float64. One float32 GEMM over millions of materialized
    # columns (a ResNet tile) loses ~3 digits; the engine sums column chunks in float64.
    from entk_al.ntk.gram import _pair_mat

    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 6, 3_000_000, generator=g)
    ref = a[0].double() @ a[0].double().T
    got = _pair_mat(a, a, False)[0].double()
    assert got.dtype == torch.float64 and _pair_mat(a, a, False).dtype == torch.float32
    assert ((got - ref).abs().max() / ref.abs().max()).item() < 1e-5
    out = torch.ones(1, 6, 6)
    _pair_mat(a, a, False, out)
    torch.testing.assert_close(out[0].double(), ref + 1, rtol=1e-5, atol=0)


@pytest.mark.parametrize("conv", ["shift", "grouped", "im2col"])
def test_conv_materialized_forms_match_brute_force(conv, monkeypatch):
    """Each way of materializing per-sample conv gradients (layers.conv_shift_materialize,
    layers.conv_grouped_materialize, im2col + bmm), forced onto small convolutions: kernels
    3x3 / 5x5 / 1x1 / 3x1, symmetric and asymmetric padding, with and without bias, a stride-2
    conv (no shift form: it keeps im2col), against the float64 brute-force eNTK, the pNTK and a
    2-row tiling."""
    monkeypatch.setattr(layers, "FORCE_FORM", "materialized")
    monkeypatch.setattr(layers, "FORCE_CONV", conv)
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 4, 5, padding=2, bias=False),
                      nn.Tanh(), nn.Conv2d(4, 3, 1), nn.Tanh(), nn.Conv2d(3, 2, (3, 1), padding=(1, 0)),
                      nn.Tanh(), nn.Conv2d(2, 2, 3, padding=0), nn.Tanh(), nn.Conv2d(2, 3, 3, stride=2, padding=1),
                      nn.Flatten(), nn.Linear(3 * 3 * 2, 3)).double()
    calls = []
    for name in ("conv_shift_materialize", "conv_grouped_materialize"):
        real = getattr(layers, name)
        monkeypatch.setattr(layers, name, lambda *a, real=real, name=name: calls.append((name, a[0])) or real(*a))
    x1, x2 = torch.randn(4, 2, 7, 6, dtype=torch.float64), torch.randn(3, 2, 7, 6, dtype=torch.float64)
    check_all(m, x1, x2, methods=("gram",))
    check_all(m, x1, tile=2, methods=("gram",))
    convs = [c for c in m if isinstance(c, nn.Conv2d)]
    want = {"shift": convs[:-1], "grouped": convs, "im2col": []}[conv]
    assert {id(c) for _, c in calls} == {id(c) for c in want}
    assert {n for n, _ in calls} <= {f"conv_{conv}_materialize"}


def test_conv_form_rule():
    """Without FORCE_CONV: the CPU rule of layers.conv_form (grouped for narrow layers with
    many positions, shifted views for stride-1 wide ones, im2col otherwise); shapes that no
    special form handles keep im2col."""
    x32 = torch.randn(1, 32, 32, 32)
    form = layers.conv_form
    assert form(nn.Conv2d(32, 64, 3, padding=1), x32) == "grouped"  # WRN-28-2 stage 1
    assert form(nn.Conv2d(32, 64, 3, padding=1, stride=2), x32) == "grouped"  # 16x16 out
    assert form(nn.Conv2d(128, 128, 3, padding=1), torch.randn(1, 128, 8, 8)) == "im2col"
    assert form(nn.Conv2d(160, 160, 3, padding=1), torch.randn(1, 160, 32, 32)) == "shift"
    assert form(nn.Conv2d(640, 640, 3, padding=1), torch.randn(1, 640, 8, 8)) == "shift"
    assert form(nn.Conv2d(320, 640, 3, padding=1, stride=2), torch.randn(1, 320, 16, 16)) == "im2col"
    assert form(nn.Conv2d(16, 160, 3, padding=1), torch.randn(1, 16, 32, 32)) == "im2col"
    for odd in (nn.Conv2d(32, 8, 3, padding=1, dilation=2, stride=2, groups=2),
                nn.Conv2d(32, 8, 3, padding=1, padding_mode="reflect"), nn.Conv2d(32, 8, 3, padding="same")):
        assert form(odd, x32) == "im2col"
    assert not layers.shift_ok(nn.Conv2d(32, 8, 3, padding=1, stride=2), x32, thresholds=False)


class ConvBN(nn.Module):
    """Conv -> BN directly (biased and unbiased convs), a ReLU(inplace) and a residual +=
    (outputs modified in place), Linear -> BatchNorm1d, a BatchNorm after a sum (not foldable)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 3, 3, padding=1)
        self.b1 = nn.BatchNorm2d(3)
        self.c2 = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(3)
        self.b3 = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 6 * 5, 5)
        self.b4 = nn.BatchNorm1d(5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        h = torch.relu_(self.b1(self.c1(x)))
        r = self.b2(self.c2(h))
        r += h
        h = torch.tanh(self.b3(r))
        return self.out(torch.tanh(self.b4(self.fc(h.flatten(1)))))


def _trained_convbn():
    torch.manual_seed(11)
    m = ConvBN().double()
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(16, 2, 6, 5, dtype=torch.float64) * 2 + 1)  # running stats away from 0 / 1
        for bn in (m.b1, m.b2, m.b3, m.b4):
            bn.weight.uniform_(0.5, 1.5).mul_(torch.sign(torch.randn_like(bn.weight)))
            bn.bias.normal_()
    return m


@pytest.mark.parametrize("conv", ["shift", "grouped", "im2col"])
def test_batchnorm_fold_and_inplace_clones_match_brute_force(conv, monkeypatch):
    """BatchNorm weight gradients folded into the materialized gradient of the conv / linear
    they normalize (layers.bn_fold_weight), for each column order of the conv's gradient;
    outputs cloned only where the forward modifies them in place; float64 brute force."""
    monkeypatch.setattr(layers, "FORCE_FORM", "materialized")
    monkeypatch.setattr(layers, "FORCE_CONV", conv)
    monkeypatch.setattr(gram, "FOLD_MAX_DI_PER_T", 10**9)
    m = _trained_convbn()
    x1, x2 = torch.randn(5, 2, 6, 5, dtype=torch.float64), torch.randn(3, 2, 6, 5, dtype=torch.float64)
    folds = []
    real = layers.bn_fold_weight
    monkeypatch.setattr(layers, "bn_fold_weight", lambda lin, bn, *a, **k: folds.append(bn) or real(lin, bn, *a, **k))
    check_all(m, x1, x2, methods=("gram",))
    check_all(m, x1, tile=2, methods=("gram",))
    plan = _plan(m, x1)
    by_mod = {id(lp.mod): lp for lp in plan.layers}
    assert not plan.fallback and len(plan.layers) == 8
    assert [by_mod[id(b)].fold for b in (m.b1, m.b2, m.b3, m.b4)] == [True, True, False, True]
    assert {id(b) for b in folds} >= {id(m.b1), id(m.b2), id(m.b4)} and id(m.b3) not in {id(b) for b in folds}
    # ReLU(inplace) rewrites b1's output, += rewrites b2's: only those are cloned
    names = ("c1", "b1", "c2", "b2", "b3", "fc", "b4", "out")
    assert {n for n in names if by_mod[id(getattr(m, n))].clone_out} == {"b1", "b2"}


def test_batchnorm_fold_skips_zero_weights(monkeypatch):
    """A BatchNorm weight with a zero entry cannot be folded (the fold divides by it): that
    BatchNorm keeps the direct form and the kernel stays exact."""
    monkeypatch.setattr(layers, "FORCE_FORM", "materialized")
    monkeypatch.setattr(gram, "FOLD_MAX_DI_PER_T", 10**9)
    m = _trained_convbn()
    with torch.no_grad():
        m.b2.weight[1] = 0.0
    x = torch.randn(4, 2, 6, 5, dtype=torch.float64)
    check_all(m, x, methods=("gram",))
    by_mod = {id(lp.mod): lp for lp in _plan(m, x).layers}
    assert by_mod[id(m.b1)].fold and not by_mod[id(m.b2)].fold


class Gated(nn.Module):
    """``lin.weight`` also used functionally behind a gate initialized at 0: at initialization
    that use contributes no gradient, so the probe's check passes; after training it does."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        h = torch.tanh(self.lin(x))
        return self.out(h) + self.gate * nn.functional.linear(h, self.lin.weight)[:, :3]


def test_plan_cache_reuses_the_probe_and_reprobes_on_any_change(monkeypatch):
    """The 4-sample probe runs once per (model, key); a changed trainable set, dtype, input
    shape or any weight re-probes. Weights must re-probe: a plan probed with the gate at 0
    treats lin.weight as hook-only, which is wrong once the gate is non-zero."""
    gram.clear_plan_cache()
    probes = []
    real = gram._probe
    monkeypatch.setattr(gram, "_probe", lambda *a: probes.append(1) or real(*a))
    torch.manual_seed(12)
    m = Gated().double()
    x = torch.randn(6, 4, dtype=torch.float64)
    ref = brute_entk(m, x).sum((2, 3)) / 3
    close(pntk(m, x), ref)
    close(pntk(m, x, tile_size=2), ref)
    close(pntk(m, x[:3], x), ref[:3])
    assert len(probes) == 1
    stale = _plan(m, x)  # probed with the gate at 0: lin is in the engine
    assert "lin.weight" not in stale.fallback and len(probes) == 1
    with torch.no_grad():
        m.gate.fill_(0.7)  # a weight update (in place, like an optimizer step)
    ref = brute_entk(m, x).sum((2, 3)) / 3
    close(pntk(m, x), ref)
    assert len(probes) == 2 and "lin.weight" in _plan(m, x).fallback
    from entk_al.ntk import common
    with common.eval_mode(m):
        V = torch.full((1, 3), 3 ** -0.5, dtype=torch.float64)
        f = gram.tile_features(stale, m, x, V, None)
        wrong = gram.pair(f, f, True)[0, 0]
    assert (wrong - ref).abs().max() > 1e-3 * ref.abs().max()  # the stale plan is wrong
    m.out.weight.requires_grad_(False)
    frozen = pntk(m, x)
    assert len(probes) == 3
    close(frozen, ref - _out_weight_share(m, x))
    m.out.weight.requires_grad_(True)
    close(pntk(m, x), ref)
    assert len(probes) == 3  # back to a key probed before
    m.float()
    pntk(m, x)
    assert len(probes) == 4


def _out_weight_share(m, x):
    """pNTK share of ``out.weight``: (1/O) sum over outputs of h h'^T (a Linear readout)."""
    with torch.no_grad():
        h = torch.tanh(m.lin(x))
    return h @ h.T


class InplaceOnBigInputs(nn.Module):
    """Multiplies the first layer's output by 1 in place only when an input exceeds 3: the
    4-sample probe (small inputs) does not see it, a later tile does."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        if bool((x.abs() > 3).any()):
            h.mul_(1.0)
        return self.out(torch.tanh(h))


def test_tile_that_differs_from_the_probe_falls_back_exactly():
    """A tile whose forward modifies an output in place that the probe saw untouched raises
    PlanMismatch inside the engine, which recomputes the kernel with every hooked tensor
    copied: exact, with a warning."""
    gram.clear_plan_cache()
    torch.manual_seed(13)
    m = InplaceOnBigInputs().double()
    x = torch.randn(6, 3, dtype=torch.float64).clamp(-1, 1)
    x[5, 0] = 5.0
    ref = brute_entk(m, x).sum((2, 3)) / 2
    with pytest.warns(RuntimeWarning, match="modified in place in this tile.*copied"):
        got = pntk(m, x, tile_size=2)
    close(got, ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        close(pntk(m, x[:4]), ref[:4, :4])  # re-probed after the mismatch, no warning


def test_reduced_precision_gram():
    """precision="bf16": float32 result within bf16 rounding of the exact kernel; "tf32" needs
    CUDA; bad values and the jacobian method are refused."""
    torch.manual_seed(14)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                      nn.Linear(4 * 6 * 6, 3))
    x1, x2 = torch.randn(5, 2, 6, 6), torch.randn(3, 2, 6, 6)
    for kind in ("pntk", "entk"):
        exact = kernel(m, x1, x2, kind=kind)
        low = kernel(m, x1, x2, kind=kind, precision="bf16")
        assert low.dtype == torch.float32 and low.shape == exact.shape
        rel = ((low - exact).norm() / exact.norm()).item()
        assert 0 < rel < 2e-2
    sym = pntk(m, x1, precision="bf16")
    assert torch.equal(sym, sym.T)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            pntk(m, x1, precision="tf32")
    with pytest.raises(ValueError, match="precision"):
        pntk(m, x1, precision="fp8")
    with pytest.raises(ValueError, match="gram engine"):
        pntk(m, x1, method="jacobian", precision="bf16")


@pytest.mark.slow
@pytest.mark.parametrize("form", [None, "materialized"])
def test_wide_resnet_exact(form, monkeypatch):
    """The look-ahead paper's WideResNet (entk_al.nets.models "wide_resnet": width 640, one block per
    group, 7.4M parameters), float64, non-trivial BatchNorm statistics and weights, against
    per-sample autograd gradients: default forms (with the CPU's grouped / shifted conv forms
    and BatchNorm folds) and everything materialized; cross, symmetric, tiles of 2."""
    from entk_al.nets.models import build_model

    monkeypatch.setattr(layers, "FORCE_FORM", form)
    m = build_model("wide_resnet", (3, 32, 32), 10, seed=15).double()
    m.train()
    with torch.no_grad():
        m(torch.randn(8, 3, 32, 32, dtype=torch.float64) + 0.5)
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.normal_(0, 0.1)
    torch.manual_seed(16)
    x1 = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    x2 = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    ref = _pntk_brute_autograd(m, x1, torch.cat([x1, x2]))
    close(pntk(m, x1, x2, method="gram"), ref[:, 4:])
    close(pntk(m, x1, method="gram", tile_size=2), ref[:, :4])
    plan = _plan(m, x1)
    assert not plan.fallback and not any(lp.clone_out or lp.clone_in for lp in plan.layers)
    assert any(lp.fold for lp in plan.layers)
    assert m.training
