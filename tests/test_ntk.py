"""Exactness of the NTK engines against an independent torch.func brute force (float64)."""
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
    from entk_al.models import resnet18_32

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


def test_shifted_view_conv_form_matches_brute_force(monkeypatch):
    """The im2col-free per-sample conv gradients (layers.conv_shift_materialize), forced onto
    small convolutions: kernels 3x3 / 5x5 / 1x1 / 3x1, symmetric and asymmetric padding, with
    and without bias, against the float64 brute-force eNTK, the pNTK and a 2-row tiling."""
    monkeypatch.setattr(layers, "FORCE_FORM", "materialized")
    monkeypatch.setattr(layers, "SHIFT_MIN_T", 1)
    monkeypatch.setattr(layers, "SHIFT_MIN_C", 1)
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 4, 5, padding=2, bias=False),
                      nn.Tanh(), nn.Conv2d(4, 3, 1), nn.Tanh(), nn.Conv2d(3, 2, (3, 1), padding=(1, 0)),
                      nn.Tanh(), nn.Conv2d(2, 2, 3, padding=0), nn.Flatten(), nn.Linear(2 * 5 * 4, 3)).double()
    calls = []
    real = layers.conv_shift_materialize
    monkeypatch.setattr(layers, "conv_shift_materialize", lambda *a: calls.append(a[0]) or real(*a))
    x1, x2 = torch.randn(4, 2, 7, 6, dtype=torch.float64), torch.randn(3, 2, 7, 6, dtype=torch.float64)
    check_all(m, x1, x2, methods=("gram",))
    check_all(m, x1, tile=2, methods=("gram",))
    assert {id(c) for c in calls} == {id(c) for c in m if isinstance(c, nn.Conv2d)}
    # thresholds: a strided, dilated or grouped conv, or a small one, keeps im2col
    monkeypatch.setattr(layers, "SHIFT_MIN_T", 1024)
    monkeypatch.setattr(layers, "SHIFT_MIN_C", 32)
    x = torch.randn(1, 32, 32, 32)
    assert layers.shift_ok(nn.Conv2d(32, 8, 3, padding=1), x)
    assert not layers.shift_ok(nn.Conv2d(32, 8, 3, padding=1), x[:, :16])
    assert not layers.shift_ok(nn.Conv2d(32, 8, 3, padding=1, stride=2), x)
    assert not layers.shift_ok(nn.Conv2d(32, 8, 3, padding=1, dilation=2), x)
    assert not layers.shift_ok(nn.Conv2d(32, 8, 3, padding=1, groups=2), x)
    assert not layers.shift_ok(nn.Conv2d(32, 8, 3, padding=1, padding_mode="reflect"), x)
    assert not layers.shift_ok(nn.Conv2d(32, 8, 3, padding=1), x[..., :16, :16])
