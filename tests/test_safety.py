"""Safety and robustness faults (issue 9, part 1): files that run code, non-finite values,
seeds, model outputs, strategy sizes, round-cache copies, progress, SIGTERM."""

import contextlib
import io
import json
import os
import pickle
import signal

import numpy as np
import pytest
import torch
from clitools import cli
from torch import nn

from entk_al.errors import ConfigError, DataFormatError, StrategyError
from entk_al.nets.models import predict_with_features
from entk_al.ntk import pntk
from entk_al.progress import LineProgress, NullProgress, make_progress
from entk_al.round.context import RoundContext
from entk_al.run.config import RunConfig
from entk_al.run.loop import ActiveLearningLoop, run_experiment

SMALL = ["--initial", "10", "--query", "5", "--rounds", "1", "--epochs", "1", "--min-steps", "3",
         "--subset", "100", "-q"]


class _Evil:
    """Unpickling this writes a marker file: stands in for code smuggled into a received file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


# -- 1. nothing read from disk runs code ------------------------------------------------------
def test_checkpoint_with_pickled_callable_is_refused_by_resume_and_label(tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = cli(capsys, "run", "--strategy", "random", "--oracle", "files", "--out", run, *SMALL)
    assert code == 0, err  # waits for the initial labels
    ck = torch.load(run / "checkpoint.pt", weights_only=True)  # what we write loads safely
    marker = tmp_path / "marker"
    ck["pending"]["note"] = _Evil(marker)
    torch.save(ck, run / "checkpoint.pt")
    answers = tmp_path / "answers.csv"
    answers.write_text("id,label\n")
    for args in (["run", "--resume", run, "-q"], ["label", run, "--from", answers]):
        code, out, err = cli(capsys, *args)
        assert code == 2 and err.startswith("error: checkpoint") and err.count("\n") == 1, err
        assert "refusing to load" in err
        assert not marker.exists()


def test_checkpoint_refuses_to_store_objects(tmp_path):
    from entk_al.errors import CheckpointError
    from entk_al.run.checkpoint import LoopState, plain, write_checkpoint
    from entk_al.run.labeled import PoolState

    assert plain({"a": np.float32(1.5), "b": np.arange(3), "c": (np.int64(2), "x")}) == \
        {"a": 1.5, "b": [0, 1, 2], "c": [2, "x"]}
    state = LoopState(next_round=1, model_state=None, pool=PoolState(4), records=[{"info": object()}])
    with pytest.raises(CheckpointError, match="object"):
        write_checkpoint(tmp_path / "c.pt", state, None, {}, ["a"])
    assert not (tmp_path / "c.pt").exists()


def _cifar_folder(root, n=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": b"training batch", b"labels": rng.integers(0, 10, n).tolist(),
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"filenames": [f"img{i}.png".encode() for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))  # protocol 2 names _codecs.encode too
    meta = {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_cases_per_batch": n}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=4))
    return folder


def test_cifar_batches_load_with_the_restricted_unpickler(tmp_path):
    from entk_al.data.torchvision_sets import load_cifar

    folder = _cifar_folder(tmp_path)
    ds = load_cifar("cifar10", str(tmp_path))
    want = pickle.loads((folder / "data_batch_1").read_bytes(), encoding="latin1")
    assert ds.x_train.shape == (30, 3, 32, 32) and ds.classes[3] == "c3"
    assert ds.y_train[:6].tolist() == want[b"labels"]
    # protocol 5 (out-of-band-capable) arrays load too
    (folder / "test_batch").write_bytes(pickle.dumps(want, protocol=5))
    assert load_cifar("cifar10", str(tmp_path)).y_test.tolist() == want[b"labels"]


def test_malicious_cifar_batch_does_not_run(tmp_path):
    from entk_al.data.torchvision_sets import load_cifar

    folder = _cifar_folder(tmp_path)
    marker = tmp_path / "marker"
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": [1]}, protocol=2))
    with pytest.raises(DataFormatError, match=r"refusing to load (__builtin__|builtins)\.exec"):
        load_cifar("cifar10", str(tmp_path))
    assert not marker.exists()


# -- 3. non-finite values ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def overflow_pool(tmp_path_factory):
    """Digits-like numpy pool with two rows at 3e38 (finite float32; the network overflows)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)
    bad = np.array([3, 7])
    x[bad] = 3e38
    path = tmp_path_factory.mktemp("np") / "pool.npz"
    xt = rng.standard_normal((60, 16)).astype(np.float32)
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=(xt[:, 0] > 0).astype(np.int64) + 2 * (xt[:, 1] > 0))
    return path, bad


