"""``entk-al run``: one active-learning run into a run directory."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ConfigError
from ..run.config import RAY_DEFAULTS, RunConfig, default, learner_folder_message, lr_default_text
from .options import DataDir, Device, Download, Quiet, check_out_dir
from .output import echo

RUN_FILES = ("config.json", "rounds.jsonl", "curve.png", "checkpoint.pt", "summary.json", "labelstudio.json")
#: Options that say where and how fast a run computes, not what it computes: left out of the
#: default folder's name.
WHERE_OPTIONS = frozenset({"device", "data_dir", "download", "threads", "executor", "address", "workers",
                           "gpus_per_worker", "cpus_per_worker"})


def default_out_dir(cfg: RunConfig) -> Path:
    """The default run folder: ``runs/STRATEGY-DATASET-seedSEED``, plus ``-HASH`` when any other option
    differs from its default.

    STRATEGY is the strategy's name (``file-Class`` for ``path/file.py:Class``, ``module-Class`` for
    ``module:Class``), DATASET the dataset's (``numpy-NAME`` for ``numpy:path/NAME.npz``). HASH is
    the first 8 hex digits of the SHA-256 of the options that differ from the defaults (strategy
    options included; the full strategy and dataset specs when they name files or modules), as
    sorted JSON; options that only say where the run computes (:data:`WHERE_OPTIONS`) are left
    out. So distinct runs get distinct folders, and the same command finds its own folder again.

    Args:
        cfg: the resolved run configuration.
    """
    defaults = RunConfig().to_dict()
    identity = {k: v for k, v in cfg.to_dict().items()
                if k not in WHERE_OPTIONS | {"strategy", "dataset", "seed"} and v != defaults[k]}
    for key in ("strategy", "dataset"):
        spec = getattr(cfg, key)
        if any(c in spec for c in ":/\\"):  # the readable part shortens it
            identity[key] = spec
    name = f"{_readable(_strategy_part(cfg.strategy))}-{_readable(_dataset_part(cfg.dataset))}-seed{cfg.seed}"
    if identity:
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode("utf-8")).hexdigest()
        name += f"-{digest[:8]}"
    return Path("runs") / name


def _strategy_part(spec: str) -> str:
    if ":" not in spec:
        return Path(spec).stem
    where, _, cls = spec.rpartition(":")
    return f"{Path(where).stem if where.endswith('.py') else where}-{cls}"


def _dataset_part(spec: str) -> str:
    kind, sep, where = spec.partition(":")
    return f"{kind}-{Path(where).stem}" if sep else spec


def _readable(text: str) -> str:
    """``text`` with characters other than ASCII letters, digits, ``_``, ``.`` and ``-`` as ``_``."""
    return "".join(c if (c.isascii() and c.isalnum()) or c in "_.-" else "_" for c in text).strip(".") or "x"


def run(
    strategy: Annotated[Optional[str], typer.Option(
        "--strategy", "-s",
        help=f"Strategy name, module:Class or file.py:Class (default: {default('strategy')}).")] = None,
    dataset: Annotated[Optional[str], typer.Option(help=f"Dataset name (default: {default('dataset')}).")] = None,
    model: Annotated[Optional[str], typer.Option(
        help=f"Model: mlp, cnn, resnet18, wide_resnet, wide_resnet2, or your class as module:Class or "
             f"file.py:Class, built as Class(input_shape, num_classes) (+ width= when --width is given) "
             f"(default: {default('model')}).")] = None,
    width: Annotated[Optional[int], typer.Option(help="Model width (hidden units / first conv channels).")] = None,
    initial: Annotated[Optional[int], typer.Option(
        help=f"Size of the seeded random initial labeled set (default: {default('initial')}).")] = None,
    query: Annotated[Optional[int], typer.Option(
        help=f"Labels queried per round (default: {default('query')}).")] = None,
    rounds: Annotated[Optional[int], typer.Option(
        help=f"Number of query rounds (default: {default('rounds')}).")] = None,
    subset: Annotated[Optional[int], typer.Option(
        help=f"Random candidate subset of the pool per round (default: {default('subset')}).")] = None,
    seed: Annotated[Optional[int], typer.Option(help=f"Run seed (default: {default('seed')}).")] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Run directory (default: runs/STRATEGY-DATASET-seedSEED, plus -HASH of the other options "
             "when any differs from its default).")] = None,
    retrain: Annotated[Optional[str], typer.Option(
        help=f"warm (continue from last round) or scratch (default: {default('retrain')}).")] = None,
    loss: Annotated[Optional[str], typer.Option(
        help=f"mse (one-hot squared loss) or ce (default: {default('loss')}).")] = None,
    train: Annotated[Optional[str], typer.Option(
        "--train", help="Your training step as module:function or file.py:function, called each round as "
                        "fn(model, x, y, *, round, generator, config, device) -> the trained model "
                        "(docs/api.md); replaces the built-in SGD recipe.")] = None,
    epochs: Annotated[Optional[int], typer.Option(
        help=f"Epochs over the labeled set per round (default: {default('epochs')}).")] = None,
    min_steps: Annotated[Optional[int], typer.Option(
        help=f"Minimum optimizer steps per round (default: {default('min_steps')}).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        help=f"Training batch size (default: {default('batch_size')}).")] = None,
    lr: Annotated[Optional[float], typer.Option(
        help=f"OneCycle max learning rate (default: {lr_default_text()}; a round whose training diverges "
             f"stops the run and names the suspects).")] = None,
    device: Device = None,
    threads: Annotated[Optional[int], typer.Option(
        help=f"CPU threads for training; 0 = 1 thread for small models, else all "
             f"(default: {default('threads')}).")] = None,
    data_dir: DataDir = None,
    download: Download = None,
    oracle: Annotated[Optional[str], typer.Option(
        help=f"simulated (ground truth), files (you label queries/round_XXX.csv) or label-studio "
             f"(annotators label tasks in Label Studio; pip install entk-al\\[labelstudio], token in "
             f"$LABEL_STUDIO_API_KEY) (default: {default('oracle')}).")] = None,
    ls_url: Annotated[Optional[str], typer.Option(
        "--ls-url", help="Label Studio server for --oracle label-studio, e.g. http://localhost:8080.")] = None,
    ls_project: Annotated[Optional[str], typer.Option(
        "--ls-project", help="Label Studio project: its ID, or a title (created if not found).")] = None,
    executor: Annotated[Optional[str], typer.Option(
        help=f"Where pool scans run: local or ray (pip install entk-al\\[ray]) "
             f"(default: {default('executor')}).")] = None,
    address: Annotated[Optional[str], typer.Option(
        help="Ray cluster: auto or HOST:PORT (default: start a private local cluster).")] = None,
    workers: Annotated[Optional[int], typer.Option(
        help=f"Ray shard actors (default: {RAY_DEFAULTS['workers']:g}).")] = None,
    gpus_per_worker: Annotated[Optional[float], typer.Option(
        help=f"GPUs per Ray actor (default: {RAY_DEFAULTS['gpus_per_worker']:g}).")] = None,
    cpus_per_worker: Annotated[Optional[float], typer.Option(
        help=f"CPUs per Ray actor, also its torch threads (default: {RAY_DEFAULTS['cpus_per_worker']:g}); "
             f"under --executor local, the torch threads of the pool scans (default: the process's).")] = None,
    stop: Annotated[Optional[str], typer.Option(
        "--stop",
        help="Stop rules NAME[:THRESHOLD[:WINDOW]], comma-separated: kappa (stabilizing predictions, "
             "default 0.99:3) and change (predicted effect of the next batch, default 0.005:2); "
             "none for none.")] = None,
    stop_set: Annotated[Optional[int], typer.Option(
        help=f"Size of the fixed unlabeled stop set the rules use (default: {default('stop_set')}).")] = None,
    stop_action: Annotated[Optional[str], typer.Option(
        help=f"stop (end the run when a rule fires) or log (only log them) "
             f"(default: {default('stop_action')}).")] = None,
    option: Annotated[list[str], typer.Option(
        "--option", "-o",
        help="Strategy option key=value (repeatable).")] = [],  # noqa: B006  (typer hands each call a new list)
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML file with any of these options.")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this directory.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run in --out.")] = False,
    quiet: Quiet = False,
) -> None:
    """Run pool-based active learning; writes config.json, rounds.jsonl, curve.png, checkpoint.pt, summary.json."""
    from ..run.config import parse_options, resolve_config

    flags = dict(strategy=strategy, dataset=dataset, model=model, width=width, initial=initial, query=query,
                 rounds=rounds, subset=subset, seed=seed, retrain=retrain, loss=loss, train=train, epochs=epochs,
                 min_steps=min_steps, batch_size=batch_size, lr=lr, device=device, threads=threads, data_dir=data_dir,
                 download=download, oracle=oracle, ls_url=ls_url, ls_project=ls_project, executor=executor,
                 address=address, workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                 stop=stop, stop_set=stop_set, stop_action=stop_action)
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
    out_dir = resume or out or default_out_dir(cfg)
    check_out_dir(out_dir, "--resume" if resume is not None else "--out")
    from ..runlock import run_folder_lock

    # Held from before the check of what the folder holds until the run stops: a second run
    # on this folder stops in one line instead of overwriting this one's results.
    with run_folder_lock(out_dir, create=resume is None):
        _run_locked(cfg, out_dir, resume is not None, overwrite, quiet)


def _written_by_learner(out_dir: Path) -> bool:
    try:
        return "learner" in json.loads((out_dir / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def _run_locked(cfg, out_dir: Path, resume: bool, overwrite: bool, quiet: bool) -> None:
    from ..run.checkpoint import CHECKPOINT
    from ..run.loop import ActiveLearningLoop

    if not resume and (out_dir / CHECKPOINT).exists():
        if not overwrite and _written_by_learner(out_dir):
            raise ConfigError(learner_folder_message(out_dir))
        if not overwrite:
            raise ConfigError(f"{out_dir} already holds a run; pass --resume {out_dir} to continue it or "
                              f"--overwrite to start over")
        for name in RUN_FILES:
            (out_dir / name).unlink(missing_ok=True)
        for sub in ("queries", "labels"):  # human-in-the-loop files of the old run
            shutil.rmtree(out_dir / sub, ignore_errors=True)
    from ..progress import make_progress
    from ..report.curve import accuracy_text, plot_curve

    progress = make_progress(quiet)  # rich bars on a terminal, a line every 30 s otherwise, nothing with -q
    loop = ActiveLearningLoop(cfg, out_dir, curve_writer=plot_curve, progress=progress)
    try:
        records = loop.run(resume=resume, on_round=lambda rec: progress.note(
            f"round {rec['round']}: {rec['n_labeled']} labels, {accuracy_text(rec['test_accuracy'])}"))
    finally:
        progress.close()
    if loop.waiting_note is not None:
        typer.echo(f"waiting for labels: {loop.waiting_note}; annotate them in Label Studio, then run: "
                   f"entk-al run --resume {out_dir}")
        return
    if loop.waiting_for is not None:
        echo(f"waiting for labels: fill in the 'label' column of {loop.waiting_for} (class name or "
                   f"index), then run: entk-al label {out_dir} --from {loop.waiting_for} && "
                   f"entk-al run --resume {out_dir}")
        return
    last = records[-1]
    stopped = loop.stopper.stopped if loop.stopper is not None else None
    if stopped is not None:
        echo(f"stopped at round {stopped['round']} ({stopped['n_labeled']} labels) by the {stopped['rule']} "
             f"rule: {stopped['reason'].split(': ', 1)[1]}")
    if last["test_accuracy"] is None:
        echo(f"done: {last['n_labeled']} labels ({accuracy_text(None)}: test accuracy not measured); "
                   f"results in {out_dir}")
        return
    echo(f"done: {last['n_labeled']} labels, test accuracy {100 * last['test_accuracy']:.2f}% "
               f"(round 0: {100 * records[0]['test_accuracy']:.2f}%); results in {out_dir}")
