"""A round whose training diverges (NaN or infinite loss) stops the run in one line naming the
round and the suspects, keeps the last good checkpoint and writes nothing from the NaN model;
models that need another learning rate get it by default."""

import json

import numpy as np
import pytest
import torch
from clitools import cli

from entk_al.data import load_dataset
from entk_al.errors import TrainingDivergedError
from entk_al.fileio import read_jsonl
from entk_al.nets.models import build_model
from entk_al.nets.train import TrainConfig, train_model
from entk_al.report.bench import Protocol
from entk_al.run.config import DEFAULT_LR, MODEL_DEFAULTS, RunConfig, resolve_config
from entk_al.run.setup import RunSetup


def _largest_inputs_strategy(tmp_path):
    path = tmp_path / "largest.py"
    path.write_text("import numpy as np\n\n"
                    "class Largest:\n    name = 'largest'\n\n"
                    "    def select(self, ctx, k):\n"
                    "        ids = ctx.candidate_ids\n"
                    "        size = ctx.inputs(ids).flatten(1).abs().amax(dim=1).cpu().numpy()\n"
                    "        return ids[np.argsort(-size, kind='stable')[:k]]\n")
    return f"{path}:Largest"


def test_huge_pool_rows_stop_the_run_at_the_diverged_round(tmp_path, capsys):
    """Rows at 1e25 (finite float32, finite outputs) are queried in round 0; the last round's
    loss is infinite. Before, the run reported the NaN model's accuracy and exited 0; now it
    stops in one line, exit 2, and round 0 stays checkpointed and logged."""
    digits = load_dataset("digits")
    x, y = digits.x_train[:200].numpy().copy(), digits.y_train[:200].numpy()
    cfg = RunConfig(initial=10, query=5, rounds=1)
    first = set(RunSetup.from_config(cfg, with_strategy=False, dataset=digits).initial_ids().tolist())
    huge = [i for i in range(150, 200) if i not in first][:5]
    x[huge] = 1e25
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=digits.x_test.numpy(), y_test=digits.y_test.numpy())
    run_dir = tmp_path / "run"
    code, out, err = cli(capsys, "run", "--dataset", f"numpy:{tmp_path / 'd.npz'}", "--strategy",
                         _largest_inputs_strategy(tmp_path), "--initial", "10", "--query", "5", "--rounds", "1",
                         "--min-steps", "20", "--subset", "150", "--out", run_dir, "-q")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in ("round 1", "diverged", "--lr 0.05", "|x| = 1e+25", "rescale", "checkpoint.pt keeps round 0"):
        assert needle in err, (needle, err)
    records = read_jsonl(run_dir / "rounds.jsonl")
    assert [r["round"] for r in records] == [0] and sorted(records[0]["queried"]) == huge
    assert np.isfinite(records[0]["train_loss"])
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["next_round"] == 1 and all(torch.isfinite(t).all() for t in ckpt["model"].values())
    assert not (run_dir / "summary.json").exists()