@pytest.mark.parametrize("strategy", ["lookahead", "badge", "coreset", "entropy", "margin",
                                      "least_confidence", "bald", "random"])
def test_nonfinite_pool_items_are_left_out_and_logged(overflow_pool, tmp_path, strategy):
    path, bad = overflow_pool
    cfg = RunConfig(strategy=strategy, dataset=f"numpy:{path}", initial=10, query=8, rounds=1, epochs=1,
                    min_steps=5, seed=1, device="cpu")
    loop = ActiveLearningLoop(cfg, tmp_path / strategy)
    # the seeded initial set avoids the bad rows, so training stays finite
    assert not np.isin(bad, loop.fresh_state().pool.labeled_ids()).any()
    recs = loop.run()
    queried = np.array(recs[0]["queried"])
    info = recs[0]["strategy_info"]
    assert len(queried) == 8 and not np.isin(queried, bad).any()
    assert info["nonfinite_excluded"] == 2 and sorted(int(i) for i in info["nonfinite_ids"]) == bad.tolist()
    cand = np.setdiff1d(np.arange(300), np.concatenate([loop.fresh_state().pool.labeled_ids(), bad]))
    if strategy != "random":
        # not the index-order fallback of the fault
        assert queried.tolist() != cand[:8].tolist()
    for key in ("score_max", "score_mean", "bald_max", "bald_mean"):
        if key in info:
            assert np.isfinite(info[key])


def _ctx(model, x, labeled, kernel_fn=None, k_seed=0):
    n = len(x)
    unl = np.setdiff1d(np.arange(n), labeled)
    return RoundContext(round=0, seed=k_seed, model=model, device=torch.device("cpu"), pool=x, num_classes=3,
                        labeled_ids=labeled, labeled_targets=np.arange(len(labeled)) % 3, unlabeled_ids=unl,
                        candidate_ids=unl, rng=np.random.default_rng(0), torch_generator=torch.Generator(),
                        oracle=lambda ids: np.zeros(len(ids), dtype=np.int64),
                        kernel_fn=kernel_fn or (lambda m, a, b=None: pntk(m, a, b)))


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


@pytest.mark.parametrize("dense_max", [8000, 5])  # dense k(U, U) and the streamed path
def test_float32_kernel_overflow_excludes_those_ids_in_lookahead(dense_max):
    """Finite outputs but a non-finite kernel row (float32 overflow): the id is left out of
    candidates and U, and the picks equal those on the pool without it."""
    from strategies import LookaheadSampling

    x = torch.randn(40, 4)
    x[5, 0] = 50.0  # the marked row; its kernel row is made to overflow
    marked = lambda t: t[:, 0] == 50.0  # noqa: E731

    def overflowing(m, a, b=None):
        k = pntk(m, a, b)
        k[marked(a)] = float("inf")
        k[:, marked(a if b is None else b)] = float("inf")
        return k

    model, lab = _mlp(), np.arange(30, 40)
    ctx = _ctx(model, x, lab, overflowing)
    picked = LookaheadSampling(dense_max=dense_max).select(ctx, 4)
    assert 5 not in picked.tolist() and ctx.info["nonfinite_ids"] == {"5": "kernel"}
    # reference: the same round with id 5 never a candidate
    ref = _ctx(model, x, lab)
    ref.candidate_ids = ref.unlabeled_ids = np.setdiff1d(ref.candidate_ids, [5])
    assert picked.tolist() == LookaheadSampling(dense_max=dense_max).select(ref, 4).tolist()


def test_top_k_leaves_out_nonfinite_scores_and_fails_when_too_few_remain():
    from strategies import top_k

    ctx = _ctx(_mlp(), torch.randn(10, 4), np.arange(3))
    ids = np.arange(10, 16)
    scores = np.array([0.5, np.nan, 2.0, np.inf, -np.inf, 1.0])
    assert top_k(ids, scores, 3, ctx).tolist() == [12, 15, 10]
    assert ctx.info["nonfinite_excluded"] == 3 and set(ctx.info["nonfinite_ids"]) == {"11", "13", "14"}
    with pytest.raises(StrategyError, match="only 3 of 6"):
        top_k(ids, scores, 4)


