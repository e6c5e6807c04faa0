"""entk-al from a user's own code: query(), ActiveLearner and pools read by id.

References: the ids ``entk-al run`` selects (the loop, captured round by round) for query();
an uninterrupted learner for a resumed one; the in-memory pool for the file and Dataset pools.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

import entk_al
from entk_al.data import load_dataset
from entk_al.errors import CheckpointError, ConfigError, DataFormatError, LabelError
from entk_al.run.config import RunConfig
from entk_al.run.loop import ActiveLearningLoop


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _train_ce(model: nn.Module, x: torch.Tensor, y: np.ndarray, steps: int = 30, seed: int = 0) -> None:
    """A user's own loop: Adam, cross-entropy, noise augmentation."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    yt = torch.as_tensor(y)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (min(32, len(x)),), generator=gen)
        xb = x[idx] + 0.05 * torch.randn(x[idx].shape, generator=gen)
        loss = nn.functional.cross_entropy(model(xb), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.mark.parametrize("strategy", ["lookahead", "margin", "badge"])
def test_query_returns_the_ids_entk_al_run_selects(tmp_path, digits, strategy):
    captured = {}

    class Capturing(ActiveLearningLoop):
        def select(self, r, model, pool):
            lab = pool.labeled_ids()
            captured[r] = (copy.deepcopy(model), lab.copy(), pool.labels[lab].copy())
            return super().select(r, model, pool)

    cfg = RunConfig(strategy=strategy, dataset="digits", initial=20, query=8, rounds=2, seed=3, width=16,
                    min_steps=20, epochs=2, subset=500)
    records = Capturing(cfg, tmp_path).run()
    for r in (0, 1):
        model, lab, y = captured[r]
        q = entk_al.query(model, digits.x_train, lab, y, 8, strategy, seed=3, round=r, subset=500)
        assert q.ids.tolist() == records[r]["queried"]
        assert len(q.candidate_ids) == 500


def test_query_reports_candidate_scores_and_leaves_the_global_rng_alone(digits):
    model = _net()
    lab = np.arange(30)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    q = entk_al.query(model, digits.x_train, lab, digits.y_train.numpy()[lab], 5, "lookahead", subset=200)
    assert torch.equal(torch.rand(3), before)
    assert q.scores is not None and q.score_ids is not None and len(q.scores) == len(q.score_ids) == 200
    # the queried ids are the top of the reported scores (batch top-k)
    top = q.score_ids[np.argsort(-q.scores, kind="stable")[:5]]
    assert sorted(top.tolist()) == sorted(q.ids.tolist())


def test_query_inside_no_grad_and_inference_mode(digits):
    model = _net()
    lab = np.arange(20)
    y = digits.y_train.numpy()[lab]
    ref = entk_al.query(model, digits.x_train, lab, y, 4, subset=100).ids
    with torch.no_grad():
        assert np.array_equal(entk_al.query(model, digits.x_train, lab, y, 4, subset=100).ids, ref)
    with torch.inference_mode():
        assert np.array_equal(entk_al.query(model, digits.x_train, lab, y, 4, subset=100).ids, ref)


def _strategies():
    import strategies

    return sorted(strategies.REGISTRY)


@pytest.mark.parametrize("strategy", _strategies())
def test_active_learner_with_a_users_cross_entropy_loop_every_strategy(tmp_path, digits, strategy):
    x, y_all = digits.x_train[:400], digits.y_train.numpy()[:400]
    learner = entk_al.ActiveLearner(x, strategy, out=tmp_path / "run", seed=1, subset=150,
                                    labeled_ids=np.arange(20), labels=y_all[:20])
    model = _net(1)
    for r in range(3):
        _train_ce(model, x[learner.labeled_ids], learner.labels, seed=r)
        acc = float((model(digits.x_test).argmax(1) == digits.y_test).float().mean())
        q = learner.query(model, 6, metrics={"test_accuracy": acc})
        assert len(set(q.ids.tolist())) == 6 and not np.isin(q.ids, learner.labeled_ids).any()
        assert learner.round == r
        learner.add_labels(q.ids, y_all[q.ids])
        assert learner.round == r + 1
    assert len(learner.labeled_ids) == 38
    rows = [json.loads(line) for line in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2] and all(r["test_accuracy"] is not None for r in rows)


def test_learner_folder_resumes_and_plots(tmp_path, digits):
    x, y_all = digits.x_train[:300], digits.y_train.numpy()[:300]

    def rounds(learner, model, n):
        out = []
        for _ in range(n):
            _train_ce(model, x[learner.labeled_ids], learner.labels, seed=learner.round)
            q = learner.query(model, 5, metrics={"test_accuracy": 0.5 + 0.1 * learner.round})
            learner.add_labels(q.ids, y_all[q.ids])
            out.append(q.ids.tolist())
        return out

    whole = entk_al.ActiveLearner(x, "margin", out=tmp_path / "whole", labeled_ids=np.arange(10), labels=y_all[:10])
    ids_whole = rounds(whole, _net(2), 3)
    part = entk_al.ActiveLearner(x, "margin", out=tmp_path / "part", labeled_ids=np.arange(10), labels=y_all[:10])
    model = _net(2)
    ids_part = rounds(part, model, 1)
    with pytest.raises(CheckpointError, match="already holds a run"):
        entk_al.ActiveLearner(x, "margin", out=tmp_path / "part")
    resumed = entk_al.ActiveLearner.resume(tmp_path / "part", x)
    assert resumed.round == 1 and np.array_equal(resumed.labeled_ids, part.labeled_ids)
    ids_part += rounds(resumed, model, 2)
    assert ids_part == ids_whole
    from entk_al.report.plot import plot_runs

    plot_runs(tmp_path, tmp_path / "plots")
    assert (tmp_path / "plots" / "curves.png").is_file()


def test_cli_points_a_learner_folder_back_to_python(tmp_path, digits, capsys):
    """entk-al run cannot continue an ActiveLearner's folder: --resume and --out say how to,
    in one line (instead of 'unknown option(s) learner' or 'pass --resume'); a round logged
    without metrics is named by plot."""
    from clitools import cli

    x, y_all = digits.x_train[:200], digits.y_train.numpy()[:200]
    learner = entk_al.ActiveLearner(x, "margin", out=tmp_path / "mine", labeled_ids=np.arange(10), labels=y_all[:10])
    model = _net(3)
    _train_ce(model, x[learner.labeled_ids], learner.labels, seed=0)
    q = learner.query(model, 5, metrics={"test_accuracy": 0.5})
    learner.add_labels(q.ids, y_all[q.ids])
    q = learner.query(model, 5)  # no metrics this round
    learner.add_labels(q.ids, y_all[q.ids])
    for args in (["--resume", tmp_path / "mine"], ["--out", tmp_path / "mine", "--rounds", "1"]):
        code, _, err = cli(capsys, "run", *args, "-q")
        assert code == 2 and err.count("\n") == 1 and "ActiveLearner.resume(" in err, err
    code, _, err = cli(capsys, "plot", tmp_path / "mine")
    assert code == 2 and "round(s) 1 have no test_accuracy" in err, err


def test_pending_queries_survive_a_restart(tmp_path, digits):
    x, y_all = digits.x_train[:200], digits.y_train.numpy()[:200]
    learner = entk_al.ActiveLearner(x, "entropy", out=tmp_path / "r", labeled_ids=np.arange(10), labels=y_all[:10])
    q = learner.query(_net(), 4)
    learner.add_labels(q.ids[:2], y_all[q.ids[:2]])  # an annotator answered half
    back = entk_al.ActiveLearner.resume(tmp_path / "r", x)
    assert back.round == 0 and back.pending.tolist() == q.ids.tolist()
    back.add_labels(q.ids[2:], y_all[q.ids[2:]])
    assert back.round == 1 and back.pending is None


class _Items(torch.utils.data.Dataset):
    def __init__(self, x, y, as_numpy=False):
        self.x, self.y, self.as_numpy = x, y, as_numpy

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        xi = self.x[i].numpy() if self.as_numpy else self.x[i]
        return xi, int(self.y[i])


def test_dataset_and_memmap_pools_select_what_the_tensor_pool_selects(tmp_path, digits):
    x, y = digits.x_train[:500], digits.y_train.numpy()[:500]
    np.save(tmp_path / "pool.npy", x.numpy())
    model = _net(4)
    _train_ce(model, x[:30], y[:30])
    pools = [x, _Items(x, y), _Items(x, y, as_numpy=True), f"memmap:{tmp_path / 'pool.npy'}",
             entk_al.MemmapPool(tmp_path / "pool.npy")]
    for strategy in ("lookahead", "coreset"):
        got = [entk_al.query(model, p, np.arange(30), y[:30], 7, strategy, subset=200).ids.tolist() for p in pools]
        assert all(g == got[0] for g in got[1:]), strategy
    mm = entk_al.MemmapPool(tmp_path / "pool.npy")
    ids = np.array([499, 3, 4, 5, 250, 3])
    assert torch.equal(mm.get(ids), x[torch.from_numpy(ids)])


def test_memmap_pool_reads_without_mapping_and_scales_uint8(tmp_path):
    arr = np.arange(5 * 2 * 3, dtype=np.uint8).reshape(5, 2, 3)
    np.save(tmp_path / "u8.npy", arr)
    pool = entk_al.MemmapPool(tmp_path / "u8.npy")
    assert pool.input_shape == (2, 3) and len(pool) == 5
    assert torch.allclose(pool.get([4, 0]), torch.from_numpy(arr[[4, 0]].astype(np.float32) / 255))
    with pytest.raises(IndexError, match="out of range"):
        pool.get([5])
    np.save(tmp_path / "c.npy", np.zeros((3, 2), dtype=np.complex64))
    with pytest.raises(DataFormatError, match="dtype"):
        entk_al.MemmapPool(tmp_path / "c.npy")
    (tmp_path / "t.npy").write_text("not numpy")
    with pytest.raises(DataFormatError, match="not a .npy"):
        entk_al.MemmapPool(tmp_path / "t.npy")


def test_folder_pool_reads_images_lazily_by_id(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    pool = entk_al.as_pool(f"folder:{tmp_path}")
    assert len(pool) == 6 and pool.input_shape == (3, 6, 5) and pool.labels.tolist() == [0, 0, 0, 1, 1, 1]
    want = np.asarray(Image.open(tmp_path / "dog" / "1.png"), dtype=np.float32).transpose(2, 0, 1) / 255
    assert torch.allclose(pool.get([4])[0], torch.from_numpy(want))


class _TupleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Linear(64, 10)

    def forward(self, x):
        return self.f(x.flatten(1)), x


@pytest.mark.parametrize("call,error,needle", [
    (lambda x, y, m: entk_al.query(_TupleNet(), x, [0, 1], y[:2], 2), ConfigError, "got a tuple"),
    (lambda x, y, m: entk_al.query(m, x, [0, 1], y[:1], 2), LabelError, "2 labeled ids but 1 labels"),
    (lambda x, y, m: entk_al.query(m, x, [0, 0], y[:2], 2), LabelError, "labeled twice"),
    (lambda x, y, m: entk_al.query(m, x, [0, 5000], y[:2], 2), LabelError, "out of range"),
    (lambda x, y, m: entk_al.query(m, x, [0, 1], [3, 12], 2), LabelError, "outside [0, 10)"),
    (lambda x, y, m: entk_al.query(m, x, [0, 1], y[:2], 0), ConfigError, "positive integer"),
    (lambda x, y, m: entk_al.query(m, x[:5], [0, 1], y[:2], 4), ConfigError, "more than the 3 unlabeled"),
    (lambda x, y, m: entk_al.query(m, x, [0, 1], y[:2], 2, "nope"), entk_al.StrategyError, "unknown strategy"),
    (lambda x, y, m: entk_al.query(m, [("a", 1)] * 4, [0], [1], 2), DataFormatError, "not a tensor or an array"),
])
def test_bad_input_gets_one_clear_error(digits, call, error, needle):
    x, y = digits.x_train[:300], digits.y_train.numpy()[:300]
    with pytest.raises(error) as info:
        call(x, y, _net())
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_dataset_items_of_different_shapes_are_refused(digits):
    items = [(torch.zeros(1, 8, 8), 0)] * 10 + [(torch.zeros(1, 8, 7), 1)]
    pool = entk_al.as_pool(items)
    with pytest.raises(DataFormatError, match="differ in shape"):
        pool.get(np.arange(11))
