"""What every command prints: one-line errors and printable result lines, defined once
(progress bars: :mod:`entk_al.progress`)."""

from __future__ import annotations

import typer

from ..text import printable


def one_line(message: object) -> str:
    """``message`` with all whitespace runs (newlines included) collapsed to single spaces, made
    printable (:func:`entk_al.text.printable`: undecodable path bytes as ``\\xNN``)."""
    return printable(" ".join(str(message).split()))


def echo_error(message: object) -> None:
    """Print ``error: <message>`` on one line on stderr (the caller picks the exit code)."""
    typer.echo(f"error: {one_line(message)}", err=True)


def echo(message: object) -> None:
    """Print ``message`` (a result line naming paths, datasets, class names) on stdout, made printable."""
    typer.echo(printable(message))
