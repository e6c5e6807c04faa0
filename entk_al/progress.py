"""Progress reporting inside a run: rounds, training steps, kernels, scoring.

The loop and the round context take a reporter and open nested tasks with
``with reporter.task("training", total=steps) as advance: ... advance(1)``. Three reporters:

* :class:`NullProgress`: reports nothing (``-q``, library use; the default everywhere).
* :class:`RichProgress`: live bars on a terminal (rich).
* :class:`LineProgress`: when the output is not a terminal (a log file, a batch job), one
  plain line every ``interval_s`` seconds (default 30) naming the open tasks, printed by a
  background thread so that a long single step (a big kernel) still shows a sign of life.

:func:`make_progress` picks one from ``quiet`` and whether the stream is a terminal.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Callable, Iterator, TextIO

from .text import printable

Advance = Callable[..., None]


class NullProgress:
    """A reporter that reports nothing."""

    @contextlib.contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Advance]:
        """Open a task; yields ``advance(n=1)``."""
        yield _noop

    def note(self, text: str) -> None:
        """Report one finished step (e.g. a round's accuracy) as a line of its own."""

    def close(self) -> None:
        pass


def _noop(n: int = 1) -> None:
    pass


class LineProgress(NullProgress):
    """One line every ``interval_s`` seconds on ``stream`` while a task is open.

    Args:
        stream: where the lines go (default stderr).
        interval_s: seconds between lines.
    """

    def __init__(self, stream: TextIO | None = None, interval_s: float = 30.0):
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s = float(interval_s)
        self._open: list[list] = []  # [description, done, total]
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Advance]:
        entry = [printable(description), 0, total]
        with self._lock:
            self._open.append(entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._tick, name="entk-al-progress", daemon=True)
                self._thread.start()

        def advance(n: int = 1) -> None:
            entry[1] += n

        try:
            yield advance
        finally:
            with self._lock:
                self._open.remove(entry)

    def status_line(self) -> str:
        """The line printed now: elapsed time and each open task's ``done/total``."""
        with self._lock:
            parts = [f"{d} {n}/{t}" if t else f"{d} {n}" if n else str(d) for d, n, t in self._open]
        elapsed = int(time.monotonic() - self._start)
        return f"[{elapsed // 3600}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}] " + " > ".join(parts)

    def note(self, text: str) -> None:
        print(printable(text), file=self.stream, flush=True)

    def _tick(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self._open:
                print(self.status_line(), file=self.stream, flush=True)

    def close(self) -> None:
        self._stop.set()


def rich_bar(*, status: bool = False, transient: bool = False, stream: TextIO | None = None):
    """The one rich bar layout every command uses: description, bar, done/total, elapsed time.

    Args:
        status: add a free-text column fed by the task field ``status``.
        transient: clear the bar when it finishes.
        stream: where the bar is drawn (default stderr).

    Returns:
        a :class:`rich.progress.Progress`, to be used as a context manager or started by hand.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    if status:
        columns.append(TextColumn("{task.fields[status]}"))
    columns.append(TimeElapsedColumn())
    return Progress(*columns, transient=transient, console=Console(file=stream or sys.stderr))


class RichProgress(NullProgress):
    """Live rich bars: the outermost task stays, inner ones disappear when done.

    Args:
        stream: where the bars are drawn (default stderr).
    """

    def __init__(self, stream: TextIO | None = None):
        self._progress = rich_bar(stream=stream)
        self._depth = 0

    @contextlib.contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Advance]:
        if self._depth == 0:
            self._progress.start()
        self._depth += 1
        tid = self._progress.add_task(("  " * (self._depth - 1)) + printable(description), total=total)
        try:
            yield lambda n=1: self._progress.advance(tid, n)
        finally:
            self._depth -= 1
            if self._depth:
                self._progress.remove_task(tid)
            else:
                self._progress.stop()

    def note(self, text: str) -> None:
        self._progress.console.print(printable(text), highlight=False, markup=False)

    def close(self) -> None:
        self._progress.stop()


def make_progress(quiet: bool, stream: TextIO | None = None, interval_s: float = 30.0) -> NullProgress:
    """``NullProgress`` when quiet, ``RichProgress`` on a terminal, else ``LineProgress``.

    Args:
        quiet: no progress output at all.
        stream: where the output goes (default stderr).
        interval_s: seconds between lines of :class:`LineProgress`.
    """
    stream = stream if stream is not None else sys.stderr
    if quiet:
        return NullProgress()
    if getattr(stream, "isatty", lambda: False)():
        return RichProgress(stream)
    return LineProgress(stream, interval_s)
