"""entk-al approx: every reported figure against a direct float64 computation on tiny models
(brute-force torch.func Jacobians -> eNTK, explicit Kronecker products, eigvalsh, direct solves),
and bad input through the CLI."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev
from typer.testing import CliRunner

from entk_al.cli import app
from entk_al.data import ALDataset
from entk_al.nets.train import TrainConfig
from entk_al.ntk import kernel
from entk_al.report.approx import (
    ApproxSettings,
    fit_slope,
    flatten_entk,
    kernel_distance,
    largest_n,
    offdiag_share,
    regress,
    run_approx,
    spectrum,
)

N_OUT = 4


def tiny_net(width=5, seed=0, d_in=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                         nn.Linear(width, N_OUT)).double()


def jacobian(model, x):
    """(N, O, P) per-sample Jacobians, brute force."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    j = jacrev(lambda p: functional_call(model, p, (x,)))(params)
    return torch.cat([j[k].reshape(len(x), N_OUT, -1) for k in params], dim=2)


def brute(model, x, x2=None):
    """Explicit (N1·O, N2·O) eNTK (row i·O + k) and the N1 x N2 stand-ins from Jacobians."""
    j1 = jacobian(model, x)
    j2 = j1 if x2 is None else jacobian(model, x2)
    flat = j1.reshape(-1, j1.shape[2]) @ j2.reshape(-1, j2.shape[2]).T
    s1, s2 = j1.sum(1) / math.sqrt(N_OUT), j2.sum(1) / math.sqrt(N_OUT)
    return flat, {"pntk": s1 @ s2.T, "first_logit": j1[:, 0] @ j2[:, 0].T,
                  "trace": torch.einsum("nkp,mkp->nm", j1, j2) / N_OUT}


def kron_i(k):
    return torch.kron(k, torch.eye(N_OUT, dtype=k.dtype))


@pytest.fixture
def setup():
    torch.manual_seed(1)
    model = tiny_net()
    x = torch.randn(6, 3, dtype=torch.float64)
    return model, x, *brute(model, x)


def test_kernels_and_layout_match_brute_force(setup):
    model, x, flat, ks = setup
    theta = kernel(model, x, kind="entk")
    torch.testing.assert_close(flatten_entk(theta), flat)
    for kind, k in ks.items():
        torch.testing.assert_close(kernel(model, x, kind=kind), k)
    # pNTK is (1/O) 1ᵀΘ1 of each block (arXiv 2206.12543, eq. 3)
    torch.testing.assert_close(ks["pntk"], theta.sum(dim=(2, 3)) / N_OUT)


def test_kernel_distance_and_offdiag_share_vs_explicit_kronecker(setup):
    model, x, flat, ks = setup
    theta = kernel(model, x, kind="entk")
    ks = {**ks, "random_logit": flatten_entk(theta)[2::N_OUT, 2::N_OUT]}
    for name, k in ks.items():
        want = torch.linalg.norm(kron_i(k) - flat) / torch.linalg.norm(flat)
        assert kernel_distance(theta, k) == pytest.approx(float(want), rel=1e-10), name
    mask = 1 - kron_i(torch.ones(6, 6, dtype=torch.float64))
    want = torch.linalg.norm(flat * mask) / torch.linalg.norm(flat)
    assert offdiag_share(theta) == pytest.approx(float(want), rel=1e-10)
    assert 0 < offdiag_share(theta) < 1
    # the best any k ⊗ I can do is to keep only the diagonal blocks; the trace kernel (mean of the
    # diagonal entries) is the Frobenius projection onto {k ⊗ I}, so no stand-in beats it
    assert min(kernel_distance(theta, k) for k in ks.values()) >= offdiag_share(theta) - 1e-12
    assert kernel_distance(theta, ks["trace"]) == pytest.approx(min(kernel_distance(theta, k) for k in ks.values()))
    assert kernel_distance(theta, ks["trace"]) <= kernel_distance(theta, ks["trace"] * 1.01)


