"""Oracles: who answers the queries.

* :class:`SimulatedOracle` (``--oracle simulated``, the default) answers with the train
  split's ground-truth labels, for benchmarks.
* :class:`FileOracle` (``--oracle files``) never looks at the ground truth. The loop asks it
  to write ``queries/round_XXX.csv`` (``queries/initial.csv`` for the seeded initial set)
  and stops; a person fills in the ``label`` column and records it with
  ``entk-al label RUN_DIR --from FILE.csv``, which validates every row and writes
  ``labels/round_XXX.csv`` atomically; ``entk-al run --resume RUN_DIR`` reads it and continues.

CSV layout (UTF-8, header row): ``id,source,guess,label``. ``id`` is the global pool id,
``source`` where the item came from (file path or original index), ``guess`` the current
model's predicted class (empty for the initial set), ``label`` a class name or index.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import ConfigError, LabelError
from .fileio import write_text_atomic
from .pool import PoolState

QUERY_DIR = "queries"
LABEL_DIR = "labels"
INITIAL_ROUND = PoolState.INITIAL  # the seeded initial set, queried before round 0
COLUMNS = ("id", "source", "guess", "label")


class SimulatedOracle:
    """Answers queries with the ground-truth train labels (simulation).

    Args:
        y_train: (N,) int64 tensor of pool labels; -1 marks an unknown label.

    Raises (on call):
        ConfigError: a queried item has no known label (use ``--oracle files``).
    """

    deferred = False

    def __init__(self, y_train):
        self._y = np.asarray(y_train.cpu().numpy() if hasattr(y_train, "cpu") else y_train, dtype=np.int64)

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        out = self._y[np.asarray(ids, dtype=np.int64)]
        if (out < 0).any():
            raise ConfigError("the dataset has no labels for some pool items (label -1); the simulated oracle "
                              "cannot answer; use --oracle files to label them yourself")
        return out


class FileOracle:
    """Human-in-the-loop oracle: queries go to CSV files, answers come back via ``entk-al label``.

    It cannot answer mid-selection (sequential look-ahead asks for labels one at a time):
    calling it raises :class:`ConfigError`.
    """

    deferred = True

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        raise ConfigError("this strategy asks for labels during selection (sequential mode), which "
                          "--oracle files cannot answer; use batch mode or --oracle simulated")


def round_file(round_idx: int) -> str:
    """File name for the queries (and recorded labels) of ``round_idx``."""
    return "initial.csv" if round_idx == INITIAL_ROUND else f"round_{round_idx:03d}.csv"


def query_path(run_dir: str | Path, round_idx: int) -> Path:
    """``run_dir/queries/<file>`` holding the queries of round ``round_idx`` (see :func:`round_file`)."""
    return Path(run_dir) / QUERY_DIR / round_file(round_idx)


def label_path(run_dir: str | Path, round_idx: int) -> Path:
    """``run_dir/labels/<file>`` holding the recorded labels of round ``round_idx``."""
    return Path(run_dir) / LABEL_DIR / round_file(round_idx)


def _csv_text(rows: Sequence[Sequence[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    return buf.getvalue()


def write_queries(run_dir: str | Path, round_idx: int, ids: np.ndarray, sources: Sequence[str],
                  guesses: Sequence[str] | None) -> Path:
    """Write the query CSV of round ``round_idx`` into ``run_dir`` atomically; ``label`` is left empty.

    Args:
        run_dir: the run directory.
        round_idx: the round (:data:`INITIAL_ROUND` for the seeded initial set).
        ids: (k,) int64 global pool ids queried.
        sources: where each item comes from (file name or row), one per id.
        guesses: the model's predicted class name per id, or None (initial set).

    Returns:
        the path written (:func:`query_path`).
    """
    guesses = guesses if guesses is not None else [""] * len(ids)
    rows = [(int(i), s, g, "") for i, s, g in zip(ids, sources, guesses)]
    path = query_path(run_dir, round_idx)
    write_text_atomic(path, _csv_text(rows))
    return path


def parse_answers(path: str | Path, pending_ids: Sequence[int], classes: Sequence[str],
                  round_idx: int) -> np.ndarray:
    """Read a filled-in answers CSV and return labels aligned with ``pending_ids``.

    Columns ``id`` and ``label`` are required (others are ignored); ``label`` is a class
    name or a class index in [0, O). Every pending id must get exactly one label.

    Args:
        path: the answers CSV.
        pending_ids: the ids queried in round ``round_idx`` and still waiting for labels.
        classes: the dataset's class names (index = class id).
        round_idx: the round the answers belong to (named in errors).

    Returns:
        (len(pending_ids),) int64 class indices.

    Raises:
        LabelError: missing/unreadable file, malformed CSV, an id not queried in this round,
            an id given twice, a missing answer, or an unknown class; the message names the
            line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise LabelError(f"answers file {path} does not exist") from None
    except IsADirectoryError:
        raise LabelError(f"answers file {path} is a directory; give the CSV file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"answers file {path} is unreadable ({type(exc).__name__}); save it as UTF-8 CSV") from None
    where = f"round {round_idx}" if round_idx != INITIAL_ROUND else "the initial set"
    try:
        reader = csv.DictReader(io.StringIO(text))
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        if "id" not in header or "label" not in header:
            raise LabelError(f"{path}: the header row must name columns 'id' and 'label', got {header or 'nothing'}")
        reader.fieldnames = header
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as exc:
        raise LabelError(f"{path}: malformed CSV ({exc})") from None
    by_name = {c: i for i, c in enumerate(classes)}
    pending = {int(i): pos for pos, i in enumerate(pending_ids)}
    out = np.full(len(pending_ids), -1, dtype=np.int64)
    seen: dict[int, int] = {}
    for line, row in rows:
        raw_id, raw_label = (row.get("id") or "").strip(), (row.get("label") or "").strip()
        if not raw_id and not raw_label:
            continue  # blank line
        if None in row:
            raise LabelError(f"{path} line {line}: more fields than the header has columns")
        try:
            pid = int(raw_id)
        except ValueError:
            raise LabelError(f"{path} line {line}: id {raw_id!r} is not an integer") from None
        if pid not in pending:
            raise LabelError(f"{path} line {line}: id {pid} was not queried in {where}; "
                             f"label only the ids listed in the queries file")
        if pid in seen:
            raise LabelError(f"{path} line {line}: id {pid} is labeled twice (first on line {seen[pid]})")
        seen[pid] = line
        if not raw_label:
            raise LabelError(f"{path} line {line}: id {pid} has an empty label")
        if raw_label in by_name:
            cls = by_name[raw_label]
        elif raw_label.lstrip("-").isdigit() and 0 <= int(raw_label) < len(classes):
            cls = int(raw_label)
        else:
            shown = ", ".join(list(classes)[:12]) + (", ..." if len(classes) > 12 else "")
            raise LabelError(f"{path} line {line}: unknown class {raw_label!r}; use a class name ({shown}) "
                             f"or an index in [0, {len(classes)})")
        out[pending[pid]] = cls
    if (out < 0).any():
        missing = [int(i) for i, v in zip(pending_ids, out) if v < 0]
        raise LabelError(f"{path}: {len(missing)} of {len(pending_ids)} queried ids in {where} have no label, "
                         f"e.g. {missing[:5]}; label every row of the queries file")
    return out


def record_labels(run_dir: str | Path, round_idx: int, pending_ids: Sequence[int], classes: Sequence[str],
                  answers: str | Path) -> np.ndarray:
    """Validate ``answers`` completely, then write ``labels/round_XXX.csv`` atomically.

    Nothing is written unless every row is valid. Returns the (k,) int64 labels.

    Args:
        run_dir: the run directory.
        round_idx: the round waiting for labels.
        pending_ids: its queried ids.
        classes: the dataset's class names.
        answers: the filled-in CSV (see :func:`parse_answers`).

    Raises:
        LabelError: see :func:`parse_answers`.
    """
    labels = parse_answers(answers, pending_ids, classes, round_idx)
    # A class name that is not valid UTF-8 (a folder name the file system could not decode) is
    # recorded by its index, which reads back the same.
    rows = [(int(i), "", "", classes[int(c)] if classes[int(c)].isprintable() else int(c))
            for i, c in zip(pending_ids, labels)]
    write_text_atomic(label_path(run_dir, round_idx), _csv_text(rows))
    return labels


def recorded_labels(run_dir: str | Path, round_idx: int, pending_ids: Sequence[int],
                    classes: Sequence[str]) -> np.ndarray | None:
    """The labels recorded by ``entk-al label`` for a pending round, or ``None`` if none yet.

    Args:
        run_dir: the run directory.
        round_idx: the pending round.
        pending_ids: its queried ids (the recorded file must label exactly these).
        classes: the dataset's class names.

    Raises:
        LabelError: the recorded file exists but no longer matches the pending queries.
    """
    path = label_path(run_dir, round_idx)
    if not path.is_file():
        return None
    return parse_answers(path, pending_ids, classes, round_idx)
