"""Every public argument of every public function and class in ``entk_al`` and ``strategies``
is mentioned in its docstring (as baal's tests/documentation_test.py does).

A parameter counts as documented when its name appears as a word in the docstring of the
function (for a class: the class docstring or ``__init__``'s), or, for a typer command, when
its option carries a ``help`` text. Reference: ``inspect.signature`` of each object.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import typing

import pytest

import entk_al
import strategies

SKIP_PARAMS = {"self", "cls"}


def _modules():
    names = ["strategies"]
    for pkg in (entk_al, strategies):
        names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
                  if not m.name.endswith("__main__") and not any(p.startswith("_") for p in m.name.split("."))]
    return [importlib.import_module(n) for n in sorted(set(names))]


def _has_help(param: inspect.Parameter, hints: dict) -> bool:
    """True for a typer command parameter whose option or argument carries help text."""
    candidates = [param.default]
    hint = hints.get(param.name)
    if hint is not None and typing.get_origin(hint) is typing.Annotated:
        candidates += list(hint.__metadata__)
    return any(type(c).__module__.startswith("typer") and getattr(c, "help", None) for c in candidates)


def _undocumented(func, doc: str) -> list[str]:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return []
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception:
        hints = {}
    missing = []
    for p in sig.parameters.values():
        if p.name in SKIP_PARAMS or p.name.startswith("_") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if not re.search(rf"\b{re.escape(p.name)}\b", doc) and not _has_help(p, hints):
            missing.append(p.name)
    return missing


def _public_objects():
    """(qualified name, callable, docstring to search) for every public function and class."""
    for mod in _modules():
        for name, obj in vars(mod).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            qual = f"{mod.__name__}.{name}"
            if inspect.isfunction(obj):
                yield qual, obj, inspect.getdoc(obj) or ""
            elif inspect.isclass(obj):
                init = obj.__dict__.get("__init__")
                class_doc = (inspect.getdoc(obj) or "") + "\n" + ((init and inspect.getdoc(init)) or "")
                if init is not None or "__dataclass_fields__" in obj.__dict__:
                    yield qual, obj, class_doc


FOUND = {qual: _undocumented(obj, doc) for qual, obj, doc in _public_objects()}


def test_objects_were_found():
    assert len(FOUND) > 80 and "entk_al.run.plugins.load_strategy" in FOUND


@pytest.mark.parametrize("qual", sorted(FOUND))
def test_public_arguments_are_documented(qual):
    missing = FOUND[qual]
    assert not missing, f"{qual}: argument(s) {', '.join(sorted(missing))} not in the docstring"
