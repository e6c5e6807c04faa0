"""The run checkpoint (``checkpoint.pt``): what it holds, and how it is written and read safely.

A run folder is something users share, so reading a checkpoint must never run code: the file
is loaded with ``torch.load(..., weights_only=True)``, which accepts only tensors, plain
containers (dict, list, tuple), numbers, strings, booleans and None. :func:`write_checkpoint`
converts NumPy values to those types and refuses anything else, so every checkpoint we write
loads under that rule.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..fileio import atomic_write
from .labeled import PoolState

CHECKPOINT = "checkpoint.pt"
#: 2: plain types only (loads with weights_only=True); 1 held NumPy arrays (pickled objects).
CHECKPOINT_VERSION = 2
#: Options that may differ between a checkpoint and a resumed run.
#: Where scans run does not change what is selected (entk_al.executor), so those may change too.
RESUMABLE_CHANGES = {"rounds", "device", "data_dir", "download", "executor", "address", "workers",
                     "gpus_per_worker", "cpus_per_worker", "ls_url"}


@dataclass
class LoopState:
    """What a checkpoint restores: the round to run next, the model, the pool and the log.

    Attributes:
        next_round: index of the round to run next (0-based).
        model_state: the model's ``state_dict`` (CPU tensors), or None before the first training.
        pool: labeled/unlabeled bookkeeping.
        records: one JSON-ready dict per finished round (the rounds.jsonl rows).
        pending: the round's unanswered human queries (``--oracle files``), or None.
        stop: the stop rules' state (``--stop``), or None.
    """

    next_round: int
    model_state: dict | None
    pool: PoolState
    records: list[dict]
    #: queries waiting for human labels (``--oracle files``): {"round": r, "ids": [...]};
    #: round -2 is the seeded initial set.
    pending: dict | None = None
    #: the stop rules' state (:meth:`entk_al.run.stopping.StopMonitor.state_dict`), or None.
    stop: dict | None = None


def plain(obj: Any, where: str = "checkpoint") -> Any:
    """``obj`` with NumPy scalars/arrays turned into Python numbers/lists, tuples into lists.

    Args:
        obj: nested dicts/lists/tuples of numbers, strings, None, tensors and NumPy values.
        where: name used in the error message (which part of the checkpoint).

    Raises:
        CheckpointError: ``obj`` holds a value of another type (it would not load safely).
    """
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise CheckpointError(f"{where}: key {k!r} of type {type(k).__name__} cannot be stored safely")
            out[k] = plain(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise CheckpointError(f"{where}: a {type(obj).__name__} cannot be stored in a checkpoint "
                          f"(only tensors, numbers, strings, lists and dicts)")


def write_checkpoint(path: Path, state: LoopState, model: torch.nn.Module | None, config: dict,
                     classes: list[str]) -> None:
    """Write ``state`` atomically; ``model=None`` keeps ``state.model_state``.

    Args:
        path: the ``checkpoint.pt`` file.
        state: what to save.
        model: the network whose ``state_dict`` is saved, or None.
        config: the run configuration as a JSON-ready dict (checked on resume).
        classes: class names of the dataset.

    Raises:
        CheckpointError: the state holds a value that would not load with ``weights_only=True``.
    """
    weights = state.model_state if model is None else model.state_dict()
    ckpt = {"version": CHECKPOINT_VERSION, "config": plain(config, "config"), "next_round": int(state.next_round),
            "model": None if weights is None else {k: v.detach().cpu() for k, v in weights.items()},
            "pool": plain(state.pool.state_dict(), "pool"), "records": plain(state.records, "records"),
            "pending": plain(state.pending, "pending"), "stop": plain(state.stop, "stop"),
            "classes": [str(c) for c in classes]}
    atomic_write(path, lambda p: torch.save(ckpt, p))


def read_checkpoint(path: Path) -> dict:
    """Load ``checkpoint.pt`` on the CPU with ``weights_only=True`` (never runs code from the file).

    Args:
        path: the ``checkpoint.pt`` file.

    Raises:
        CheckpointError: the file cannot be read, holds anything but plain types, or is not a
            checkpoint dict of this version.
    """
    try:
        with warnings.catch_warnings():  # torch warns about legacy formats; the one-line error says it all
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not zipfile.is_zipfile(path):  # torch.save writes a zip; this is some other file
            raise CheckpointError(f"checkpoint {path} is unreadable or corrupted (not a torch checkpoint file)"
                                  ) from None
        raise CheckpointError(f"checkpoint {path} holds objects other than tensors, numbers, strings, lists "
                              f"and dicts; refusing to load it (an older checkpoint format or an edited file)"
                              ) from None
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupted ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupted (not a checkpoint)")
    version = ckpt.get("version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path} has version {version}, expected {CHECKPOINT_VERSION}")
    return ckpt


def state_from_checkpoint(ckpt: dict, path: Path) -> tuple[LoopState, dict]:
    """(state, saved config) from a dict returned by :func:`read_checkpoint`.

    Args:
        ckpt: the dict returned by :func:`read_checkpoint`.
        path: the file it came from (named in errors).

    Raises:
        CheckpointError: a field is missing or malformed.
    """
    try:
        saved_cfg = dict(ckpt["config"])
        state = LoopState(next_round=int(ckpt["next_round"]), model_state=ckpt["model"],
                          pool=PoolState.from_state_dict(ckpt["pool"]), records=list(ckpt["records"]),
                          pending=ckpt.get("pending"), stop=ckpt.get("stop"))
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupted ({type(exc).__name__})") from None
    return state, saved_cfg
