"""One writer per run folder: an exclusive lock held while a command writes there.

``entk-al run`` (also ``--resume``), ``label``, each cell of ``bench`` and the loop itself
hold the lock of their run folder from before their first check of what the folder holds
until they exit. A second process asking for it gets one line naming the folder and the
holder's pid (:class:`~entk_al.errors.RunFolderInUseError`) instead of overwriting the other's
results.

The lock is ``fcntl.flock`` on ``<folder>/.entk-al.lock``, which holds the holder's pid and
host. The kernel drops the lock when its process exits, however it exits, so a lock file left
by a killed process is stale and simply taken over. The holder deletes the file before it lets
go; whoever opened the deleted file meanwhile sees that it is no longer the one at the path
and tries again. Within one process the lock is re-entrant (the CLI and the loop both take
it). Platforms without ``fcntl`` (Windows) run without the lock.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import ConfigError, RunFolderInUseError
from .fileio import storage_error

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows)
    fcntl = None

#: The lock file's name inside the run folder (removed when the lock is let go).
LOCK_NAME = ".entk-al.lock"

_held: dict[str, int] = {}
_held_guard = threading.Lock()


@contextmanager
def run_folder_lock(folder: str | Path, *, create: bool = True) -> Iterator[Path]:
    """Hold ``folder``'s lock for the ``with`` block; yields the folder.

    Args:
        folder: the run folder.
        create: create ``folder`` (and its parents) when missing; a folder created here that is
            still empty when the block ends is removed again, so a command that fails before
            writing anything leaves nothing behind.

    Raises:
        RunFolderInUseError: another process holds the lock.
        StorageError: the folder is read-only or the disk is full.
        ConfigError: ``folder`` cannot be created (a file is in the way, ...).
    """
    folder = Path(folder)
    created = _make_folder(folder) if create else False
    key = os.path.realpath(folder)
    with _held_guard:
        again = key in _held
        if again:
            _held[key] += 1
    if again:
        try:
            yield folder
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    try:
        fd = _acquire(folder) if fcntl is not None else None
    except BaseException:
        _remove_if_empty(folder, created)
        raise
    with _held_guard:
        _held[key] = 1
    try:
        yield folder
    finally:
        with _held_guard:
            del _held[key]
        if fd is not None:
            _release(folder, fd)
        _remove_if_empty(folder, created)


def _remove_if_empty(folder: Path, created: bool) -> None:
    if created:
        try:
            folder.rmdir()  # only when empty: nothing was written
        except OSError:
            pass


def _make_folder(folder: Path) -> bool:
    """Create ``folder`` if missing; True if this call created it."""
    if folder.is_dir():
        return False
    try:
        folder.mkdir(parents=True)
        return True
    except FileExistsError:
        if folder.is_dir():  # made by someone else meanwhile
            return False
        raise ConfigError(f"cannot create the output folder {folder}: a file is in the way") from None
    except OSError as exc:
        raise (storage_error(exc, folder)
               or ConfigError(f"cannot create the output folder {folder} ({exc.strerror or exc})")) from None


def _acquire(folder: Path) -> int:
    path = folder / LOCK_NAME
    for _ in range(100):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except FileNotFoundError:  # the folder went away (its creator removed it, empty)
            _make_folder(folder)
            continue
        except OSError as exc:
            raise (storage_error(exc, path)
                   or ConfigError(f"cannot lock the run folder {folder} ({exc.strerror or exc})")) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunFolderInUseError(
                f"{folder} is in use by another entk-al process ({holder}); two commands writing one run "
                f"folder would overwrite each other's results: wait for it to finish, or use another folder"
            ) from None
        except OSError:  # a file system without locks (some network mounts): go on unlocked
            return fd
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same:  # the holder deleted this file as we opened it: take the current one
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        return fd
    raise RunFolderInUseError(f"{folder}: could not take its lock (it keeps changing hands); try again")


def _holder(fd: int) -> str:
    """``pid N`` (``on HOST`` when another machine) of the lock file's writer."""
    text = ""
    for _ in range(25):  # the holder writes its pid right after locking
        text = os.pread(fd, 256, 0).decode("utf-8", "replace").strip()
        if text:
            break
        time.sleep(0.02)
    pid, _, host = text.partition(" ")
    if not pid.isdigit():
        return "pid unknown"
    return f"pid {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")


def _release(folder: Path, fd: int) -> None:
    try:
        os.unlink(folder / LOCK_NAME)  # before unlocking: see the module docstring
    except OSError:
        pass
    os.close(fd)

