"""Resolve a ``--strategy`` spec to a strategy object.

Built-ins and plugins are found the same way: as entry points of the group
``entk_al.strategies`` (entk-al registers its own in ``pyproject.toml``; a source checkout
without installed metadata falls back to :data:`strategies.REGISTRY`). Accepted specs, tried
in order:

1. a built-in name (an entry point into entk-al's top-level ``strategies`` package);
2. a name registered by another installed package under ``entk_al.strategies``;
3. ``package.module:ClassName``;
4. ``path/to/file.py:ClassName``.

The built-in package is imported only here, and only when a strategy is looked up, so that a
user's own ``strategies.py`` in the working directory cannot break ``import entk_al...``; if
it shadows ours, :func:`builtin_package` says so in one line.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import re
import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import StrategyError
from ..specs import load_object

ENTRY_POINT_GROUP = "entk_al.strategies"
#: The top-level package holding the built-in strategies (a sibling of ``entk_al``).
BUILTIN_PACKAGE = "strategies"
# entk_al/run/plugins.py -> the folder holding entk_al/ and strategies/ (repo or site-packages)
_BUILTIN_DIR = Path(__file__).resolve().parents[2] / BUILTIN_PACKAGE


def builtin_package() -> ModuleType:
    """entk-al's own top-level ``strategies`` package, imported on first use.

    Raises:
        StrategyError: another module named ``strategies`` (a user's ``strategies.py`` or
            ``strategies/`` in the working directory or on ``PYTHONPATH``) shadows it, or it is
            missing. A shadowing file is not executed.
    """
    module = sys.modules.get(BUILTIN_PACKAGE)
    if module is not None:
        where = getattr(module, "__file__", None)
        if getattr(module, "ENTK_AL_BUILTINS", False) or (where and _is_ours(where)):
            return module
    else:
        spec = importlib.util.find_spec(BUILTIN_PACKAGE)
        if spec is None:
            raise StrategyError(f"entk-al's built-in strategies package is missing (no module "
                                f"{BUILTIN_PACKAGE!r}); reinstall entk-al")
        where = spec.origin
        if where and _is_ours(where):
            return importlib.import_module(BUILTIN_PACKAGE)
    raise StrategyError(f"'import {BUILTIN_PACKAGE}' finds {where or 'a module without a file'}, which shadows "
                        f"entk-al's built-in strategies; rename that file or folder, or run from another directory")


def _is_ours(origin: str) -> bool:
    path = Path(origin).resolve()
    return path.parent == _BUILTIN_DIR and path.name == "__init__.py"


def _is_builtin(ep: EntryPoint) -> bool:
    module = ep.value.split(":", 1)[0].strip()
    return module == BUILTIN_PACKAGE or module.startswith(BUILTIN_PACKAGE + ".")


def _entry_points() -> dict[str, EntryPoint]:
    """name -> entry point of the group; a built-in wins over a plugin of the same name."""
    out: dict[str, EntryPoint] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in out or (_is_builtin(ep) and not _is_builtin(out[ep.name])):
            out[ep.name] = ep
    return out


def _split() -> tuple[dict[str, Any], dict[str, EntryPoint]]:
    """(built-in name -> loader, plugin name -> entry point).

    A loader is an entry point, or (without installed metadata) the class itself.
    """
    eps = _entry_points()
    builtins: dict[str, Any] = {n: ep for n, ep in eps.items() if _is_builtin(ep)}
    plugins = {n: ep for n, ep in eps.items() if n not in builtins}
    if not builtins:  # a source checkout run without `pip install -e .`
        builtins = dict(builtin_package().REGISTRY)
    return builtins, plugins


def _load_builtin(loader: Any) -> Any:
    if isinstance(loader, EntryPoint):
        builtin_package()  # refuse a shadowing module before the entry point imports it
        return loader.load()
    return loader


def available_strategies() -> dict[str, tuple[str, str]]:
    """name -> (origin, one-line description) for built-ins and installed plugins.

    Raises:
        StrategyError: a module named ``strategies`` shadows the built-ins.
    """
    builtins, plugins = _split()
    out = {name: ("built-in", describe_strategy(_load_builtin(loader))) for name, loader in builtins.items()}
    for name, ep in plugins.items():
        try:
            desc = describe_strategy(ep.load())
        except Exception as exc:  # a broken plugin must not break the listing
            desc = f"(failed to load: {exc})"
        out[name] = (f"plugin {ep.value}", desc)
    return out


def describe_strategy(cls: Any) -> str:
    """One line about a strategy class: its ``description``, else its docstring's first line."""
    desc = getattr(cls, "description", "") or (inspect.getdoc(cls) or "").split("\n")[0]
    return desc.strip()


