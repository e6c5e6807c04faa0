"""Command-line interface: ``entk-al run | strategies | ...``.

User errors (:class:`~entk_al.errors.EntkAlError`) print one line on stderr and exit 2.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from .errors import ConfigError, EntkAlError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Look-ahead active learning with empirical neural tangent kernels (pNTK).")

#: Run-command keys a TOML config may hold that are not part of RunConfig.
TOML_CLI_ONLY = {"out", "quiet", "overwrite"}
RUN_FILES = ("config.json", "rounds.jsonl", "curve.png", "checkpoint.pt", "summary.json")


def fail(message: str) -> None:
    """Print a one-line error on stderr and exit with code 2."""
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)
    raise typer.Exit(2)


def resolve_config(config_file: Optional[Path], flags: dict[str, Any], resume_dir: Optional[Path] = None):
    """Defaults < saved config of a resumed run < TOML file < explicitly given CLI flags."""
    import json

    from .config import RunConfig, load_toml

    data: dict[str, Any] = {}
    if resume_dir is not None:
        saved = resume_dir / "config.json"
        if not saved.is_file():
            raise ConfigError(f"--resume {resume_dir}: no config.json there; is it a run directory?")
        try:
            data.update(json.loads(saved.read_text()))
        except json.JSONDecodeError:
            raise ConfigError(f"{saved} is corrupted (not JSON)") from None
    if config_file is not None:
        data.update({k: v for k, v in load_toml(config_file).items() if k not in TOML_CLI_ONLY})
    given = {k: v for k, v in flags.items() if v is not None}
    # -o key=value overrides single strategy options; it does not replace the whole table.
    if isinstance(data.get("strategy_options"), dict) and "strategy_options" in given:
        given["strategy_options"] = {**data["strategy_options"], **given["strategy_options"]}
    data.update(given)
    return RunConfig.from_dict(data, source=str(config_file or "options")).validate()


@app.command()
def run(
    strategy: Optional[str] = typer.Option(None, "--strategy", "-s", help="Strategy name, module:Class or file.py:Class (default: lookahead)."),
    dataset: Optional[str] = typer.Option(None, help="Dataset name (default: digits)."),
    model: Optional[str] = typer.Option(None, help="Model: mlp, cnn, resnet18, wide_resnet, wide_resnet2 (default: mlp)."),
    width: Optional[int] = typer.Option(None, help="Model width (hidden units / first conv channels)."),
    initial: Optional[int] = typer.Option(None, help="Size of the seeded random initial labeled set (default: 20)."),
    query: Optional[int] = typer.Option(None, help="Labels queried per round (default: 10)."),
    rounds: Optional[int] = typer.Option(None, help="Number of query rounds (default: 10)."),
    subset: Optional[int] = typer.Option(None, help="Random candidate subset of the pool per round (default: 4000)."),
    seed: Optional[int] = typer.Option(None, help="Run seed (default: 0)."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default: runs/STRATEGY-DATASET-seedSEED)."),
    retrain: Optional[str] = typer.Option(None, help="warm (continue from last round) or scratch (default: warm)."),
    loss: Optional[str] = typer.Option(None, help="mse (one-hot squared loss) or ce (default: mse)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs over the labeled set per round (default: 20)."),
    min_steps: Optional[int] = typer.Option(None, help="Minimum optimizer steps per round (default: 200)."),
    batch_size: Optional[int] = typer.Option(None, help="Training batch size (default: 64)."),
    lr: Optional[float] = typer.Option(None, help="OneCycle max learning rate (default: 0.05)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda[:N] (default: auto)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for training; 0 = 1 thread for small models, else all (default: 0)."),
    data_dir: Optional[str] = typer.Option(None, help="Folder holding dataset files."),
    download: Optional[bool] = typer.Option(None, "--download/--no-download", help="Allow torchvision downloads."),
    oracle: Optional[str] = typer.Option(None, help="simulated (ground truth) or files (you label queries/round_XXX.csv) (default: simulated)."),
    option: list[str] = typer.Option([], "--option", "-o", help="Strategy option key=value (repeatable)."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file with any of these options."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Run pool-based active learning; writes config.json, rounds.jsonl, curve.png, checkpoint.pt, summary.json."""
    from .config import parse_options
    from .loop import CHECKPOINT, ActiveLearningLoop

    flags = dict(strategy=strategy, dataset=dataset, model=model, width=width, initial=initial, query=query,
                 rounds=rounds, subset=subset, seed=seed, retrain=retrain, loss=loss, epochs=epochs,
                 min_steps=min_steps, batch_size=batch_size, lr=lr, device=device, threads=threads, data_dir=data_dir,
                 download=download, oracle=oracle)
    if option:
        flags["strategy_options"] = parse_options(option)
    if resume is not None and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; use one")
    cfg = resolve_config(config, flags, resume)
    if config is not None and resume is None:
        from .config import load_toml

        extra = load_toml(config)
        out = out or (Path(extra["out"]) if extra.get("out") else None)
        quiet = quiet or bool(extra.get("quiet", False))
        overwrite = overwrite or bool(extra.get("overwrite", False))
    out_dir = resume or out or Path("runs") / f"{Path(cfg.strategy).stem.replace(':', '-')}-{cfg.dataset.replace(':', '-').replace('/', '_')}-seed{cfg.seed}"
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file, not a directory")
    if resume is None and (out_dir / CHECKPOINT).exists():
        if not overwrite:
            raise ConfigError(f"{out_dir} already holds a run; pass --resume {out_dir} to continue it or "
                              f"--overwrite to start over")
        for name in RUN_FILES:
            (out_dir / name).unlink(missing_ok=True)
        for sub in ("queries", "labels"):  # human-in-the-loop files of the old run
            shutil.rmtree(out_dir / sub, ignore_errors=True)
    from .results import plot_curve

    loop = ActiveLearningLoop(cfg, out_dir, curve_writer=plot_curve)
    records = _run_with_progress(loop, resume is not None, quiet)
    if loop.waiting_for is not None:
        typer.echo(f"waiting for labels: fill in the 'label' column of {loop.waiting_for} (class name or "
                   f"index), then run: entk-al label {out_dir} --from {loop.waiting_for} && "
                   f"entk-al run --resume {out_dir}")
        return
    last = records[-1]
    typer.echo(f"done: {last['n_labeled']} labels, test accuracy {100 * last['test_accuracy']:.2f}% "
               f"(round 0: {100 * records[0]['test_accuracy']:.2f}%); results in {out_dir}")


