"""How strategies are found: built-ins as entry points (with a fallback), imported lazily, a
shadowing ``strategies`` module named in one line, and ``entk-al strategies NAME``.

Independent references: ``pyproject.toml``'s entry-point table read with tomllib,
``strategies.REGISTRY``, and ``inspect.signature`` of each class.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from clitools import cli

from entk_al.errors import StrategyError

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_entry_points_are_the_registry():
    import importlib

    from strategies import REGISTRY

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["entk_al.strategies"]
    assert set(table) == set(REGISTRY)
    for name, target in table.items():
        module, _, attr = target.partition(":")
        assert getattr(importlib.import_module(module), attr) is REGISTRY[name]


def test_builtins_found_without_installed_metadata(monkeypatch):
    """A source checkout with no entry points installed still finds every built-in."""
    import entk_al.run.plugins as plugins
    from strategies import REGISTRY

    monkeypatch.setattr(plugins, "entry_points", lambda group: [])
    assert set(plugins.available_strategies()) == set(REGISTRY)
    for name, cls in REGISTRY.items():
        assert plugins.resolve_strategy_class(name) is cls


def test_core_modules_do_not_import_strategies_at_import_time():
    code = textwrap.dedent("""
        import importlib, pkgutil, sys
        import entk_al
        names = [m.name for m in pkgutil.walk_packages(entk_al.__path__, "entk_al.")
                 if not m.name.endswith("__main__")]
        for name in names:
            importlib.import_module(name)
        print(len(names), "strategies" in sys.modules)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    count, imported = res.stdout.split()
    assert int(count) > 20 and imported == "False"


@pytest.fixture
def shadow_dir(tmp_path):
    """A working directory holding a user's own strategies.py, which must never run."""
    (tmp_path / "strategies.py").write_text("open('EXECUTED', 'w').close()\nREGISTRY = {}\n")
    return tmp_path


def test_a_users_strategies_py_does_not_break_import(shadow_dir):
    code = "import entk_al.run.loop, entk_al.report.bench, entk_al.cli; print('ok')"
    res = subprocess.run([sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=300, cwd=shadow_dir)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
    assert not (shadow_dir / "EXECUTED").exists()


@pytest.mark.parametrize("args", [["strategies"], ["strategies", "lookahead"],
                                  ["run", "--strategy", "margin", "--rounds", "0", "-q", "--out", "r"]])
def test_shadowing_strategies_is_one_line_exit_2(shadow_dir, args):
    # `python -m` puts the working directory first on sys.path, as `python` in a notebook does.
    res = subprocess.run([sys.executable, "-m", "entk_al", *args], capture_output=True, text=True,
                         timeout=300, cwd=shadow_dir)
    assert res.returncode == 2, res.stderr
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "shadows entk-al's built-in strategies" in err and str(shadow_dir / "strategies.py") in err
    assert not (shadow_dir / "EXECUTED").exists()
    assert not (shadow_dir / "r").exists()


def test_shadowing_detected_in_process(shadow_dir, monkeypatch):
    import entk_al.run.plugins as plugins

    monkeypatch.syspath_prepend(str(shadow_dir))
    monkeypatch.delitem(sys.modules, "strategies", raising=False)
    for mod in [m for m in sys.modules if m.startswith("strategies.")]:
        monkeypatch.delitem(sys.modules, mod)
    with pytest.raises(StrategyError, match="shadows"):
        plugins.load_strategy("random")
    assert not (shadow_dir / "EXECUTED").exists()


def test_python_dash_m_entk_al_runs_the_cli():
    res = subprocess.run([sys.executable, "-m", "entk_al", "strategies"], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert res.returncode == 0 and "lookahead" in res.stdout


def test_strategies_name_shows_each_option_with_type_default_and_meaning(capsys):
    from strategies import REGISTRY

    for name, cls in REGISTRY.items():
        code, out, err = cli(capsys, "strategies", name)
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].startswith(f"{name}: ")
        params = [p for p in inspect.signature(cls).parameters.values() if p.kind == p.POSITIONAL_OR_KEYWORD]
        if not params:
            assert "no options" in out
        for p in params:
            row = next(x.split() for x in lines if x.split()[:1] == [p.name])
            assert " ".join(row[1:]).startswith(f"{p.annotation} {p.default!r}")
    _, out, _ = cli(capsys, "strategies", "lookahead")
    row = next(x for x in out.splitlines() if x.split()[:1] == ["ridge_rel"])
    assert row.split()[1:3] == ["float", "0.001"] and "ridge relative to the kernel scale" in row
    row = next(x for x in out.splitlines() if x.split()[:1] == ["ridge"])
    assert "deprecated name of ridge_rel" in row


def test_strategies_name_for_a_plugin_file(tmp_path, capsys):
    plugin = tmp_path / "mine.py"
    plugin.write_text(textwrap.dedent('''
        class Mine:
            """my strategy

            Args:
                power: exponent on the score. Second sentence is left out.
                    Still the second sentence.
                tag: a label, e.g. a name.
            """
            name = "mine"

            def __init__(self, power: float = 2.0, tag: str | None = None):
                self.power, self.tag = power, tag

            def select(self, ctx, k):
                return ctx.candidate_ids[:k]
    '''))
    code, out, err = cli(capsys, "strategies", f"{plugin}:Mine")
    assert code == 0, err
    rows = {x.split()[0]: x for x in out.splitlines()[2:]}
    assert rows["power"].split()[1:3] == ["float", "2.0"] and rows["power"].endswith("exponent on the score.")
    assert rows["tag"].split()[1:5] == ["str", "|", "None", "None"] and rows["tag"].endswith("a label, e.g. a name.")


@pytest.mark.parametrize("spec,needle", [("nope", "unknown strategy 'nope'"),
                                         ("missing/file.py:X", "does not exist")])
def test_strategies_unknown_name_is_one_line_exit_2(capsys, spec, needle):
    code, out, err = cli(capsys, "strategies", spec)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1 and not out


@pytest.mark.parametrize("text, expected", [
    ("mlmoc (default, Eq. 13), flip or emoc. More.", "mlmoc (default, Eq. 13), flip or emoc."),
    ("k-means++ seeding (Ash et al. 2020) on Δf. Then more.", "k-means++ seeding (Ash et al. 2020) on Δf."),
    ("size, e.g. 5 points. Next sentence.", "size, e.g. 5 points."),
    ("one sentence without a final period", "one sentence without a final period"),
])
def test_option_meaning_is_the_whole_first_sentence(text, expected):
    # `entk-al strategies NAME` shows this; abbreviations must not cut it short.
    from entk_al.docstrings import first_sentence

    assert first_sentence(text) == expected
