"""``entk-al run``: one active-learning run into a run directory."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import typer

from ..config import default
from ..errors import ConfigError
from .options import DataDir, Device, Download, Quiet, check_out_dir

RUN_FILES = ("config.json", "rounds.jsonl", "curve.png", "checkpoint.pt", "summary.json")


def run(
    strategy: Optional[str] = typer.Option(
        None, "--strategy", "-s",
        help=f"Strategy name, module:Class or file.py:Class (default: {default('strategy')})."),
    dataset: Optional[str] = typer.Option(None, help=f"Dataset name (default: {default('dataset')})."),
    model: Optional[str] = typer.Option(
        None, help=f"Model: mlp, cnn, resnet18, wide_resnet, wide_resnet2 (default: {default('model')})."),
    width: Optional[int] = typer.Option(None, help="Model width (hidden units / first conv channels)."),
    initial: Optional[int] = typer.Option(
        None, help=f"Size of the seeded random initial labeled set (default: {default('initial')})."),
    query: Optional[int] = typer.Option(None, help=f"Labels queried per round (default: {default('query')})."),
    rounds: Optional[int] = typer.Option(None, help=f"Number of query rounds (default: {default('rounds')})."),
    subset: Optional[int] = typer.Option(
        None, help=f"Random candidate subset of the pool per round (default: {default('subset')})."),
    seed: Optional[int] = typer.Option(None, help=f"Run seed (default: {default('seed')})."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default: runs/STRATEGY-DATASET-seedSEED)."),
    retrain: Optional[str] = typer.Option(
        None, help=f"warm (continue from last round) or scratch (default: {default('retrain')})."),
    loss: Optional[str] = typer.Option(None, help=f"mse (one-hot squared loss) or ce (default: {default('loss')})."),
    epochs: Optional[int] = typer.Option(
        None, help=f"Epochs over the labeled set per round (default: {default('epochs')})."),
    min_steps: Optional[int] = typer.Option(
        None, help=f"Minimum optimizer steps per round (default: {default('min_steps')})."),
    batch_size: Optional[int] = typer.Option(None, help=f"Training batch size (default: {default('batch_size')})."),
    lr: Optional[float] = typer.Option(None, help=f"OneCycle max learning rate (default: {default('lr')})."),
    device: Device = None,
    threads: Optional[int] = typer.Option(
        None, help=f"CPU threads for training; 0 = 1 thread for small models, else all "
                   f"(default: {default('threads')})."),
    data_dir: DataDir = None,
    download: Download = None,
    oracle: Optional[str] = typer.Option(
        None, help=f"simulated (ground truth) or files (you label queries/round_XXX.csv) "
                   f"(default: {default('oracle')})."),
    executor: Optional[str] = typer.Option(
        None, help=f"Where pool scans run: local or ray (pip install entk-al\\[ray]) "
                   f"(default: {default('executor')})."),
    address: Optional[str] = typer.Option(
        None, help="Ray cluster: auto or HOST:PORT (default: start a private local cluster)."),
    workers: Optional[int] = typer.Option(None, help=f"Ray shard actors (default: {default('workers')})."),
    gpus_per_worker: Optional[float] = typer.Option(
        None, help=f"GPUs per Ray actor (default: {default('gpus_per_worker')})."),
    cpus_per_worker: Optional[float] = typer.Option(
        None, help=f"CPUs per Ray actor (default: {default('cpus_per_worker')})."),
    stop: Optional[str] = typer.Option(
        None, "--stop",
        help="Stop rules NAME[:THRESHOLD[:WINDOW]], comma-separated: kappa (stabilizing predictions, "
             "default 0.99:3) and change (predicted effect of the next batch, default 0.005:2); none for none."),
    stop_set: Optional[int] = typer.Option(
        None, help=f"Size of the fixed unlabeled stop set the rules use (default: {default('stop_set')})."),
    stop_action: Optional[str] = typer.Option(
        None, help=f"stop (end the run when a rule fires) or log (only log them) (default: {default('stop_action')})."),
    option: list[str] = typer.Option([], "--option", "-o", help="Strategy option key=value (repeatable)."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file with any of these options."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run in --out."),
    quiet: Quiet = False,
) -> None:
    """Run pool-based active learning; writes config.json, rounds.jsonl, curve.png, checkpoint.pt, summary.json."""
    from ..checkpoint import CHECKPOINT
    from ..config import parse_options, resolve_config
    from ..loop import ActiveLearningLoop

    flags = dict(strategy=strategy, dataset=dataset, model=model, width=width, initial=initial, query=query,
                 rounds=rounds, subset=subset, seed=seed, retrain=retrain, loss=loss, epochs=epochs,
                 min_steps=min_steps, batch_size=batch_size, lr=lr, device=device, threads=threads, data_dir=data_dir,
                 download=download, oracle=oracle, executor=executor, address=address, workers=workers,
                 gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker, stop=stop, stop_set=stop_set,
                 stop_action=stop_action)
    if option:
        flags["strategy_options"] = parse_options(option)
    if resume is not None and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; use one")
    if resume is not None and out is not None and out.resolve() != resume.resolve():
        raise ConfigError(f"--resume {resume} continues the run where it is; --out {out} cannot move it "
                          f"(leave --out out, or copy the folder first)")
    cfg, extra = resolve_config(config, flags, resume)
    if config is not None and resume is None:
        out = out or (Path(extra["out"]) if extra.get("out") else None)
        quiet = quiet or bool(extra.get("quiet", False))
        overwrite = overwrite or bool(extra.get("overwrite", False))
    out_dir = resume or out or Path("runs") / (f"{Path(cfg.strategy).stem.replace(':', '-')}-"
                                               f"{cfg.dataset.replace(':', '-').replace('/', '_')}-seed{cfg.seed}")
    check_out_dir(out_dir, "--resume" if resume is not None else "--out")
    if resume is None and (out_dir / CHECKPOINT).exists():
        if not overwrite:
            raise ConfigError(f"{out_dir} already holds a run; pass --resume {out_dir} to continue it or "
                              f"--overwrite to start over")
        for name in RUN_FILES:
            (out_dir / name).unlink(missing_ok=True)
        for sub in ("queries", "labels"):  # human-in-the-loop files of the old run
            shutil.rmtree(out_dir / sub, ignore_errors=True)
    from ..progress import make_progress
    from ..results import plot_curve

    progress = make_progress(quiet)  # rich bars on a terminal, a line every 30 s otherwise, nothing with -q
    loop = ActiveLearningLoop(cfg, out_dir, curve_writer=plot_curve, progress=progress)
    try:
        records = loop.run(resume=resume is not None, on_round=lambda rec: progress.note(
            f"round {rec['round']}: {rec['n_labeled']} labels, test accuracy {100 * rec['test_accuracy']:.1f}%"))
    finally:
        progress.close()
    if loop.waiting_for is not None:
        typer.echo(f"waiting for labels: fill in the 'label' column of {loop.waiting_for} (class name or "
                   f"index), then run: entk-al label {out_dir} --from {loop.waiting_for} && "
                   f"entk-al run --resume {out_dir}")
        return
    last = records[-1]
    stopped = loop.stopper.stopped if loop.stopper is not None else None
    if stopped is not None:
        typer.echo(f"stopped at round {stopped['round']} ({stopped['n_labeled']} labels) by the {stopped['rule']} "
                   f"rule: {stopped['reason'].split(': ', 1)[1]}")
    typer.echo(f"done: {last['n_labeled']} labels, test accuracy {100 * last['test_accuracy']:.2f}% "
               f"(round 0: {100 * records[0]['test_accuracy']:.2f}%); results in {out_dir}")

