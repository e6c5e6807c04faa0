"""User-facing error classes.

Every error a user can cause by bad input derives from :class:`EntkAlError`. The CLI
catches it, prints its message on one line to stderr and exits with code 2; anything
else is a bug and keeps its traceback.
"""


class EntkAlError(Exception):
    """Base class of every user-facing error (bad input, missing data, bad config)."""


class ConfigError(EntkAlError, ValueError):
    """An option or configuration value is invalid (unknown name, budget too large, ...)."""


class DataNotFoundError(EntkAlError, FileNotFoundError):
    """A dataset's files are not where the configuration says they are."""


class StrategyError(EntkAlError, RuntimeError):
    """A query strategy could not be loaded, or returned invalid pool ids."""


class CheckpointError(EntkAlError, RuntimeError):
    """A checkpoint or run directory is corrupted or does not match the configuration."""


class LabelError(EntkAlError, ValueError):
    """Labels given by a human annotator are invalid (unknown ids or classes, bad CSV)."""


class DataFormatError(EntkAlError, ValueError):
    """A dataset file exists but its contents are malformed (bad keys, shapes, labels, images)."""


class StorageError(EntkAlError, OSError):
    """A file could not be written because the disk is full or the folder is read-only.

    Files written before stay intact (every write is atomic, :mod:`entk_al.fileio`);
    ``errno`` is that of the operating system's error (ENOSPC, EDQUOT, EROFS, EACCES, EPERM).
    """


class RunFolderInUseError(EntkAlError, RuntimeError):
    """Another process holds the run folder's lock (:mod:`entk_al.runlock`): two commands
    writing one run folder would overwrite each other's results."""


class TrainingDivergedError(EntkAlError, ArithmeticError):
    """Training diverged: a non-finite (NaN or infinite) loss or weights. No result is written
    from the diverged model; the run's checkpoint stays at the last good round."""


class LabelStudioError(EntkAlError, RuntimeError):
    """A Label Studio server cannot be reached, refuses the access token, or its project does
    not fit the run (label config, missing project)."""
