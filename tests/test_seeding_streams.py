"""Random streams are named once, in entk_al.seeding: no call site spells a stream name, the
names keep the values that past results were drawn with, and every round-0 training (the
loop's, ``entk-al fidelity``'s) goes through RunSetup.train_round."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import torch

import entk_al.seeding as seeding
from entk_al.run.checkpoint import CHECKPOINT, read_checkpoint
from entk_al.run.config import RunConfig
from entk_al.run.loop import ActiveLearningLoop
from entk_al.run.setup import RunSetup

ROOT = Path(__file__).resolve().parents[1]
STREAM_FUNCTIONS = {"numpy_rng", "int_seed", "torch_generator", "tie_keys", "tile_component"}


def _source_files():
    for package in ("entk_al", "strategies"):
        yield from sorted((ROOT / package).rglob("*.py"))


def test_stream_names_keep_the_values_results_were_drawn_with():
    # A changed value would change every selection made with that stream: these are frozen.
    assert {name: getattr(seeding, name) for name in (
        "INITIAL", "INIT", "TORCH_GLOBAL", "TRAIN", "SUBSET", "TORCH_SELECT", "STRATEGY", "TIE_BREAK",
        "BALD_MASKS_TILE", "BALD_DROPOUT_TILE", "FIDELITY_EVAL", "FIDELITY_CANDIDATES", "APPROX_LABELED",
        "APPROX_TEST", "APPROX_EVAL", "APPROX_RANDOM_LOGIT", "BENCH", "FOLDER_SPLIT")} == {
        "INITIAL": "initial", "INIT": "init", "TORCH_GLOBAL": "torch-global", "TRAIN": "train",
        "SUBSET": "subset", "TORCH_SELECT": "torch-select", "STRATEGY": "strategy", "TIE_BREAK": "tie-break",
        "BALD_MASKS_TILE": "bald-masks-tile", "BALD_DROPOUT_TILE": "bald-dropout-tile",
        "FIDELITY_EVAL": "fidelity-eval", "FIDELITY_CANDIDATES": "fidelity-candidates",
        "APPROX_LABELED": "approx-labeled", "APPROX_TEST": "approx-test", "APPROX_EVAL": "approx-eval",
        "APPROX_RANDOM_LOGIT": "approx-random-logit", "BENCH": "bench", "FOLDER_SPLIT": "folder-split"}
    assert seeding.tile_component(seeding.BALD_MASKS_TILE, 3) == "bald-masks-tile3"
    assert seeding.direction_seed(7, 2) == 7 * 1_000_003 + 2
    assert seeding.child_rng(5).integers(2**62) == np.random.default_rng(5).integers(2**62)


def test_no_call_site_spells_a_stream_name_or_builds_its_own_generator():
    """Outside seeding.py, stream functions get a constant (never a string or f-string), and
    no module builds a NumPy generator or seeds torch from anything but a seeding.py seed."""
    bad = []
    for path in _source_files():
        if path.name == "seeding.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            fn = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            literal = [a for a in node.args if isinstance(a, (ast.JoinedStr, ast.Constant)) and
                       isinstance(getattr(a, "value", ""), str)]
            if fn in STREAM_FUNCTIONS and literal:
                bad.append(f"{where}: {fn} with a literal stream name")
            if fn in {"default_rng", "SeedSequence"}:
                bad.append(f"{where}: {fn} outside seeding.py")
            if fn == "manual_seed" and node.args and isinstance(node.args[0], ast.BinOp):
                bad.append(f"{where}: a seed combined outside seeding.py")
    assert not bad, "\n".join(bad)


def test_the_loop_and_fidelity_train_round_zero_alike(tmp_path):
    """The loop's round-0 model is RunSetup.train_round's on the initial set (what fidelity linearizes)."""
    cfg = RunConfig(strategy="random", initial=12, rounds=0, epochs=1, min_steps=15, device="cpu", seed=3)
    ActiveLearningLoop(cfg, tmp_path / "run").run()
    saved = read_checkpoint(tmp_path / "run" / CHECKPOINT)["model"]
    setup = RunSetup.from_config(cfg, with_strategy=False)
    lab = setup.initial_ids()
    model = setup.new_model(0)
    with torch.random.fork_rng():
        setup.train_round(model, 0, setup.data.x_train[lab], setup.data.y_train[lab])
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
