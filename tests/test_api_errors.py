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
from entk_al.errors import ConfigError, DataFormatError, EntkAlError, LabelError


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
