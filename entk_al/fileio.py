"""Atomic file writes and JSON / JSON-lines I/O, shared by every layer.

A file is written to a temporary name beside its target, flushed to disk, then renamed onto
the target, so a crash (even a power loss) never leaves half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

# Read once: os.umask can only be read by setting it, which is not thread-safe to repeat.
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        # mkstemp creates 0600 files; results should be as readable as any file the user makes.
        os.chmod(tmp, 0o666 & ~_UMASK)
        write(Path(tmp))
        with open(tmp, "rb+") as fh:  # durable before it becomes visible under the real name
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically (NumPy scalars/arrays allowed)."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    """Write ``records``, one JSON object per line, to ``path`` atomically."""
    write_text_atomic(path, "".join(json.dumps(r, sort_keys=True, default=_jsonable) + "\n" for r in records))


def read_jsonl(path: str | Path) -> list[dict]:
    """Read the JSON-lines file at ``path`` into a list of dicts; blank lines are skipped.

    Args:
        path: the ``.jsonl`` file.

    Raises:
        DataFormatError: a line is not a JSON object, or the file is not UTF-8 text.
    """
    from .errors import DataFormatError

    rows = []
    try:
        with Path(path).open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    rows.append(json.loads(line))
                    if not isinstance(rows[-1], dict):
                        raise DataFormatError(f"{path} line {n} is not a JSON object (file corrupted?)")
    except json.JSONDecodeError:
        raise DataFormatError(f"{path} line {n} is not valid JSON (file corrupted?)") from None
    except UnicodeDecodeError:
        raise DataFormatError(f"{path} is not UTF-8 text (file corrupted?)") from None
    return rows


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
