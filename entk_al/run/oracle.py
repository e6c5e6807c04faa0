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
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import ConfigError, LabelError
from ..fileio import write_text_atomic
from .labeled import PoolState

QUERY_DIR = "queries"
LABEL_DIR = "labels"
INITIAL_ROUND = PoolState.INITIAL  # the seeded initial set, queried before round 0
COLUMNS = ("id", "source", "guess", "label")


@runtime_checkable
class RemoteOracle(Protocol):
    """A deferred oracle backed by an annotation tool the loop talks to itself (Label Studio).

    The loop calls :meth:`connect` before a run starts (fail fast), :meth:`push` after writing
    a round's queries, and :meth:`pull_report` when resuming; labels it pulls are recorded in
    ``labels/round_XXX.csv`` as ``entk-al label`` would. A learner in a user's own loop can
    use the same three calls (:class:`entk_al.run.labelstudio.LabelStudioOracle`).
    """

    deferred: bool
    name: str

    def connect(self, classes: Sequence[str], kind: str | None = None) -> Any:
        """Reach the tool; create or check the project's label setup for ``classes``."""

    def push(self, ids: Any, *, round: int, inputs: Any, probs: Any = None, scores: Any = None,
             sources: Any = None) -> Any:
        """Make tasks of the queried ``ids`` (the strategy's order), with predictions and scores."""

    def pull_report(self, ids: Any = None, *, round: int) -> Any:
        """The finished labels (``.labels``: id -> class index), and ``.complete``, ``.missing``, ``.summary()``."""


class SimulatedOracle:
    """Answers queries with the ground-truth train labels (simulation).

    Args:
        y_train: (N,) int64 tensor of pool labels; -1 marks an unknown label.

    Raises:
        ConfigError: some pool item has no known label (use ``--oracle files``); checked when
            the oracle is made, so a run does not fail rounds later on the first such query.
    """

    deferred = False
    name = "simulated"

    def __init__(self, y_train):
        self._y = np.asarray(y_train.cpu().numpy() if hasattr(y_train, "cpu") else y_train, dtype=np.int64)
        unknown = np.flatnonzero(self._y < 0)
        if unknown.size:
            raise ConfigError(f"the dataset has {unknown.size} pool item(s) without a label (label -1, e.g. id "
                              f"{int(unknown[0])}); the simulated oracle cannot answer for them: use --oracle "
                              f"files or --oracle label-studio to label them yourself")

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        return self._y[np.asarray(ids, dtype=np.int64)]


class FileOracle:
    """Human-in-the-loop oracle: queries go to CSV files, answers come back via ``entk-al label``.

    It cannot answer mid-selection (sequential look-ahead asks for labels one at a time):
    calling it raises :class:`ConfigError`.
    """

    deferred = True
    name = "files"

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


def class_index(raw_label: str, classes: Sequence[str]) -> int | None:
    """The class index ``raw_label`` names (a class name, else an index in [0, O)), or None.

    Args:
        raw_label: the label as given (stripped).
        classes: the dataset's class names (index = class id).
    """
    if raw_label in classes:
        return list(classes).index(raw_label)
    if raw_label.lstrip("-").isdigit() and 0 <= int(raw_label) < len(classes):
        return int(raw_label)
    return None


def unknown_class(raw_label: str, classes: Sequence[str], indices: bool = True) -> str:
    """The message for a label that names no class (see :func:`class_index`).

    Args:
        raw_label: the label as given.
        classes: the dataset's class names.
        indices: whether class indices are accepted too (CSV answers) or only names (Label Studio).
    """
    shown = ", ".join(list(classes)[:12]) + (", ..." if len(classes) > 12 else "")
    also = f" or an index in [0, {len(classes)})" if indices else ""
    return f"unknown class {raw_label!r}; use a class name ({shown}){also}"