def test_kronecker_is_exact_for_a_linear_readout():
    """f(x) = W x: Θ(x, x') = xᵀx' I_O, so pNTK = xᵀx', error 0 and no off-diagonal blocks."""
    torch.manual_seed(0)
    model = nn.Linear(3, N_OUT, bias=False).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    theta = kernel(model, x, kind="entk")
    torch.testing.assert_close(kernel(model, x, kind="pntk"), x @ x.T)
    assert kernel_distance(theta, x @ x.T) < 1e-12
    assert offdiag_share(theta) < 1e-12
    assert kernel_distance(theta, 2 * x @ x.T) == pytest.approx(1.0)


@pytest.mark.parametrize("rel", [0.0, 1e-3, 0.1])
def test_spectrum_vs_eigvalsh_of_explicit_matrices(setup, rel):
    model, x, flat, ks = setup
    for name, mat in (("entk", flat), ("pntk", kron_i(ks["pntk"]))):
        ev = torch.linalg.eigvalsh(mat)
        lam = rel * float(mat.trace()) / mat.shape[0]
        got = spectrum(flatten_entk(kernel(model, x, kind="entk")) if name == "entk" else ks["pntk"], rel)
        assert got["lambda_max"] == pytest.approx(float(ev[-1]), rel=1e-9)
        assert got["lambda_min"] == pytest.approx(float(ev[0]), rel=1e-6, abs=1e-10)
        assert got["ridge"] == pytest.approx(lam, rel=1e-12)
        ev_r = torch.linalg.eigvalsh(mat + lam * torch.eye(mat.shape[0], dtype=mat.dtype))
        assert got["cond"] == pytest.approx(float(ev_r[-1] / ev_r[0]), rel=1e-6)


def test_regression_vs_direct_solve():
    torch.manual_seed(2)
    model = tiny_net()
    x_l, x_e = torch.randn(5, 3, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3, 1]), N_OUT).double()
    flat_ll, ks_ll = brute(model, x_l)
    flat_el, ks_el = brute(model, x_e, x_l)
    with torch.no_grad():
        f_l, f_e = model(x_l), model(x_e)
    rel = 1e-2
    for prior_l, prior_e in ((torch.zeros_like(f_l), torch.zeros_like(f_e)), (f_l, f_e)):
        r = (y - prior_l).reshape(-1)
        for k_ll, k_el, kind in ((flat_ll, flat_el, "entk"), (kron_i(ks_ll["pntk"]), kron_i(ks_el["pntk"]), "pntk")):
            lam = rel * float(k_ll.trace()) / k_ll.shape[0]
            coef = torch.linalg.solve(k_ll + lam * torch.eye(20, dtype=torch.float64), r)
            want = prior_e + (k_el @ coef).reshape(7, N_OUT)
            got, got_lam = regress(kernel(model, x_l, kind=kind), kernel(model, x_e, x_l, kind=kind), y, prior_l,
                                   prior_e, rel)
            torch.testing.assert_close(got, want)
            assert got_lam == pytest.approx(lam)


def test_fit_slope_and_largest_n():
    w = np.array([32, 128, 512, 2048])
    assert fit_slope(w, 3.0 * w ** -0.5)["slope"] == pytest.approx(-0.5)
    assert math.isnan(fit_slope([32], [0.1])["slope"])
    # peak = 1e6 + 4 N² bytes -> N = sqrt((budget - 1e6) / 4); the kernel's own size is a floor
    assert largest_n([10, 20], [1e6 + 400, 1e6 + 1600], 5e6, 1) == 1000
    assert largest_n([10, 20], [None, None], 4e6, 4) == 1000
    assert largest_n([10, 20], [0, 0], 4e6, 4) == 1000


