"""CLI commands ``entk-al bench`` (run a protocol grid) and ``entk-al plot`` (summarize it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import DataDir, Device, Download, Quiet, check_out_dir
from .output import echo


def bench(
    protocol: Annotated[Path, typer.Option("--protocol", "-p", help="Protocol TOML file (see protocols/).")],
    out: Annotated[Optional[Path], typer.Option(help="Grid folder (default: runs/<protocol name>).")] = None,
    device: Device = None,
    data_dir: DataDir = None,
    download: Download = None,
    plot: Annotated[bool, typer.Option(
        "--plot/--no-plot",
        help="Write curves.png, summary.csv, penalty.png, paired.csv and paired.png at the end.")] = True,
    quiet: Quiet = False,
) -> None:
    """Run strategies × seeds × query sizes; finished runs are skipped, partial ones resumed."""
    from ..report.bench import BenchRunner, Protocol

    proto = Protocol.from_file(protocol)
    out_dir = out or Path("runs") / proto.name
    check_out_dir(out_dir)
    overrides = {k: v for k, v in dict(device=device, data_dir=data_dir, download=download).items() if v is not None}
    runner = BenchRunner(proto, out_dir, overrides)
    states = runner.prepare()
    n_done = sum(s == "done" for s in states.values())
    echo(f"{proto.name}: {len(runner.specs)} runs into {out_dir} "
               f"({n_done} finished, {sum(s == 'partial' for s in states.values())} to resume)")
    _run_with_progress(runner, quiet)
    if plot:
        from ..report.plot import plot_runs

        written = plot_runs(out_dir)
        echo("wrote " + ", ".join(str(p) for p in written))


def _run_with_progress(runner, quiet: bool) -> None:
    """Run the grid with one outer task over all rounds; rich bars on a terminal, a status line
    every 30 s otherwise, nothing with ``quiet``."""
    from ..progress import make_progress
    from ..report.curve import accuracy_text

    progress = make_progress(quiet)
    rounds_total = sum(s.config.rounds + 1 for s in runner.specs)
    try:
        with progress.task("grid (rounds)", total=rounds_total) as advance:
            def on_start(spec, state) -> None:
                done_rounds = _completed_rounds(runner.out_dir / spec.name) if state != "new" else 0
                if state == "done":
                    done_rounds = spec.config.rounds + 1
                advance(done_rounds)
                if state != "done":
                    progress.note(f"{spec.name}: {'resuming' if state == 'partial' else 'starting'}")

            def on_round(spec, rec) -> None:
                advance(1)
                progress.note(f"{spec.name} round {rec['round']}: {rec['n_labeled']} labels, "
                              f"{accuracy_text(rec['test_accuracy'])}")

            runner.run(on_start=on_start, on_round=on_round, progress=progress)
    finally:
        progress.close()


def _completed_rounds(run_dir: Path) -> int:
    from ..fileio import read_jsonl

    path = run_dir / "rounds.jsonl"
    return len(read_jsonl(path)) if path.is_file() else 0


def plot(
    runs_dir: Annotated[Path, typer.Argument(help="Grid folder written by `entk-al bench`.")],
    out: Annotated[Optional[Path], typer.Option(help="Where to write the figures and CSV (default: RUNS_DIR).")] = None,
    reference: Annotated[Optional[list[str]], typer.Option(
        "--reference", help="Reference strategy of paired.csv/paired.png and of the panels and difference "
                            "views (repeatable; default: random and margin where present).")] = None,
    view: Annotated[list[str], typer.Option(
        "--view", help="Learning curves (repeatable): overlay (curves.png, every strategy in one "
                       "panel), panels (curves_panels.png, one panel per strategy, the reference in "
                       "gray) or difference (curves_difference.png, accuracy minus the reference's, "
                       "paired over seeds).")] = ["overlay"],  # noqa: B006  (typer hands each call a new list)
) -> None:
    """Write learning curves (mean ± 95% CI), summary.csv (AUBC), penalty.png (pairwise wins) and
    paired.csv / paired.png (paired AUBC differences against the references)."""
    from ..report.plot import plot_runs

    check_out_dir(out)
    written = plot_runs(runs_dir, out, references=reference or None, views=view)
    echo("wrote " + ", ".join(str(p) for p in written))
