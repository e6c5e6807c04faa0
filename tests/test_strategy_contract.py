"""The contract every registered strategy keeps, checked on one shared digits round (tests/fakes.py).

Independent references: the candidate and labeled id sets of the round (set arithmetic), a
second run from identical state (reproducibility), and snapshots taken before ``select`` of the
global torch / NumPy / ``random`` RNG states, every parameter and buffer, and every module's
train/eval flag.
"""

from __future__ import annotations

import inspect
import random

import numpy as np
import pytest
import torch

from entk_al.errors import StrategyError
from entk_al.run.plugins import _allowed_types, available_strategies, check_options, load_strategy

from fakes import digits_round

K = 5
BUILTINS = sorted(n for n, (origin, _) in available_strategies().items() if origin == "built-in")
#: Built-ins plus option sets that take other code paths (sequential asks the oracle mid-selection).
CASES = [(n, {}) for n in BUILTINS] + [
    ("lookahead", {"mode": "sequential"}),
    ("lookahead", {"mode": "hybrid", "hybrid_size": 2}),
    ("lookahead", {"acquisition": "flip", "exclude_self": True}),
    ("lookahead", {"acquisition": "emoc"}),
    ("ntk_bald", {"batch": "greedy", "samples": 8}),
    ("ntk_bald", {"estimator": "probit", "output_scale": "loo"}),
    ("ntk_margin", {"link": "simplex", "batch": "greedy"}),
    ("ntk_entropy", {"estimator": "probit"}),
    ("ntk_zmargin", {"batch": "greedy", "mean": "base"}),
    ("ntk_epig", {"batch": "greedy", "num_targets": 20, "samples": 8}),
    ("ntk_epig", {"targets": "unlabeled", "estimator": "gaussian"}),
]
IDS = [n + "".join(f"-{k}={v}" for k, v in o.items()) for n, o in CASES]


def test_every_builtin_is_covered():
    assert set(BUILTINS) >= {"random", "entropy", "margin", "least_confidence", "lookahead", "bald", "badge",
                             "coreset", "ntk_variance", "ntk_bald", "ntk_entropy", "ntk_margin", "ntk_zmargin",
                             "ntk_epig"}


def _rng_states():
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _same_rng(a, b) -> bool:
    return (torch.equal(a[0], b[0]) and a[2] == b[2] and a[1][0] == b[1][0]
            and np.array_equal(a[1][1], b[1][1]) and a[1][2:] == b[1][2:])


@pytest.mark.parametrize("name,options", CASES, ids=IDS)
def test_selection_contract(name, options):
    setup = digits_round()
    ctx = setup.context()
    model = ctx.model
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    rng_before = _rng_states()

    got = np.asarray(load_strategy(name, options).select(ctx, K))

    # k distinct unlabeled ids within the round's candidates
    assert got.ndim == 1 and len(got) == K and len(set(got.tolist())) == K
    assert set(got.tolist()) <= set(setup.candidate_ids.tolist())
    assert not set(got.tolist()) & set(setup.labeled_ids.tolist())
    # the oracle was asked only about ids it then returned
    assert set(ctx.oracle_calls) <= set(got.tolist())
    # nothing global or in the model moved
    assert _same_rng(rng_before, _rng_states()), f"{name} changed a global RNG state"
    after = model.state_dict()
    assert params.keys() == after.keys()
    assert all(torch.equal(params[k], after[k]) for k in params), f"{name} changed the model's parameters"
    assert [m.training for m in model.modules()] == flags, f"{name} changed train/eval flags"

    # same seed and round => same ids, from fresh state (new strategy object, new context)
    again = np.asarray(load_strategy(name, options).select(setup.context(), K))
    assert again.tolist() == got.tolist()


@pytest.mark.parametrize("name", BUILTINS)
def test_train_eval_flags_untouched_from_a_mixed_state(name):
    """A module tree left half in train mode by user code keeps each flag as it was."""
    setup = digits_round()
    ctx = setup.context()
    model = ctx.model
    model.train()
    first_child = next(iter(model.children()))
    first_child.eval()
    flags = [m.training for m in model.modules()]
    assert any(flags) and not all(flags)
    load_strategy(name).select(ctx, K)
    assert [m.training for m in model.modules()] == flags


@pytest.mark.parametrize("name", BUILTINS)
def test_constructor_options_are_type_checkable(name):
    """Every option is annotated with checkable scalar types; its default passes the check and a
    value of no accepted type is refused by name."""
    from entk_al.run.plugins import resolve_strategy_class

    cls = resolve_strategy_class(name)
    params = [p for p in inspect.signature(cls).parameters.values()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for p in params:
        assert p.annotation is not p.empty, f"{name}: option {p.name!r} has no type annotation"
        assert _allowed_types(p) is not None, f"{name}: option {p.name!r}: {p.annotation!r} cannot be checked"
        assert p.default is not p.empty, f"{name}: option {p.name!r} has no default"
        if p.default is not None:
            assert check_options(name, cls, {p.name: p.default}) == {p.name: p.default}
        with pytest.raises(StrategyError, match=f"option '{p.name}' must be"):
            check_options(name, cls, {p.name: [1, 2]})