def _tiny_data(n_pool=40, n_test=30, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_pool + n_test, d, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    return ALDataset("tiny", x[:n_pool], y[:n_pool], x[n_pool:], y[n_pool:], num_classes=N_OUT)


def test_run_approx_records_match_brute_force():
    data = _tiny_data()
    s = ApproxSettings(widths=[4, 16], checkpoints=[0, 12], n_points=8, subsets=2, kr_labels=12, eval_size=10,
                       cost_sizes=[4, 8], ridge_rel=1e-2, memory_budget_gib=1.0)
    factory = lambda w: tiny_net(width=w, seed=3)  # noqa: E731
    cfg = TrainConfig(epochs=1, min_steps=3, batch_size=8)
    partial = []
    res = run_approx(factory, data, s, cfg, dtype=torch.float64, on_width=partial.append)
    assert [len(p["records"]) for p in partial] == [2] and not partial[0]["finished"] and res["finished"]
    assert [(r["width"], r["checkpoint"]) for r in res["records"]] == [(4, 0), (4, 12), (16, 0), (16, 12)]
    st = res["settings"]
    model = factory(16)
    rec = res["records"][2]
    for sub, ids in zip(rec["subsets"], st["subset_ids"]):
        flat, ks = brute(model, data.x_test[ids].double())
        want = torch.linalg.norm(kron_i(ks["pntk"]) - flat) / torch.linalg.norm(flat)
        assert sub["error_pntk"] == pytest.approx(float(want), rel=1e-9)
        c = st["random_logit"]
        want = torch.linalg.norm(kron_i(flat[c::N_OUT, c::N_OUT]) - flat) / torch.linalg.norm(flat)
        assert sub["error_random_logit"] == pytest.approx(float(want), rel=1e-9)
    assert rec["distance"]["error_pntk"] == pytest.approx(np.mean([d["error_pntk"] for d in rec["subsets"]]))
    x_l, x_e = data.x_train[st["labeled_ids"]].double(), data.x_test[st["eval_ids"]].double()
    flat_ll, ks_ll = brute(model, x_l)
    ev_e, ev_p = torch.linalg.eigvalsh(flat_ll), torch.linalg.eigvalsh(kron_i(ks_ll["pntk"]))
    sp = rec["spectrum"]
    assert sp["lambda_max_rel_diff"] == pytest.approx(float(ev_p[-1] / ev_e[-1] - 1), rel=1e-8)
    flat_el, ks_el = brute(model, x_e, x_l)
    y = torch.nn.functional.one_hot(data.y_train[st["labeled_ids"]], N_OUT).double()
    preds = {}
    for kind, k_ll, k_el in (("entk", flat_ll, flat_el), ("pntk", kron_i(ks_ll["pntk"]), kron_i(ks_el["pntk"]))):
        lam = 1e-2 * float(k_ll.trace()) / k_ll.shape[0]
        a = torch.linalg.solve(k_ll + lam * torch.eye(len(k_ll), dtype=torch.float64), y.reshape(-1))
        preds[kind] = (k_el @ a).reshape(-1, N_OUT).argmax(1)
        acc = float((preds[kind] == data.y_test[st["eval_ids"]]).double().mean())
        assert rec["kernel_regression"][f"accuracy_{kind}"] == pytest.approx(acc)
    agree = float((preds["entk"] == preds["pntk"]).double().mean())
    assert rec["kernel_regression"]["agreement"] == pytest.approx(agree)
    assert "rel_error_entk_vs_real" in rec["linearized"]
    assert "rel_error_entk_vs_real" not in res["records"][3]["linearized"]
    assert res["records"][3]["train"]["steps"] == 3
    assert set(res["fits"]["0"]) >= {"error_pntk", "offdiag_share"}
    assert [r["n"] for r in res["cost"][0]["sizes"]] == [4, 8]


runner = CliRunner()
FAST = ["--dataset", "digits", "--checkpoints", "init,20", "--n-points", "12", "--kr-labels", "10",
        "--eval-size", "20", "--cost-sizes", "8", "--epochs", "1", "--min-steps", "2", "-q"]


def _fails(args, needle, tmp_path):
    res = runner.invoke(app, ["approx", *args, "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2, res.output
    err = res.stderr
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert "Traceback" not in res.output
    assert not (tmp_path / "bad").exists()
    return err


def test_cli_bad_inputs(tmp_path):
    _fails(["--model", "transformer", *FAST], "unknown model 'transformer'", tmp_path)
    _fails(["--widths", "32,abc", *FAST], "--widths '32,abc' does not parse", tmp_path)
    _fails(["--widths", "0", *FAST], "--widths", tmp_path)
    _fails([*FAST, "--checkpoints", "init,-5"], "--checkpoints", tmp_path)
    _fails(["--model", str(tmp_path / "none.py") + ":Net", *FAST], "does not exist", tmp_path)
    err = _fails([*FAST, "--n-points", "400", "--subsets", "1", "--memory-gib", "0.01"], "GiB", tmp_path)
    assert "400 x 400 points" in err and "0.01 GiB budget" in err
    _fails([*FAST, "--n-points", "5000"], "test points", tmp_path)
    _fails([*FAST, "--method", "magic"], "--method", tmp_path)


def test_cli_user_model_end_to_end(tmp_path):
    net = tmp_path / "net.py"
    net.write_text("import math\nfrom torch import nn\n"
                   "class Net(nn.Sequential):\n"
                   "    def __init__(self, input_shape, num_classes, width=8):\n"
                   "        super().__init__(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(),\n"
                   "                         nn.Linear(width, num_classes))\n")
    out = tmp_path / "o"
    res = runner.invoke(app, ["approx", "--model", f"{net}:Net", "--widths", "4,16", *FAST, "--out", str(out)])
    assert res.exit_code == 0, res.output
    result = json.loads((out / "approx.json").read_text())
    assert [r["width"] for r in result["records"]] == [4, 4, 16, 16]
    assert result["settings"]["model"] == f"{net}:Net"
    assert math.isfinite(result["fits"]["0"]["error_pntk"]["slope"])
    for name in ("approx_width.png", "approx_training.png", "approx_regression.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert "fitted slope" in res.stdout and "linearized at init" in res.stdout
    # a class without a width parameter cannot vary width: one line, exit 2
    net.write_text(net.read_text().replace(", width=8", "").replace("width)", "8)").replace("(width,", "(8,"))
    _fails(["--model", f"{net}:Net", "--widths", "4", *FAST], "width", tmp_path)


def test_subset_record_against_brute_force_jacobians():
    """--kernel-params: the subset pNTK from the Jacobian columns of the chosen parameters, its
    distances to the full pNTK, and the linearized regression with each, all recomputed directly."""
    from entk_al.report.approx import subset_record

    model = tiny_net(width=6, seed=4)
    gen = torch.Generator().manual_seed(5)
    xs = [torch.randn(7, 3, generator=gen, dtype=torch.float64) for _ in range(2)]
    x_l, x_e = torch.randn(9, 3, generator=gen, dtype=torch.float64), torch.randn(11, 3, generator=gen,
                                                                                   dtype=torch.float64)
    y_l, y_e = torch.randint(N_OUT, (9,), generator=gen), torch.randint(N_OUT, (11,), generator=gen)
    sizes = [p.numel() for p in model.parameters()]
    last = slice(sum(sizes[:-2]), sum(sizes))  # last:1 = the readout's weight and bias

    def pntk_cols(a, b, cols):
        ja, jb = jacobian(model, a)[:, :, cols], jacobian(model, b)[:, :, cols]
        return ja.sum(1) @ jb.sum(1).T / N_OUT

    rec = subset_record(model, xs, x_l, y_l, x_e, y_e, N_OUT, 1e-2, "auto", "last:1")
    assert rec["num_params"] == sizes[-1] + sizes[-2] and rec["num_params_all"] == sum(sizes)
    dists, scaled = [], []
    for x in xs:
        k_all, k_sub = pntk_cols(x, x, slice(None)), pntk_cols(x, x, last)
        dists.append(float(torch.linalg.norm(k_sub - k_all) / torch.linalg.norm(k_all)))
        c = float((k_sub * k_all).sum() / (k_sub * k_sub).sum())  # least-squares scale
        scaled.append(float(torch.linalg.norm(c * k_sub - k_all) / torch.linalg.norm(k_all)))
    assert rec["rel_distance"] == pytest.approx(np.mean(dists), rel=1e-9)
    assert rec["rel_distance_scaled"] == pytest.approx(np.mean(scaled), rel=1e-6)
    assert 0 < rec["rel_distance_scaled"] < rec["rel_distance"] < 1
    with torch.no_grad():
        f_l, f_e = model(x_l), model(x_e)
    y1 = torch.nn.functional.one_hot(y_l, N_OUT).double()
    pred = {}
    for name, cols in (("all", slice(None)), ("subset", last)):
        k_ll, k_el = pntk_cols(x_l, x_l, cols), pntk_cols(x_e, x_l, cols)
        lam = 1e-2 * float(k_ll.trace()) / len(k_ll)
        pred[name] = f_e + k_el @ torch.linalg.solve(k_ll + lam * torch.eye(9, dtype=torch.float64), y1 - f_l)
        assert rec[f"accuracy_{name}"] == pytest.approx(float((pred[name].argmax(1) == y_e).double().mean()))
    assert rec["agreement"] == pytest.approx(float((pred["all"].argmax(1) == pred["subset"].argmax(1)).double().mean()))
    assert rec["rel_diff"] == pytest.approx(float(torch.linalg.norm(pred["subset"] - pred["all"])
                                                  / torch.linalg.norm(pred["all"])), rel=1e-6)
    assert rec["time_ratio"] > 0
    # the full set as a "subset" is the full kernel
    same = subset_record(model, xs, x_l, y_l, x_e, y_e, N_OUT, 1e-2, "auto", "all")
    assert same["rel_distance"] < 1e-12 and same["agreement"] == 1.0


def test_cli_kernel_params_table_and_errors(tmp_path):
    out = tmp_path / "kp"
    res = runner.invoke(app, ["approx", *FAST, "--checkpoints", "init", "--kernel-params", "last:1",
                              "--kernel-params", "1.", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "approx.json").read_text())["records"][0]
    assert [k["spec"] for k in rec["kernel_params"]] == ["last:1", "1."]
    last, first = rec["kernel_params"]
    assert last["num_params"] == 256 * 10 + 10 and first["num_params"] == 64 * 256 + 256
    assert 0 <= last["rel_distance_scaled"] <= last["rel_distance"] and 0 <= last["agreement"] <= 1
    assert "parameter subset S vs all" in res.stdout
    _fails([*FAST, "--kernel-params", "nope."], "--kernel-params 'nope.': params ('nope.',) match no parameter",
           tmp_path)
    _fails([*FAST, "--kernel-params", "last:0"], "--kernel-params 'last:0'", tmp_path)


def test_a_negative_ridge_is_named_by_its_flag():
    """The relative ridge is --ridge-rel on the command line, and the library's check says so."""
    from entk_al.errors import ConfigError
    from entk_al.report.approx import check_settings

    s = ApproxSettings(widths=[4], checkpoints=[0], n_points=4, subsets=1, kr_labels=4, eval_size=4,
                       cost_sizes=[4], ridge_rel=-1.0)
    with pytest.raises(ConfigError, match=r"^--ridge-rel must be >= 0, got -1.0$"):
        check_settings(s, pool_size=100, test_size=50, num_outputs=3, itemsize=4)
