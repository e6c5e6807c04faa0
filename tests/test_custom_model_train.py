"""``entk-al run --model file.py:Class --train file.py:function``: a user's network and training step.

References: round 0's accuracy recomputed by hand (the class built from the run's init seed,
the function called with the documented seeded generator), an uninterrupted run for a resumed
one, and one-line errors (exit 2) for every way the user's code can be wrong.
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from clitools import cli

from entk_al.data import load_dataset
from entk_al.nets.models import predict
from entk_al.seeding import int_seed, torch_generator

NET = """
import math
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, input_shape, num_classes, width=None):
        super().__init__()
        w = width or 24
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), w), nn.ReLU())
        self.head = nn.Linear(w, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


class TupleNet(Net):
    def forward(self, x):
        return self.head(self.body(x)), x


class NoWidth(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.f = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x):
        return self.f(x.flatten(1))


def not_a_module(input_shape, num_classes):
    return [input_shape, num_classes]


class Broken(Net):
    def __init__(self, input_shape, num_classes):
        raise ValueError("no such layer")
"""

TRAIN = """
import torch
import torch.nn.functional as F


def fit(model, x, y, *, round, generator, device):
    # cross-entropy, noise augmentation and Adam: nothing of entk-al's recipe
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(40):
        idx = torch.randint(len(x), (min(32, len(x)),), generator=generator)
        xb = x[idx] + 0.05 * torch.randn(x[idx].shape, generator=generator)
        loss = F.cross_entropy(model(xb.to(device)), y[idx].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def nothing(model, x, y):
    model.train()


def boom(model, x, y, round):
    raise RuntimeError(f"out of cheese in round {round}")


def number(model, x, y):
    return 3


def other(model, x, y):
    return torch.nn.Linear(2, 2)


def nan(model, x, y):
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    return model
"""

FAST = ["--initial", "20", "--query", "5", "--subset", "200", "--seed", "4", "-q"]


@pytest.fixture()
def user_code(tmp_path):
    (tmp_path / "net.py").write_text(textwrap.dedent(NET))
    (tmp_path / "fit.py").write_text(textwrap.dedent(TRAIN))
    return tmp_path


def _records(run):
    rows = [json.loads(x) for x in (run / "rounds.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]


def _round0_accuracy_by_hand(user_code, seed):
    """The run's round 0 without the loop: Net from the (seed, -1, "init") stream, fit() with
    the (seed, 0, "train") generator after seeding the global RNG, accuracy on the test split."""
    import importlib.util

    from entk_al.nets.models import build_model
    from entk_al.run.config import RunConfig
    from entk_al.run.setup import RunSetup

    spec = importlib.util.spec_from_file_location("user_fit", user_code / "fit.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    data = load_dataset("digits")
    lab = RunSetup.from_config(RunConfig(dataset="digits", initial=20, seed=seed, device="cpu"),
                               with_strategy=False).initial_ids()
    model = build_model(f"{user_code / 'net.py'}:Net", data.input_shape, 10, seed=int_seed(seed, -1, "init"))
    torch.manual_seed(int_seed(seed, 0, "torch-global"))
    mod.fit(model, data.x_train[lab], data.y_train[lab], round=0, generator=torch_generator(seed, 0, "train"),
            device=torch.device("cpu"))
    return float((predict(model.eval(), data.x_test).argmax(1) == data.y_test).double().mean())


def test_users_model_and_cross_entropy_training_run_and_resume(user_code, tmp_path, capsys):
    net, fit = f"{user_code / 'net.py'}:Net", f"{user_code / 'fit.py'}:fit"
    full = tmp_path / "full"
    code, _, err = cli(capsys, "run", "--model", net, "--train", fit, "--rounds", "2", "--out", full, *FAST)
    assert code == 0, err
    cfg = json.loads((full / "config.json").read_text())
    assert cfg["model"] == net and cfg["train"] == fit
    recs = _records(full)
    assert [r["n_labeled"] for r in recs] == [20, 25, 30]
    assert all(r["train_steps"] is None and r["train_loss"] is None for r in recs)
    # the run's round 0 is exactly fit() on the initial set from the documented seeds
    assert recs[0]["test_accuracy"] == pytest.approx(_round0_accuracy_by_hand(user_code, 4), abs=1e-12)
    assert recs[0]["test_accuracy"] > 0.5  # 40 Adam steps on 20 digits learn something

    # interrupted after one round, resumed without repeating --model / --train: the same run
    part = tmp_path / "part"
    code, _, err = cli(capsys, "run", "--model", net, "--train", fit, "--rounds", "1", "--out", part, *FAST)
    assert code == 0, err
    code, _, err = cli(capsys, "run", "--resume", part, "--rounds", "2", "-q")
    assert code == 0, err
    assert _records(part) == recs
    # what the run is made of cannot change on resume
    for flag, value in (("--train", f"{user_code / 'fit.py'}:nothing"), ("--model", f"{user_code / 'net.py'}:NoWidth")):
        code, _, err = cli(capsys, "run", "--resume", part, "--rounds", "3", flag, value, "-q")
        assert code == 2 and "different options" in err and flag[2:] in err and err.count("\n") == 1, err


@pytest.mark.parametrize("args,needle", [
    (["--train", "fit.py:nothing"], "--train 'fit.py:nothing' returned nothing in round 0; it must return the "
                                    "trained model"),
    (["--train", "fit.py:boom"], "failed in round 0: RuntimeError: out of cheese in round 0"),
    (["--train", "fit.py:number"], "returned a int in round 0"),
    (["--train", "fit.py:other"], "returned another model whose parameters do not fit"),
    (["--train", "fit.py:nan"], "weights or BatchNorm statistics became NaN or infinite in --train"),
    (["--train", "fit.py:missing"], "has no attribute 'missing'"),
    (["--train", "net.py:Net"], "--train 'net.py:Net' is a class; --train takes a function"),
    (["--train", "nofile.py:fit"], "does not exist"),
    (["--train", "fit"], "expected module:Name or path/file.py:Name"),
    (["--model", "net.py:TupleNet"], "model must return an (N, O) tensor of logits, got a tuple"),
    (["--model", "net.py:NoWidth", "--width", "8"], "does it take a width= argument?"),
    (["--model", "net.py:Broken"], "Broken((1, 8, 8), 10) failed: ValueError: no such layer"),
    (["--model", "net.py:Nope"], "has no attribute 'Nope'"),
    (["--model", "net.py:not_a_module"], "built a list, not a torch.nn.Module"),
    (["--model", "fit.py:fit"], "fit is a function, and --model takes a class"),
    (["--model", "net.py:Net", "-o", "kernel_params=nope."], "kernel_params='nope.': params ('nope.',) match "
                                                            "no parameter"),
])
def test_bad_user_code_is_one_line_exit_2(user_code, capsys, monkeypatch, args, needle):
    monkeypatch.chdir(user_code)
    out = user_code / "run"
    code, _, err = cli(capsys, "run", *args, "--rounds", "1", "--out", out, *FAST)
    assert code == 2 and needle in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (out / "rounds.jsonl").exists()