def resolve_strategy_class(spec: str) -> Any:
    """The class (or factory) named by ``spec``.

    Raises:
        StrategyError: nothing matches, or the module/file/class cannot be loaded.
    """
    builtins, plugins = _split()
    if spec in builtins:
        return _load_builtin(builtins[spec])
    if spec in plugins:
        try:
            return plugins[spec].load()
        except Exception as exc:
            raise StrategyError(f"strategy plugin {spec!r} failed to load: {exc}") from None
    if ":" not in spec:
        names = ", ".join(sorted(set(builtins) | set(plugins)))
        raise StrategyError(f"unknown strategy {spec!r}; choose from {names}, or give module:Class "
                            f"or path/file.py:Class")
    return load_object(spec, "strategy", StrategyError)


def load_strategy(spec: str, options: dict[str, Any] | None = None) -> Any:
    """Instantiate the strategy named by ``spec`` with keyword ``options``.

    Raises:
        StrategyError: unknown spec, a bad option, or an object without ``select``.
    """
    cls = resolve_strategy_class(spec)
    if not isinstance(cls, type):
        raise StrategyError(f"strategy {spec!r} is a {type(cls).__name__}, not a class")
    options = check_options(spec, cls, options or {})
    try:
        obj = cls(**options)
    except (TypeError, ValueError) as exc:
        raise StrategyError(f"strategy {spec!r}: bad option(s) {options or {}}: {exc}") from None
    if not callable(getattr(obj, "select", None)):
        raise StrategyError(f"strategy {spec!r} has no select(ctx, k) method")
    if not getattr(obj, "name", None):
        try:
            obj.name = spec
        except AttributeError:
            pass
    return obj


def check_options(spec: str, cls: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Check ``options`` against the keyword parameters of ``cls.__init__`` (``spec`` names it in errors).

    Unknown names are refused (unless it takes ``**kwargs``). Values must have a type named in
    the parameter's annotation (``bool | str`` ...) or, without one, the default's type; ints
    given for float parameters are converted.

    Raises:
        StrategyError: naming the strategy, the option and what it accepts.
    """
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # builtins or C types: nothing to check against
        return dict(options)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(options)
    known = {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    out = {}
    for key, value in options.items():
        if key not in known:
            names = ", ".join(known) or "none"
            raise StrategyError(f"strategy {spec!r} has no option {key!r}; its options: {names}")
        allowed = _allowed_types(known[key])
        if (isinstance(value, str) and allowed is not None and "float" in allowed
                and value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity")):
            value = float(value)  # -o x=nan arrives as text; it is a number, just not a finite one
        if isinstance(value, float) and not math.isfinite(value):
            raise StrategyError(f"strategy {spec!r}: option {key!r} must be a finite number, got {value!r}")
        if value is None or allowed is None:
            out[key] = value
        elif type(value).__name__ in allowed:
            out[key] = value
        elif type(value) is int and "float" in allowed:
            out[key] = float(value)
        else:
            raise StrategyError(f"strategy {spec!r}: option {key!r} must be {' or '.join(sorted(allowed))}, "
                                f"got {value!r}")
    return out


_SCALARS = ("bool", "int", "float", "str")


def _allowed_types(param: inspect.Parameter) -> set[str] | None:
    """Scalar type names a parameter accepts, or None when nothing can be said."""
    ann = param.annotation
    text = ann if isinstance(ann, str) else getattr(ann, "__name__", "") if ann is not param.empty else ""
    if text and text != "Any":
        found = {t for t in re.findall(r"[A-Za-z_]+", str(text)) if t in _SCALARS}
        other = {t for t in re.findall(r"[A-Za-z_]+", str(text)) if t not in _SCALARS and t != "None"}
        return found if found and not other else None
    default = param.default
    if default is param.empty or default is None or type(default).__name__ not in _SCALARS:
        return None
    return {type(default).__name__}


def describe_options(cls: Any) -> list[tuple[str, str, str, str]]:
    """The keyword options of a strategy class, for ``entk-al strategies NAME``.

    Args:
        cls: a strategy class (or factory); its constructor signature is read, and the
            ``Args:`` section of its class docstring (else of ``__init__``'s).

    Returns:
        one (name, type, default, meaning) tuple of strings per option, in signature order;
        type is the annotation as written (``"?"`` without one), default ``"required"`` when
        there is none, meaning the first sentence of the option's docstring entry (``""``
        when undocumented).
    """
    from ..docstrings import args_section, first_sentence

    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return []
    docs = args_section(inspect.getdoc(cls))
    init = getattr(cls, "__init__", None)
    if init is not None and init is not object.__init__:
        docs = {**args_section(inspect.getdoc(init)), **docs}
    out = []
    for name, p in params.items():
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        ann = p.annotation
        type_text = "?" if ann is p.empty else ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))
        default = "required" if p.default is p.empty else repr(p.default)
        # Sphinx roles (:mod:`x`, :func:`y`) read as plain names on a terminal
        meaning = re.sub(r":\w+:`~?([^`]+)`", r"\1", first_sentence(docs.get(name, "")))
        out.append((name, str(type_text), default, meaning))
    return out
