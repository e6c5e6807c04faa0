"""What every command prints on error: one line, defined once (progress bars: :mod:`entk_al.progress`)."""

from __future__ import annotations

import typer


def one_line(message: object) -> str:
    """``message`` with all whitespace runs (newlines included) collapsed to single spaces."""
    return " ".join(str(message).split())


def echo_error(message: object) -> None:
    """Print ``error: <message>`` on one line on stderr (the caller picks the exit code)."""
    typer.echo(f"error: {one_line(message)}", err=True)