def test_a_learning_rate_that_diverges_in_round_0_is_named_first(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, out, err = cli(capsys, "run", "--lr", "1e4", "--initial", "10", "--rounds", "1", "--min-steps", "30",
                         "--out", run_dir, "-q")
    assert code == 2 and err.count("\n") == 1, err
    assert "round 0" in err and "suspects: the learning rate (--lr 10000; try mlp's default, --lr 0.05)" in err
    assert "no round was completed" in err
    assert not (run_dir / "rounds.jsonl").exists() and not (run_dir / "checkpoint.pt").exists()


def test_the_suggested_learning_rate_fits_the_model(tmp_path):
    """resnet18 at the MLP's 0.05 (the issue's report) is pointed to its own default."""
    from entk_al.run.loop import ActiveLearningLoop

    small = torch.ones(3, 4)
    loop = ActiveLearningLoop(RunConfig(model="resnet18", lr=0.05, rounds=0), tmp_path)
    assert "(--lr 0.05; try resnet18's default, --lr 0.01)" in loop.divergence_message(0, "loss NaN", small)
    loop = ActiveLearningLoop(RunConfig(model="resnet18", rounds=0), tmp_path)
    message = loop.divergence_message(0, "loss NaN", small)
    assert "suspects: the learning rate (--lr 0.01; try --lr 0.001) and the inputs" in message
    assert "suspects: the inputs" in loop.divergence_message(2, "loss NaN", small * 3e37)


def test_train_model_raises_at_the_first_check_after_a_nonfinite_loss():
    digits = load_dataset("digits")
    model = build_model("mlp", digits.input_shape, 10, 32, seed=0)
    x, y = digits.x_train[:40], digits.y_train[:40]
    steps = []
    with pytest.raises(TrainingDivergedError, match=r"loss became NaN or infinite at step \d+ of 400") as err:
        train_model(model, x, y, TrainConfig(lr=1e5, min_steps=400), torch.Generator().manual_seed(0),
                    on_step=steps.append)
    assert err.value.step < 400 and len(steps) < 400  # stopped early, not after all 400 steps
    x_bad = x.clone()
    x_bad[0] = float("inf")
    with pytest.raises(TrainingDivergedError):
        train_model(build_model("mlp", digits.input_shape, 10, 32, seed=0), x_bad, y, TrainConfig(min_steps=10),
                    torch.Generator().manual_seed(0))


# -- per-model defaults --------------------------------------------------------------------
def test_models_get_their_default_learning_rate_unless_one_is_given(tmp_path):
    assert RunConfig().lr == DEFAULT_LR == 0.05 and RunConfig(model="cnn").lr == 0.05
    for model, opts in MODEL_DEFAULTS.items():
        assert RunConfig(model=model).lr == opts["lr"] < DEFAULT_LR
        assert RunConfig(model=model, lr=0.2).lr == 0.2
        assert resolve_config(None, {"model": model, "lr": None})[0].lr == opts["lr"]
    # A run made before per-model defaults resumes with the learning rate it was made with.
    (tmp_path / "config.json").write_text(json.dumps({"model": "resnet18", "lr": 0.05}))
    assert resolve_config(None, {}, resume_dir=tmp_path)[0].lr == 0.05
    toml = tmp_path / "c.toml"
    toml.write_text('model = "wide_resnet2"\n')
    assert resolve_config(toml, {})[0].lr == MODEL_DEFAULTS["wide_resnet2"]["lr"]


def test_committed_protocols_resolve_as_before():
    """Every protocol sets lr, so per-model defaults change none of their runs; digits-quick's
    grid resolves to the options its committed results were made with."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "protocols"
    for path in root.glob("*.toml"):
        proto = Protocol.from_file(path)
        assert all(spec.config.lr == proto.run["lr"] for spec in proto.grid()), path
    cfg = Protocol.from_file(root / "digits-quick.toml").grid()[0].config.to_dict()
    expected = dict(dataset="digits", model="mlp", width=64, initial=20, query=10, rounds=10, subset=2000,
                    retrain="warm", loss="mse", epochs=20, min_steps=100, batch_size=64, lr=0.05, weight_decay=1e-4,
                    threads=0, executor="local")
    assert {k: cfg[k] for k in expected} == expected


def test_run_help_documents_the_per_model_learning_rates(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one option per line in rich's help panel
    code, out, _ = cli(capsys, "run", "--help")
    assert code == 0 and "default: 0.05; 0.01 for resnet18, wide_resnet, wide_resnet2" in out


@pytest.mark.slow
def test_resnet18_on_digits_trains_with_its_default_learning_rate(tmp_path):
    """With the MLP's 0.05 round 0 reaches a NaN loss (the issue's report); with the default it learns."""
    digits = load_dataset("digits")
    cfg = RunConfig(model="resnet18", initial=20, device="cpu")
    setup = RunSetup.from_config(cfg, with_strategy=False, dataset=digits)
    ids = setup.initial_ids()
    model = setup.new_model(0)
    stats = train_model(model, digits.x_train[ids], digits.y_train[ids], setup.train_cfg,
                        torch.Generator().manual_seed(0))
    assert np.isfinite(stats["final_loss"])
    from entk_al.nets.models import predict

    acc = float((predict(model, digits.x_test).argmax(1) == digits.y_test).double().mean())
    assert acc > 0.3