def _run_with_progress(loop, resume: bool, quiet: bool) -> list[dict]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if quiet:
        return loop.run(resume=resume)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[status]}"), TimeElapsedColumn(), transient=False) as progress:
        task = progress.add_task(f"{loop.cfg.strategy} on {loop.cfg.dataset}", total=loop.cfg.rounds + 1, status="")

        def on_round(rec: dict) -> None:
            progress.update(task, completed=rec["round"] + 1,
                            status=f"{rec['n_labeled']} labels, acc {100 * rec['test_accuracy']:.1f}%")

        return loop.run(resume=resume, on_round=on_round)


@app.command("strategies")
def list_strategies() -> None:
    """List the registered query strategies with a one-line description each."""
    from .plugins import available_strategies

    items = available_strategies()
    width = max(len(n) for n in items)
    for name, (origin, desc) in sorted(items.items()):
        typer.echo(f"{name:<{width}}  {desc}" + ("" if origin == "built-in" else f"  [{origin}]"))


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point.

    User errors (:class:`EntkAlError`, click usage errors) print one line on stderr and exit
    with code 2; anything unexpected prints one line and exits with code 1. Set
    ``ENTK_AL_DEBUG=1`` to get the full traceback instead.
    """
    import os

    debug = os.environ.get("ENTK_AL_DEBUG", "") not in ("", "0")
    try:
        # Without standalone mode typer *returns* exit codes (typer.Exit, Ctrl-C -> 130).
        code = app(args=argv, standalone_mode=False)
    except EntkAlError as exc:
        if debug:
            raise
        typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        usage = _click_usage_message(exc)
        if usage is not None:
            typer.echo(f"error: {usage}", err=True)
            sys.exit(2)
        if _is_click_abort(exc):
            typer.echo("interrupted", err=True)
            sys.exit(130)
        if debug:
            raise
        typer.echo(f"error: unexpected {type(exc).__name__}: {' '.join(str(exc).split())} "
                   f"(rerun with ENTK_AL_DEBUG=1 for the traceback, and please report it)", err=True)
        sys.exit(1)
    if code == 130:
        typer.echo("interrupted", err=True)
    sys.exit(code if isinstance(code, int) else 0)


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


if __name__ == "__main__":
    # Run the importable module's app: the cli_* modules imported below register their
    # commands on entk_al.cli.app, not on this __main__ copy.
    from entk_al.cli import main as _main

    _main()
from . import cli_label  # noqa: E402,F401  (registers commands)
from . import cli_bench  # noqa: E402,F401  (registers commands)
from . import cli_fidelity  # noqa: E402,F401  (registers commands)
from .cli_approx import approx  # noqa: E402
app.command()(approx)
