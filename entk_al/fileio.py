"""Atomic file writes and JSON / JSON-lines I/O, shared by every layer.

A file is written to a temporary name beside its target, flushed to disk, then renamed onto
the target, so a crash (even a power loss) never leaves half a file. A write that fails
because the disk is full or the folder is read-only raises one
:class:`~entk_al.errors.StorageError` that says so (:func:`storage_error`), whatever layer
reported it (torch's zip writer, for one, turns ENOSPC into a RuntimeError): every byte goes
through :class:`_TempFile`, which remembers the operating system's error.
"""

from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterable

import numpy as np

from .errors import StorageError

# Read once: os.umask can only be read by setting it, which is not thread-safe to repeat.
_UMASK = os.umask(0)
os.umask(_UMASK)

#: errno values that mean "no space left": the disk, or the user's quota.
DISK_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
#: errno values that mean "this place cannot be written": a read-only mount, or permissions.
READ_ONLY = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def storage_error(exc: BaseException, path: str | Path | None = None) -> StorageError | None:
    """The one-line :class:`StorageError` for a write that failed for lack of space or of write
    permission, or None when ``exc`` (and the errors it was raised from) is something else.

    Args:
        exc: the exception a write raised (its ``__cause__`` / ``__context__`` are searched too).
        path: the file or folder being written (default: the OSError's ``filename``).
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, StorageError):
            return exc
        if isinstance(exc, OSError) and exc.errno in DISK_FULL | READ_ONLY:
            return _storage_error(exc, path)
        exc = exc.__cause__ or exc.__context__
    return None


def _storage_error(exc: OSError, path: str | Path | None) -> StorageError:
    target = Path(path if path is not None else (exc.filename or "."))
    reason = exc.strerror or os.strerror(exc.errno)
    if exc.errno in DISK_FULL:
        err = StorageError(f"the disk is full: could not write {target} ({reason}); the files written before "
                           f"are intact: free some space and run the command again (entk-al run --resume DIR "
                           f"continues a run)")
    else:
        err = StorageError(f"cannot write {target}: its folder is read-only ({reason}); use a folder you can "
                           f"write to (copy a run folder there to resume it)")
    err.errno = exc.errno
    return err


class _TempFile(io.FileIO):
    """The raw temporary file every atomic write goes through; remembers the first OSError of
    the lowest layer, so a writer that hides it (torch.save raises RuntimeError) cannot."""

    error: OSError | None = None
    #: the file this temporary file becomes once complete.
    path: Path | None = None

    def write(self, data) -> int:
        try:
            return self._write_raw(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def _write_raw(self, data) -> int:
        return super().write(data)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(fh)`` on a binary file object, then rename the result onto ``path``.

    A crash never leaves half a file: the bytes go to a temporary file beside ``path``, which
    is flushed to disk and then renamed. ``fh`` accepts what ``torch.save``,
    ``Figure.savefig(fh, format=...)`` and ``fh.write(bytes)`` give it.

    Args:
        path: the file to (re)place.
        write: writes the whole content into ``fh``.

    Raises:
        StorageError: the disk is full, or the folder cannot be written (read-only, permissions).
        Exception: whatever ``write`` raises for other reasons (the target is left as it was).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    except OSError as exc:
        raise (storage_error(exc, path) or exc) from None
    raw = None
    try:
        raw = _TempFile(fd, "wb")
        raw.path = path
        # mkstemp creates 0600 files; results should be as readable as any file the user makes.
        os.chmod(tmp, 0o666 & ~_UMASK)
        with io.BufferedWriter(raw) as fh:
            write(fh)
            fh.flush()
            os.fsync(raw.fileno())  # durable before it becomes visible under the real name
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        if raw is None:
            os.close(fd)
        elif not raw.closed:
            raw.close()
        Path(tmp).unlink(missing_ok=True)
        full = storage_error(raw.error, path) if raw is not None and raw.error is not None else None
        full = full or (storage_error(exc, path) if isinstance(exc, Exception) else None)
        if full is not None:
            raise full from None
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
    """Write ``text`` to ``path`` atomically, as UTF-8.

    A path or class name the file system handed over with bytes it could not decode (lone
    surrogates, PEP 383) is written as those original bytes, so the file names the real file.
    """
    data = text.encode("utf-8", "surrogateescape")
    atomic_write(path, lambda fh: fh.write(data))


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
