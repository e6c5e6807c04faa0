"""``entk-al label RUN_DIR --from answers.csv``: record a person's answers to pending queries."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import CheckpointError, LabelError
from .output import echo


def pending_queries(run_dir: Path) -> tuple[int, list[int], list[str]]:
    """(round, pending ids, class names) of the run waiting in ``run_dir``.

    Raises:
        CheckpointError: no readable checkpoint in ``run_dir``.
        LabelError: the run is not waiting for labels.
    """
    from ..run.checkpoint import CHECKPOINT, read_checkpoint

    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"{run_dir} holds no run (no {CHECKPOINT}); start one with "
                              f"'entk-al run --oracle files --out {run_dir}'")
    ckpt = read_checkpoint(path)
    pending, classes = ckpt.get("pending"), ckpt.get("classes")
    if not pending:
        raise LabelError(f"{run_dir} is not waiting for labels (no pending queries); "
                         f"labels are asked for by 'entk-al run --oracle files'")
    if not classes:
        raise CheckpointError(f"checkpoint {path} does not list the class names; it predates --oracle files")
    return int(pending["round"]), [int(i) for i in pending["ids"]], [str(c) for c in classes]


def class_counts(labels, classes: list[str]) -> str:
    """``"cat: 3, dog: 2"``: how many labels fall in each class present.

    Args:
        labels: (k,) int64 class indices.
        classes: the dataset's class names.
    """
    counts = {classes[c]: int((labels == c).sum()) for c in sorted(set(labels.tolist()))}
    return ", ".join(f"{k}: {v}" for k, v in counts.items())


def label(
    run_dir: Annotated[Path, typer.Argument(help="Run directory waiting for labels (made by run --oracle files).")],
    answers: Annotated[Path, typer.Option(
        "--from", help="CSV with columns id and label (the filled-in queries file).")],
) -> None:
    """Record labels for the queries a run with --oracle files is waiting for.

    Every row is checked first (ids must be exactly the pending queries, labels known class
    names or indices); nothing is recorded unless all are valid.
    """
    from ..run.oracle import label_path, record_labels
    from ..runlock import run_folder_lock

    if not run_dir.is_dir():
        pending_queries(run_dir)  # says that there is no run there
    # Held while checking and recording: a run resuming meanwhile would read half the answers.
    with run_folder_lock(run_dir, create=False):
        rnd, ids, classes = pending_queries(run_dir)
        replaced = label_path(run_dir, rnd).is_file()
        labels = record_labels(run_dir, rnd, ids, classes, answers)
    echo(f"recorded {len(ids)} labels ({class_counts(labels, classes)}) in {label_path(run_dir, rnd)}"
               f"{' (replacing earlier ones)' if replaced else ''}; continue with: entk-al run --resume {run_dir}")
