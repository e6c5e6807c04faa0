"""Loading user strategies: entry points, module:Class, file.py:Class; bad selections."""

import textwrap

import numpy as np
import pytest
from clitools import cli

from entk_al.errors import StrategyError
from entk_al.run.config import RunConfig
from entk_al.run.labeled import PoolState, validate_selection
from entk_al.run.loop import ActiveLearningLoop
from entk_al.run.plugins import available_strategies, load_strategy, resolve_strategy_class

PLUGIN_SRC = textwrap.dedent('''
    import numpy as np

    class FirstK:
        """take the first k candidates (test plugin)"""
        name = "first_k"

        def __init__(self, offset=0):
            self.offset = offset

        def select(self, ctx, k):
            return ctx.candidate_ids[self.offset:self.offset + k]
''')


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A module `my_al_plugin` on sys.path and an installed distribution whose entry point
    registers it as `first_k` in the group entk_al.strategies."""
    (tmp_path / "my_al_plugin.py").write_text(PLUGIN_SRC)
    dist = tmp_path / "my_al_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-al-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[entk_al.strategies]\nfirst_k = my_al_plugin:FirstK\n"
                                           "broken = my_al_plugin:DoesNotExist\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_builtin_names_resolve():
    from strategies import REGISTRY

    for name, cls in REGISTRY.items():
        assert resolve_strategy_class(name) is cls


def test_three_ways_to_name_a_plugin(plugin_dir):
    by_ep = load_strategy("first_k", {"offset": 2})
    by_module = load_strategy("my_al_plugin:FirstK", {"offset": 2})
    by_file = load_strategy(f"{plugin_dir / 'my_al_plugin.py'}:FirstK", {"offset": 2})
    for s in (by_ep, by_module, by_file):
        assert type(s).__name__ == "FirstK" and s.name == "first_k" and s.offset == 2


def test_strategies_command_lists_plugins_with_descriptions(plugin_dir, capsys):
    listing = available_strategies()
    assert listing["first_k"][1] == "take the first k candidates (test plugin)"
    assert listing["broken"][1].startswith("(failed to load")
    code, out, _ = cli(capsys, "strategies")
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("first_k"))
    assert "take the first k candidates" in line and "my_al_plugin:FirstK" in line
    assert any(x.startswith("lookahead ") for x in out.splitlines())


@pytest.mark.parametrize("spec,options,needle", [
    ("nope", None, "unknown strategy"),
    ("no_such_module_xyz:Foo", None, "cannot import"),
    ("my_al_plugin:Nope", None, "has no attribute"),
    ("missing/file.py:Foo", None, "does not exist"),
    ("my_al_plugin:FirstK", {"bogus": 1}, "has no option .bogus.; its options: offset"),
    ("broken", None, "failed to load"),
])
def test_bad_specs_raise_strategy_error(plugin_dir, spec, options, needle):
    with pytest.raises(StrategyError, match=needle):
        load_strategy(spec, options)


def test_file_that_fails_to_execute(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(StrategyError, match="boom"):
        load_strategy(f"{bad}:X")
    nosel = tmp_path / "nosel.py"
    nosel.write_text("class X:\n    name = 'x'\n")
    with pytest.raises(StrategyError, match="no select"):
        load_strategy(f"{nosel}:X")


@pytest.fixture
def pool():
    p = PoolState(20)
    p.add(np.array([0, 3, 7]), np.array([1, 0, 1]), PoolState.INITIAL)
    return p


@pytest.mark.parametrize("ids,needle", [
    ([1, 2], "returned 2 ids, expected 3"),
    ([1, 2, 2], "duplicate"),
    ([1, 3, 4], "already-labeled ids, e.g. [3]"),
    ([1, 2, 20], "outside the pool"),
    ([1.0, 2.0, 4.0], "integer array"),
    ([[1, 2, 4]], "1-D"),
])
def test_validate_selection_names_the_strategy(pool, ids, needle):
    with pytest.raises(StrategyError) as exc:
        validate_selection("my_strategy", ids, 3, pool)
    assert "'my_strategy'" in str(exc.value) and needle in str(exc.value)


def test_validate_selection_keeps_valid_ids_in_order(pool):
    got = validate_selection("s", [9, 1, 4], 3, pool)
    assert got.dtype == np.int64 and got.tolist() == [9, 1, 4]


def test_loop_rejects_a_bad_plugin_selection(tmp_path):
    class Dups:
        name = "dups"

        def select(self, ctx, k):
            return np.repeat(ctx.candidate_ids[:1], k)

    cfg = RunConfig(initial=10, query=4, rounds=1, epochs=1, min_steps=2)
    with pytest.raises(StrategyError, match="'dups' returned duplicate ids"):
        ActiveLearningLoop(cfg, tmp_path, strategy=Dups()).run()


def test_example_strategy_is_lookahead_when_beta_is_zero(tmp_path, capsys):
    """examples/lookahead_density.py with beta=0 selects what the built-in look-ahead selects;
    with beta=1 it still returns valid queries through the CLI."""
    import json
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "lookahead_density.py"
    args = ["--initial", "10", "--query", "5", "--rounds", "1", "--epochs", "1", "--min-steps", "5",
            "--subset", "120", "-q"]
    runs = {}
    for name, extra in (("builtin", ["--strategy", "lookahead"]),
                        ("beta0", ["--strategy", f"{example}:LookaheadDensity", "-o", "beta=0"]),
                        ("beta1", ["--strategy", f"{example}:LookaheadDensity", "-o", "beta=1.0"])):
        code, _, err = cli(capsys, "run", "--out", tmp_path / name, *args, *extra)
        assert code == 0, err
        runs[name] = json.loads((tmp_path / name / "rounds.jsonl").read_text().splitlines()[0])
    assert runs["beta0"]["queried"] == runs["builtin"]["queried"]
    assert len(set(runs["beta1"]["queried"])) == 5
    assert runs["beta1"]["strategy_info"]["density_mean"] > 0
