"""Objects named on the command line: ``package.module:Name`` or ``path/to/file.py:Name``
(a user's strategy, model class or training function)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError


def load_object(spec: str, what: str = "model", error: type[Exception] = ConfigError) -> Any:
    """The object named by ``package.module:Name`` or ``path/to/file.py:Name`` (a strategy or model class).

    Args:
        spec: ``module:Name`` or ``path/file.py:Name``.
        what: what the object is, for the error messages (``"strategy"``, ``"model"``).
        error: the error class raised (:class:`StrategyError` for strategies).

    Raises:
        ConfigError: (or ``error``) a spec without ``:``, a module or file that cannot be
            imported or run, or no such attribute; the message names ``what`` and the spec.
    """
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise error(f"{what} {spec!r}: expected module:Name or path/file.py:Name")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise error(f"{what} {spec!r}: file {path} does not exist")
        mod_name = f"entk_al_user_{what.replace(' ', '_')}_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(mod_name, None)
            raise error(f"{what} {spec!r}: executing {path} failed ({type(exc).__name__}: {exc})") from None
    else:
        try:
            module = importlib.import_module(where)
        except Exception as exc:
            raise error(f"{what} {spec!r}: cannot import module {where!r} ({exc})") from None
    if not hasattr(module, attr):
        raise error(f"{what} {spec!r}: {where} has no attribute {attr!r}")
    return getattr(module, attr)
