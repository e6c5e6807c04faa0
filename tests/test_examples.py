"""The examples run (small sizes, no network): a user's own loop over PNG files on disk, and a
frozen-backbone fine-tune whose look-ahead kernel covers the trained head only."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(autouse=True)
def _examples_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    for name in ("own_training_loop", "finetune_head"):
        sys.modules.pop(name, None)


def test_own_training_loop_three_rounds_in_run_format(tmp_path, capsys):
    import own_training_loop

    out = tmp_path / "own"
    history = own_training_loop.main(small=True, out=out)
    assert [h["n_labeled"] for h in history] == [20, 25, 30]
    picked = np.concatenate([h["queried"] for h in history])
    assert len(set(picked.tolist())) == 15 and picked.min() >= 0 and picked.max() < 300
    logged = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["queried"] for r in logged] == [h["queried"] for h in history]
    assert [r["test_accuracy"] for r in logged] == [h["test_accuracy"] for h in history]
    assert history[-1]["test_accuracy"] > 0.25  # the CE loop learns (chance: 0.10)
    assert "round 2: 30 labels" in capsys.readouterr().out


def test_finetune_head_kernel_covers_the_trained_head_only():
    import finetune_head

    history = finetune_head.main(small=True)
    assert [h["n_labeled"] for h in history] == [20, 25, 30]
    assert all(h["kernel_params"] == "trainable" for h in history)
    # the head named by prefix is the same parameter set: the same first picks
    by_name = finetune_head.main(small=True, rounds=1, kernel_params="fc.")
    assert by_name[0]["kernel_params"] == "fc." and by_name[0]["queried"] == history[0]["queried"]
    model = finetune_head.frozen_resnet18()
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