def test_too_few_finite_candidates_is_one_line_error(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 4)).astype(np.float32)
    x[10:] = 3e38
    path = tmp_path / "p.npz"
    np.savez(path, x_train=x, y_train=np.arange(40) % 2, x_test=x[:10], y_test=np.arange(10) % 2)
    code, _, err = cli(capsys, "run", "--dataset", f"numpy:{path}", "--strategy", "entropy", "--initial", "8",
                       "--query", "5", "--rounds", "1", "--epochs", "1", "--min-steps", "2", "--seed", "3",
                       "--out", tmp_path / "r", "-q")
    assert code == 2 and "finite" in err and err.count("\n") == 1, err


# -- 4. seeds ------------------------------------------------------------------------------------
def test_seeds_use_every_bit_and_32_bit_seeds_are_unchanged(tmp_path, capsys):
    import zlib

    from entk_al.seeding import int_seed, numpy_rng

    for seed in (0, 7, 2**32 - 1):  # the former derivation, bit for bit
        old = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, 3, zlib.crc32(b"subset")]))
        assert numpy_rng(seed, 2, "subset").integers(2**62) == old.integers(2**62)
    draws = {s: numpy_rng(s, 0, "initial").integers(2**62) for s in (0, 2**32, 2**33, 2**32 + 1, 2**63 - 1)}
    assert len(set(draws.values())) == len(draws)
    assert int_seed(0, 0, "init") != int_seed(2**32, 0, "init")
    for bad in ("-1", str(2**63)):
        code, _, err = cli(capsys, "run", "--seed", bad, "--out", tmp_path / "x", "-q")
        assert code == 2 and "--seed must be an integer in [0, 2**63)" in err and err.count("\n") == 1
        assert not (tmp_path / "x").exists()


# -- 5. model output type ------------------------------------------------------------------------
class TupleModel(nn.Module):
    def __init__(self, as_dict=False, n_in=4, n_out=3):
        super().__init__()
        self.lin, self.as_dict = nn.Linear(n_in, n_out), as_dict

    def forward(self, x):
        out = self.lin(x.flatten(1))
        return {"logits": out} if self.as_dict else (out, x)


@pytest.mark.parametrize("as_dict", [False, True])
def test_model_returning_tuple_or_dict_gets_one_clear_error(as_dict):
    from entk_al.ntk import entk, kernel

    model = TupleModel(as_dict)
    for fn in (pntk, entk, lambda m, x: kernel(m, x, method="jacobian")):
        with pytest.raises(ValueError, match=r"model must return an \(N, O\) tensor"):
            fn(model, torch.randn(5, 4))
    from entk_al.run.setup import RunSetup

    setup = RunSetup.from_config(RunConfig(strategy="random", device="cpu"))
    with pytest.raises(ConfigError, match=r"model must return an \(N, O\) tensor"):
        setup.check_model(TupleModel(as_dict, 64, 10))  # digits: 8x8 inputs, 10 classes


# -- 6. strategy options against the run's sizes --------------------------------------------------
@pytest.mark.parametrize("opts,words", [
    (["-o", "prefilter=knn", "-o", "num_candidates=5"], "num_candidates=5 is smaller than --query 10"),
    (["-o", "prefilter=knn", "-o", "shortlist=20", "-o", "num_candidates=50"], "shortlist=20"),
])
def test_strategy_sizes_are_checked_before_training(tmp_path, capsys, monkeypatch, opts, words):
    import entk_al.run.setup

    def no_training(*a, **kw):
        raise AssertionError("trained before the size check")

    monkeypatch.setattr(entk_al.run.setup, "train_model", no_training)
    out = tmp_path / "r"
    code, _, err = cli(capsys, "run", "--query", "10", *opts, "--out", out, "-q")
    assert code == 2 and words in err and "lookahead" in err and err.count("\n") == 1, err
    assert not out.exists()


# -- 7. one copy of the round's predictions --------------------------------------------------------
def test_round_cache_holds_one_copy_and_matches_predict():
    x = torch.randn(300, 4)
    model = _mlp()
    ctx = _ctx(model, x, np.arange(10))
    ids = ctx.unlabeled_ids
    emb = ctx.embeddings(ids)
    want_logits, want_emb = predict_with_features(model, x[torch.from_numpy(ids)], 64)
    assert torch.equal(emb, want_emb) and torch.equal(ctx.logits(ids), want_logits)
    assert emb.data_ptr() == ctx._cache["feats"].data_ptr()  # a view of the cache, not a copy
    more = np.array([3, 1, 3, 200])  # new, repeated and cached ids together
    _, want_more = predict_with_features(model, x[[3, 1, 3, 200]], 64)
    assert torch.equal(ctx.embeddings(more), want_more)
    assert ctx._cache["feats"].shape[0] == len(ids) + 2


