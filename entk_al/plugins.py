"""Resolve a ``--strategy`` spec to a strategy object.

Accepted specs, tried in order:
1. a built-in name from :data:`strategies.REGISTRY`;
2. a name registered by an installed package under the entry-point group
   ``entk_al.strategies``;
3. ``package.module:ClassName``;
4. ``path/to/file.py:ClassName``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from strategies import REGISTRY

from .errors import StrategyError

ENTRY_POINT_GROUP = "entk_al.strategies"


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_strategies() -> dict[str, tuple[str, str]]:
    """name -> (origin, one-line description) for built-ins and installed plugins."""
    out = {name: ("built-in", _describe(cls)) for name, cls in REGISTRY.items()}
    for name, ep in _entry_points().items():
        if name in out:
            continue
        try:
            desc = _describe(ep.load())
        except Exception as exc:  # a broken plugin must not break the listing
            desc = f"(failed to load: {exc})"
        out[name] = (f"plugin {ep.value}", desc)
    return out


def _describe(cls: Any) -> str:
    desc = getattr(cls, "description", "") or (inspect.getdoc(cls) or "").split("\n")[0]
    return desc.strip()


def resolve_strategy_class(spec: str) -> Any:
    """The class (or factory) named by ``spec``.

    Raises:
        StrategyError: nothing matches, or the module/file/class cannot be loaded.
    """
    if spec in REGISTRY:
        return REGISTRY[spec]
    eps = _entry_points()
    if spec in eps:
        try:
            return eps[spec].load()
        except Exception as exc:
            raise StrategyError(f"strategy plugin {spec!r} failed to load: {exc}") from None
    if ":" not in spec:
        names = ", ".join(sorted(set(REGISTRY) | set(eps)))
        raise StrategyError(f"unknown strategy {spec!r}; choose from {names}, or give module:Class "
                            f"or path/file.py:Class")
    where, _, attr = spec.rpartition(":")
    if where.endswith(".py"):
        module = _load_file(Path(where), spec)
    else:
        try:
            module = importlib.import_module(where)
        except Exception as exc:
            raise StrategyError(f"strategy {spec!r}: cannot import module {where!r} ({exc})") from None
    if not hasattr(module, attr):
        raise StrategyError(f"strategy {spec!r}: {where} has no attribute {attr!r}")
    return getattr(module, attr)


def _load_file(path: Path, spec: str):
    if not path.is_file():
        raise StrategyError(f"strategy {spec!r}: file {path} does not exist")
    mod_name = f"entk_al_user_strategy_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(mod_name, None)
        raise StrategyError(f"strategy {spec!r}: executing {path} failed ({type(exc).__name__}: {exc})") from None
    return module


def load_strategy(spec: str, options: dict[str, Any] | None = None) -> Any:
    """Instantiate the strategy named by ``spec`` with keyword ``options``.

    Raises:
        StrategyError: unknown spec, a bad option, or an object without ``select``.
    """
    cls = resolve_strategy_class(spec)
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
    """Check ``options`` against the keyword parameters of ``cls.__init__``.

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
        import re

        found = {t for t in re.findall(r"[A-Za-z_]+", str(text)) if t in _SCALARS}
        other = {t for t in re.findall(r"[A-Za-z_]+", str(text)) if t not in _SCALARS and t != "None"}
        return found if found and not other else None
    default = param.default
    if default is param.empty or default is None or type(default).__name__ not in _SCALARS:
        return None
    return {type(default).__name__}


def load_object(spec: str, what: str = "model") -> Any:
    """The object named by ``package.module:Name`` or ``path/to/file.py:Name`` (e.g. a model class).

    Raises:
        ConfigError: a spec without ``:``, a module or file that cannot be imported or run, or
            no such attribute; the message names ``what`` and the spec.
    """
    from .errors import ConfigError

    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise ConfigError(f"{what} {spec!r}: expected module:Name or path/file.py:Name")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise ConfigError(f"{what} {spec!r}: file {path} does not exist")
        mod_name = f"entk_al_user_{what}_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(mod_name, None)
            raise ConfigError(f"{what} {spec!r}: executing {path} failed ({type(exc).__name__}: {exc})") from None
    else:
        try:
            module = importlib.import_module(where)
        except Exception as exc:
            raise ConfigError(f"{what} {spec!r}: cannot import module {where!r} ({exc})") from None
    if not hasattr(module, attr):
        raise ConfigError(f"{what} {spec!r}: {where} has no attribute {attr!r}")
    return getattr(module, attr)
