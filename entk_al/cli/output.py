"""What every command prints: the one-line error and the progress bar, defined once."""

from __future__ import annotations

import typer


def one_line(message: object) -> str:
    """``message`` with all whitespace runs (newlines included) collapsed to single spaces."""
    return " ".join(str(message).split())


def echo_error(message: object) -> None:
    """Print ``error: <message>`` on one line on stderr (the caller picks the exit code)."""
    typer.echo(f"error: {one_line(message)}", err=True)


def progress_bar(*, status: bool = True, remaining: bool = False, transient: bool = False):
    """The rich progress bar the commands share: description, bar, done/total, elapsed time.

    Args:
        status: add a free-text column fed by the task field ``status``.
        remaining: add an estimated-time-remaining column.
        transient: clear the bar when it finishes.

    Returns:
        a :class:`rich.progress.Progress`, to be used as a context manager.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    if status:
        columns.append(TextColumn("{task.fields[status]}"))
    columns.append(TimeElapsedColumn())
    if remaining:
        columns.append(TimeRemainingColumn())
    return Progress(*columns, transient=transient)