# -- 8. progress, time split, SIGTERM --------------------------------------------------------------
def test_line_progress_prints_open_tasks_periodically_and_quiet_prints_nothing():
    import time

    stream = io.StringIO()
    rep = LineProgress(stream, interval_s=0.05)
    with rep.task("run", total=3) as adv, rep.task("training", total=100) as step:
        adv(1)
        step(40)
        assert rep.status_line().endswith("] run 1/3 > training 40/100")
        # The timer thread prints it; wait for a whole line (generously: the machine may be busy).
        deadline = time.monotonic() + 20
        while "\n" not in stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
    rep.close()
    lines = stream.getvalue().splitlines()
    assert lines and "run 1/3 > training 40/100" in lines[0]
    assert isinstance(make_progress(True, stream), NullProgress) and type(make_progress(True)) is NullProgress
    assert isinstance(make_progress(False, io.StringIO()), LineProgress)  # not a terminal


def test_rounds_record_train_kernel_score_seconds(tmp_path):
    progress = RecordingProgress()
    cfg = RunConfig(initial=10, query=5, rounds=1, epochs=1, min_steps=3, subset=100, device="cpu")
    recs = run_experiment(cfg, tmp_path / "r", progress=progress)
    rec = recs[0]
    assert rec["train_seconds"] > 0 and rec["kernel_seconds"] > 0 and rec["score_seconds"] >= 0
    assert rec["kernel_seconds"] + rec["score_seconds"] == pytest.approx(rec["select_seconds"])
    logged = [json.loads(x) for x in (tmp_path / "r" / "rounds.jsonl").read_text().splitlines()]
    assert logged[0]["kernel_seconds"] == rec["kernel_seconds"]
    # Deterministic (no timer thread): the round opened a training task advanced step by step.
    training = [t for t in progress.tasks if t[0].endswith(": training")]
    assert training and all(t[2] == t[1] for t in training)


class RecordingProgress(NullProgress):
    """Records (description, total, advanced) of every task opened."""

    def __init__(self):
        self.tasks = []

    @contextlib.contextmanager
    def task(self, description, total=None):
        entry = [description, total, 0]
        self.tasks.append(entry)

        def advance(n=1):
            entry[2] += n

        yield advance


@pytest.mark.parametrize("mode", ["batch", "hybrid"])
def test_lookahead_reports_scoring_blocks(mode):
    from strategies.lookahead import LookaheadSampling

    from fakes import digits_round

    ctx = digits_round().context()
    ctx.progress = RecordingProgress()
    # A small memory budget makes several column blocks per scoring pass.
    LookaheadSampling(mode=mode, hybrid_size=2, memory_budget_mb=1).select(ctx, 4)
    scoring = [t for t in ctx.progress.tasks if t[0].startswith("look-ahead scoring")]
    assert len(scoring) == 1
    n_cand = len(ctx.candidate_ids)
    if mode == "batch":
        assert scoring[0][1] == n_cand and scoring[0][2] == n_cand
    else:  # one pass per fold over the candidates still remaining: C + (C-2)
        assert scoring[0][1] is None and scoring[0][2] == n_cand + (n_cand - 2)


def test_sigterm_is_a_clean_interrupt(tmp_path, capsys, monkeypatch):
    orig = ActiveLearningLoop.train_and_evaluate

    def terminated(self, r, *a, **kw):
        if r == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return orig(self, r, *a, **kw)

    monkeypatch.setattr(ActiveLearningLoop, "train_and_evaluate", terminated)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "r"
    code, _, err = cli(capsys, "run", "--strategy", "random", *SMALL[:4], "--rounds", "2", *SMALL[6:],
                       "--out", out)
    assert code == 130 and err.strip() == "interrupted"
    assert signal.getsignal(signal.SIGTERM) == before
    monkeypatch.undo()
    code, _, err = cli(capsys, "run", "--resume", out, "-q")
    assert code == 0, err
    assert len((out / "rounds.jsonl").read_text().splitlines()) == 3
