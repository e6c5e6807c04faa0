"""Command-line interface: ``entk-al run | strategies | label | label-studio | fidelity | bench | plot | approx``.

This module owns ``app`` and registers the plain command functions of the leaf modules
(:mod:`.run`, :mod:`.strategies`, ...) and the sub-app of :mod:`.labelstudio`, which never import
it; options several commands share live in :mod:`.options`, the one-line error in :mod:`.output`;
progress bars come from :mod:`entk_al.progress`.
User errors (:class:`~entk_al.errors.EntkAlError`) print one line on stderr and exit 2.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from ..errors import EntkAlError
from ..fileio import storage_error
from . import approx, bench, fidelity, label, labelstudio, run, strategies
from .output import echo_error, one_line

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Look-ahead active learning with empirical neural tangent kernels (pNTK).")
app.command("run")(run.run)
app.command("strategies")(strategies.strategies)
app.command("label")(label.label)
app.add_typer(labelstudio.app, name="label-studio")
app.command("fidelity")(fidelity.fidelity)
app.command("bench")(bench.bench)
app.command("plot")(bench.plot)
app.command("approx")(approx.approx)


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point; ``argv`` defaults to ``sys.argv[1:]``.

    User errors (:class:`EntkAlError`, click usage errors, and an OSError saying the disk is
    full or a folder is read-only) print one line on stderr and exit with code 2; anything
    unexpected prints one line and exits with code 1. Set
    ``ENTK_AL_DEBUG=1`` to get the full traceback instead.
    """
    import os
    import warnings

    debug = os.environ.get("ENTK_AL_DEBUG", "") not in ("", "0")
    if not debug:  # warnings (deprecated options) as one line each, like the errors
        warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {one_line(message)}\n"
    restore_sigterm = _sigterm_as_interrupt()
    try:
        # Without standalone mode typer *returns* exit codes (typer.Exit, Ctrl-C -> 130).
        code = app(args=argv, standalone_mode=False)
    except EntkAlError as exc:
        if debug:
            raise
        echo_error(exc)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        usage = _click_usage_message(exc)
        if usage is not None:
            echo_error(usage)
            sys.exit(2)
        storage = storage_error(exc)  # a full disk or a read-only folder met outside fileio's writers
        if storage is not None and not debug:
            echo_error(storage)
            sys.exit(2)
        if _is_click_abort(exc):
            typer.echo("interrupted", err=True)
            sys.exit(130)
        if debug:
            raise
        echo_error(f"unexpected {type(exc).__name__}: {exc} "
                   f"(rerun with ENTK_AL_DEBUG=1 for the traceback, and please report it)")
        sys.exit(1)
    finally:
        restore_sigterm()
    if code == 130:
        typer.echo("interrupted", err=True)
    sys.exit(code if isinstance(code, int) else 0)


def _sigterm_as_interrupt():
    """Make SIGTERM raise KeyboardInterrupt (the clean "interrupted" exit of Ctrl-C, leaving the
    last checkpoint to resume from); returns a function restoring the previous handler."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signal handlers can only be set from the main thread

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _click_modules() -> list:
    """click's exception modules: the installed click and typer's vendored copy (typer >= 0.16)."""
    import importlib

    mods = []
    for name in ("click.exceptions", "typer._click.exceptions"):
        try:
            mods.append(importlib.import_module(name))
        except ImportError:
            pass
    return mods


def _click_usage_message(exc: Exception) -> Optional[str]:
    for mod in _click_modules():
        cls = getattr(mod, "ClickException", None)
        if cls is not None and isinstance(exc, cls):
            return " ".join(exc.format_message().split())
    return None


def _is_click_abort(exc: Exception) -> bool:
    return any(isinstance(exc, cls) for mod in _click_modules()
               if (cls := getattr(mod, "Abort", None)) is not None)

