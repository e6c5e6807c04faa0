"""Bad input to the library (query, ActiveLearner, pools) is one sentence of an EntkAlError subclass.

The cases of issue 17 that tests/test_api.py does not already drive through :func:`entk_al.query`
and :class:`entk_al.ActiveLearner`: items of different shapes or of the wrong type read in the
middle of a scan, kernel_params that match no parameter, ids labeled twice across calls,
labels missing, a model returning a tuple inside a learner.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import entk_al
from entk_al.errors import ConfigError, DataFormatError, DataNotFoundError, EntkAlError, LabelError


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


class _Items(torch.utils.data.Dataset):
    """60 items of shape (1, 4, 4); item ``odd`` is ``bad`` instead."""

    def __init__(self, odd: int, bad):
        self.x = torch.randn(60, 1, 4, 4, generator=torch.Generator().manual_seed(1))
        self.odd, self.bad = odd, bad

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return (self.bad if i == self.odd else self.x[i]), i % 3


class _Tuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Linear(16, 3)

    def forward(self, x):
        return self.f(x.flatten(1)), x.sum()


def _one_sentence(exc: BaseException, *needles: str) -> None:
    text = str(exc)
    assert isinstance(exc, EntkAlError) and "\n" not in text, text
    for needle in needles:
        assert needle in text, text


LAB, Y = np.array([0, 1, 2]), np.array([0, 1, 2])


@pytest.mark.parametrize("bad,error,needles", [
    (torch.zeros(1, 4, 5), DataFormatError, ("differ in shape", "(1, 4, 4)", "(1, 4, 5)")),
    ("a string", DataFormatError, ("dataset item 37 is a str, not a tensor or an array",)),
    (np.zeros((1, 4, 4), dtype=object), DataFormatError, ("dataset item 37 is an array of dtype object",)),
])
def test_bad_items_found_during_a_scan(bad, error, needles):
    """Item 37 is only read when the strategy scans the pool: the error still names it."""
    with pytest.raises(error) as info:
        entk_al.query(_net(), _Items(37, bad), LAB, Y, 2, "margin", subset=50)
    _one_sentence(info.value, *needles)


def test_an_array_pool_of_strings_is_refused():
    with pytest.raises(DataFormatError) as info:
        entk_al.as_pool(np.array([["a", "b"], ["c", "d"]]))
    _one_sentence(info.value, "must be numbers", "<U1")


@pytest.mark.parametrize("spec", ["nope.", "nope.,also."])
def test_kernel_params_matching_no_parameter(spec):
    x = torch.randn(40, 1, 4, 4)
    with pytest.raises(ConfigError) as info:
        entk_al.query(_net(), x, LAB, Y, 2, "lookahead", options={"kernel_params": spec})
    _one_sentence(info.value, "kernel_params=", "match no parameter", "1.weight")
    # a spec that matches works and is reported
    q = entk_al.query(_net(), x, LAB, Y, 2, "lookahead", options={"kernel_params": "3."})
    assert q.info["kernel_params"] == "3."


def test_learner_refuses_labels_twice_missing_or_out_of_range():
    x = torch.randn(40, 1, 4, 4)
    learner = entk_al.ActiveLearner(x, "margin", labeled_ids=LAB, labels=Y)
    for ids, labels, needle in (([2, 5], [0, 1], "id 2 is already labeled"),
                                ([5, 6], [0], "2 labeled ids but 1 labels"),
                                ([5, 5], [0, 0], "id 5 is labeled twice"),
                                ([40], [0], "labeled id 40 is out of range for a pool of 40"),
                                ([7], [-1], "label -1")):
        with pytest.raises(LabelError) as info:
            learner.add_labels(ids, labels)
        _one_sentence(info.value, needle)
    assert learner.labeled_ids.tolist() == [0, 1, 2]  # nothing of the refused calls was kept
    with pytest.raises(LabelError) as info:
        entk_al.ActiveLearner(x, "margin", labeled_ids=[0, 1], labels=None)
    _one_sentence(info.value, "2 labeled ids but 0 labels")


def test_learner_query_with_a_model_returning_a_tuple():
    learner = entk_al.ActiveLearner(torch.randn(40, 1, 4, 4), "margin", labeled_ids=LAB, labels=Y)
    with pytest.raises(ConfigError) as info:
        learner.query(_Tuple(), 2)
    _one_sentence(info.value, "got a tuple", "forward returns the logits only")
    assert learner.pending is None and learner.round == 0


@pytest.mark.parametrize("kwargs,error,needles", [
    (dict(labels=Y + 0.5), LabelError, ("labels must be integers, got 0.5",)),
    (dict(labeled_ids=LAB + 0.5), LabelError, ("labeled ids must be integers, got 0.5",)),
    (dict(candidates=[10.5, 11]), LabelError, ("candidates must be integers",)),
    (dict(labels=[[0], [1], [2]]), LabelError, ("1-d",)),
    (dict(seed=1.5), ConfigError, ("seed must be an integer >= 0, got 1.5",)),
    (dict(seed=-1), ConfigError, ("seed must be an integer >= 0",)),
    (dict(seed=True), ConfigError, ("seed must be an integer",)),
    (dict(subset=3), ConfigError, ("subset (3) must be >= k (5)",)),
    (dict(device="bogus"), ConfigError, ("device 'bogus' is not a torch device",)),
])
def test_query_refuses_what_it_would_otherwise_truncate_or_misname(kwargs, error, needles):
    """Floats are not silently truncated to ids or labels; seeds, subsets and devices are checked
    in one line before anything runs (the fresh-user trial found each of these)."""
    x = torch.randn(60, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    args = dict(labeled_ids=LAB, labels=Y, strategy="margin")
    args.update(kwargs)
    with pytest.raises(error) as info:
        entk_al.query(_net(), x, k=5, **args)
    _one_sentence(info.value, *needles)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_query_on_cuda_without_cuda_says_so():
    with pytest.raises(ConfigError) as info:
        entk_al.query(_net(), torch.randn(60, 1, 4, 4), LAB, Y, k=5, strategy="margin", device="cuda")
    _one_sentence(info.value, "CUDA is not available")


def test_learner_label_messages_before_any_query():
    """Before a query the learner knows no class count: a negative label is named as such, an
    out-of-range one against the classes given, a float refused (no int64-max in the text)."""
    learner = entk_al.ActiveLearner(torch.randn(60, 1, 4, 4), "margin")
    with pytest.raises(LabelError, match=r"^label -3 is negative$"):
        learner.add_labels([50], [-3])
    with pytest.raises(LabelError, match="labels must be integers, got 1.7"):
        learner.add_labels([50, 51], [1.7, 2.0])
    assert learner.labeled_ids.size == 0
    named = entk_al.ActiveLearner(torch.randn(60, 1, 4, 4), "margin", classes=["a", "b"])
    with pytest.raises(LabelError, match=r"^label 3 is outside \[0, 2\) \(the learner has 2 classes\)$"):
        named.add_labels([1], [3])
    with pytest.raises(ConfigError, match="seed must be an integer"):
        entk_al.ActiveLearner(torch.randn(60, 1, 4, 4), "margin", seed=0.5)


def test_lookahead_with_no_labeled_point_selects_from_the_prior():
    """With L empty the look-ahead's posterior is the prior (base = f(U), M = B): it selects,
    and equals the look-ahead run with an explicitly empty kernel system (no crash)."""
    x = torch.randn(60, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    q = entk_al.query(_net(), x, [], [], k=5, strategy="lookahead")
    assert len(set(q.ids.tolist())) == 5 and q.ids.min() >= 0 and q.ids.max() < 60
    again = entk_al.query(_net(), x, [], [], k=5, strategy="lookahead")
    assert np.array_equal(q.ids, again.ids)
    with pytest.raises(EntkAlError, match="at least one labeled point"):
        entk_al.query(_net(), x, [], [], k=5, strategy="ntk_zmargin")


def test_gp_strategies_report_scores_without_warnings(recwarn):
    """ntk_* strategies fill Query.scores (every candidate, before conditioning) and raise no
    deprecation warning of the library's own making."""
    x = torch.randn(60, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    lab, y = np.arange(9), np.arange(9) % 3
    for batch in ("topk", "greedy"):
        q = entk_al.query(_net(), x, lab, y, k=4, strategy="ntk_zmargin", options={"batch": batch})
        assert q.scores is not None and len(q.scores) == 60 - 9
    assert not [w for w in recwarn if issubclass(w.category, (FutureWarning, DeprecationWarning))
                and "entk_al" in str(w.filename)]


def test_query_gives_every_submodule_its_mode_back():
    """Selection runs the model in eval mode; afterwards each submodule is in the mode the user
    left it in (a head in train mode beside a frozen backbone in eval), also after an error."""
    x = torch.randn(60, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    net = _net()
    net.train()
    net[1].eval()
    before = [m.training for m in net.modules()]
    entk_al.query(net, x, LAB, Y, k=5, strategy="lookahead")
    assert [m.training for m in net.modules()] == before
    with pytest.raises(LabelError):
        entk_al.query(net, x, LAB, Y, k=5, strategy="margin", candidates=[0, 10, 11, 12, 13])
    assert [m.training for m in net.modules()] == before


def test_duplicate_candidates_are_refused():
    with pytest.raises(LabelError) as info:
        entk_al.query(_net(), torch.randn(60, 1, 4, 4), LAB, Y, k=2, strategy="margin", candidates=[10, 11, 11, 12])
    _one_sentence(info.value, "candidate id 11 is given twice")


def test_learner_summary_pairs_the_final_accuracy_with_its_labeled_count(tmp_path):
    """summary.json's final_n_labeled is the labeled count the final accuracy was measured at;
    labels added after it are in n_labeled."""
    import json

    x = torch.randn(60, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    learner = entk_al.ActiveLearner(x, "margin", out=tmp_path / "run", labeled_ids=LAB, labels=Y)
    q = learner.query(_net(), 4, metrics={"test_accuracy": 0.7})
    learner.add_labels(q.ids, np.zeros(4, dtype=np.int64))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final_test_accuracy"] == 0.7
    assert summary["final_n_labeled"] == 3 and summary["n_labeled"] == 7


class _Flat(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Linear(16, 1)

    def forward(self, x):
        return self.f(x.flatten(1))[:, 0]


@pytest.mark.parametrize("model,pool,error,needles", [
    (lambda x: x, None, ConfigError, ("model must be a torch.nn.Module, got a function",)),
    (nn.Flatten(), None, ConfigError, ("the model (Flatten) has no parameters",)),
    (_Flat(), None, ConfigError, ("got shape (1,) for a batch of N=1 input(s) of shape (1, 4, 4)",)),
    (None, "/tmp/pool.npy", DataFormatError, ("'memmap:/tmp/pool.npy'",)),
    (None, "/no/such/place", DataFormatError, ("'memmap:PATH.npy' (one .npy array) or 'folder:PATH'",)),
    (None, {"x_train": np.zeros((4, 16))}, DataFormatError, ("got a dict keyed by name",)),
    (None, f"folder:{__file__}", DataNotFoundError, ("is a file; folder: takes a folder",)),
    (None, "npz", DataFormatError, ("got a NpzFile keyed by name", "np.load(PATH)['x_train']")),
    (None, 3.5, DataFormatError, ("a pool must be a Pool", "got a float")),
])
def test_models_and_pools_that_cannot_work_are_named(model, pool, error, needles):
    """A function or a parameterless module as the model, (N,) outputs, and a bare path as the
    pool (a str is a sequence of characters) each get one EntkAlError sentence."""
    x = torch.randn(60, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    if pool == "npz":  # what np.load returns for an .npz file
        import io

        buf = io.BytesIO()
        np.savez(buf, x_train=x.numpy())
        buf.seek(0)
        pool = np.load(buf)
    with pytest.raises(error) as info:
        entk_al.query(model if model is not None else _net(), pool if pool is not None else x, LAB, Y, k=2,
                      strategy="margin")
    _one_sentence(info.value, *needles)


@pytest.mark.parametrize("strategy", ["coreset", "lookahead", "ntk_zmargin", "margin"])
def test_a_labeled_point_with_nan_input_is_named(strategy):
    """NaN in an unlabeled point leaves it out of the round; in a labeled one every strategy
    stops with the id (coreset used to raise an IndexError, the look-ahead a message naming none)."""
    x = torch.randn(60, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    x[1, 0, 2, 2] = float("nan")
    with pytest.raises(DataFormatError) as info:
        entk_al.query(_net(), x, LAB, Y, k=2, strategy=strategy)
    _one_sentence(info.value, "labeled id(s) 1 have non-finite inputs")


def test_a_wrong_label_is_corrected_and_the_learner_goes_on(tmp_path):
    """Without classes= a label 99 passes add_labels, the first query refuses it; correct_labels
    repairs the saved learner, which then queries what a learner given the right label queries."""
    x = torch.randn(60, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    learner = entk_al.ActiveLearner(x, "margin", out=tmp_path / "a", labeled_ids=LAB, labels=Y)
    learner.add_labels([50], [99])
    with pytest.raises(LabelError, match="label 99 is outside"):
        learner.query(_net(), 4)
    with pytest.raises(LabelError, match="id 51 is not labeled yet"):
        learner.correct_labels([51], [1])
    learner.correct_labels([50], [2])
    resumed = entk_al.ActiveLearner.resume(tmp_path / "a", x)
    assert resumed.labels[list(resumed.labeled_ids).index(50)] == 2
    right = entk_al.ActiveLearner(x, "margin", labeled_ids=[*LAB, 50], labels=[*Y, 2])
    assert np.array_equal(resumed.query(_net(), 4).ids, right.query(_net(), 4).ids)


def test_learner_classes_must_match_the_model_outputs():
    x = torch.randn(60, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    learner = entk_al.ActiveLearner(x, "margin", labeled_ids=LAB, labels=Y, classes=range(5))
    with pytest.raises(ConfigError) as info:
        learner.query(_net(), 2)
    _one_sentence(info.value, "the model has 3 outputs but the learner has 5 classes")


def test_k_beyond_the_unlabeled_ids_is_named_before_the_subset():
    x = torch.randn(60, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ConfigError, match="k=10000 is more than the 57 unlabeled ids"):
        entk_al.query(_net(), x, LAB, Y, k=10000, strategy="margin")