def check_answers(rows: Iterable[tuple[str, object, str]], pending_ids: Sequence[int], classes: Sequence[str],
                  round_idx: int, *, origin: str, allow_missing: bool = False,
                  missing_hint: str = "label every row of the queries file",
                  stray_hint: str = "label only the ids listed in the queries file") -> np.ndarray:
    """Check answers to pending queries, wherever they come from, and align them with ``pending_ids``.

    The one set of rules for every way labels come in (a CSV via ``entk-al label``, Label
    Studio via ``entk-al label-studio pull``): every id must be an integer queried in
    ``round_idx``, given once, with a non-empty label naming a class (:func:`class_index`);
    unless ``allow_missing``, every pending id must be answered.

    Args:
        rows: ``(place, raw_id, raw_label)`` per answer; ``place`` says where it is (``line 3``,
            ``task 45``) and is named in errors.
        pending_ids: the ids queried in round ``round_idx`` and still waiting for labels.
        classes: the dataset's class names (index = class id).
        round_idx: the round the answers belong to (named in errors).
        origin: where the rows come from (a file path, a Label Studio project), named in errors.
        allow_missing: leave unanswered ids at -1 instead of raising.
        missing_hint: what the error for unanswered ids tells the person to do.
        stray_hint: what the error for an id not queried in this round tells the person to do.

    Returns:
        (len(pending_ids),) int64 class indices; -1 for unanswered ids (``allow_missing`` only).

    Raises:
        LabelError: an id that is not an integer or was not queried in this round, an id given
            twice, an empty label, an unknown class, or (unless ``allow_missing``) a missing
            answer; the message names the place.
    """
    where = f"round {round_idx}" if round_idx != INITIAL_ROUND else "the initial set"
    pending = {int(i): pos for pos, i in enumerate(pending_ids)}
    out = np.full(len(pending_ids), -1, dtype=np.int64)
    seen: dict[int, str] = {}
    for place, raw_id, raw_label in rows:
        try:
            pid = int(str(raw_id).strip())
        except ValueError:
            raise LabelError(f"{origin} {place}: id {raw_id!r} is not an integer") from None
        if pid not in pending:
            raise LabelError(f"{origin} {place}: id {pid} was not queried in {where}; {stray_hint}")
        if pid in seen:
            raise LabelError(f"{origin} {place}: id {pid} is labeled twice (first on {seen[pid]})")
        seen[pid] = place
        raw_label = str(raw_label).strip()
        if not raw_label:
            raise LabelError(f"{origin} {place}: id {pid} has an empty label")
        cls = class_index(raw_label, classes)
        if cls is None:
            raise LabelError(f"{origin} {place}: {unknown_class(raw_label, classes)}")
        out[pending[pid]] = cls
    if not allow_missing and (out < 0).any():
        missing = [int(i) for i, v in zip(pending_ids, out) if v < 0]
        raise LabelError(f"{origin}: {len(missing)} of {len(pending_ids)} queried ids in {where} have no label, "
                         f"e.g. {missing[:5]}; {missing_hint}")
    return out


def parse_answers(path: str | Path, pending_ids: Sequence[int], classes: Sequence[str],
                  round_idx: int) -> np.ndarray:
    """Read a filled-in answers CSV and return labels aligned with ``pending_ids``.

    Columns ``id`` and ``label`` are required (others are ignored); ``label`` is a class
    name or a class index in [0, O). Every pending id must get exactly one label
    (:func:`check_answers`).

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
    try:
        reader = csv.DictReader(io.StringIO(text))
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        if "id" not in header or "label" not in header:
            raise LabelError(f"{path}: the header row must name columns 'id' and 'label', got {header or 'nothing'}")
        reader.fieldnames = header
        lines = [(reader.line_num, row) for row in reader]
    except csv.Error as exc:
        raise LabelError(f"{path}: malformed CSV ({exc})") from None
    rows = []
    for line, row in lines:
        raw_id, raw_label = (row.get("id") or "").strip(), (row.get("label") or "").strip()
        if not raw_id and not raw_label:
            continue  # blank line
        if None in row:
            raise LabelError(f"{path} line {line}: more fields than the header has columns")
        rows.append((f"line {line}", raw_id, raw_label))
    return check_answers(rows, pending_ids, classes, round_idx, origin=str(path))


def write_labels(run_dir: str | Path, round_idx: int, pending_ids: Sequence[int], labels: np.ndarray,
                 classes: Sequence[str]) -> Path:
    """Write checked labels of round ``round_idx`` to ``labels/round_XXX.csv`` atomically.

    Args:
        run_dir: the run directory.
        round_idx: the round waiting for labels.
        pending_ids: its queried ids.
        labels: (len(pending_ids),) int64 class indices, all >= 0 (from :func:`check_answers`).
        classes: the dataset's class names.

    Returns:
        the path written (:func:`label_path`); ``entk-al run --resume`` reads it.
    """
    # A class name that is not valid UTF-8 (a folder name the file system could not decode) is
    # recorded by its index, which reads back the same.
    rows = [(int(i), "", "", classes[int(c)] if classes[int(c)].isprintable() else int(c))
            for i, c in zip(pending_ids, labels)]
    path = label_path(run_dir, round_idx)
    write_text_atomic(path, _csv_text(rows))
    return path


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
    write_labels(run_dir, round_idx, pending_ids, labels, classes)
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


def __getattr__(name: str):
    # LabelStudioOracle lives in its own module (it needs the optional label-studio-sdk);
    # importing it lazily keeps ``import entk_al.run.oracle`` free of that dependency.
    if name == "LabelStudioOracle":
        from .labelstudio import LabelStudioOracle

        return LabelStudioOracle
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
