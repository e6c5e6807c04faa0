"""Your own arrays: ``--dataset numpy:PATH.npz``."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import DataFormatError, DataNotFoundError
from ._common import check_labels, to_float
from .base import ALDataset

REQUIRED = ("x_train", "y_train", "x_test", "y_test")


def load_numpy_dataset(path: str | Path) -> ALDataset:
    """Load a pool and a test split from one ``.npz`` file.

    Required arrays: ``x_train`` (N, ...) and ``x_test`` (N_test, ...) numeric inputs with the
    same per-item shape; ``y_train`` (N,) and ``y_test`` (N_test,) integer labels >= 0; ``y_train`` may hold -1 for
    items nobody has labeled yet (usable only with ``--oracle files``). ``x_test`` and ``y_test``
    with 0 rows (any shape, e.g. ``np.zeros(0)``) mean no test split: runs record
    ``test_accuracy`` None.
    Optional: ``classes`` (O,) class names; ``sources`` (N,) strings shown to annotators.

    Inputs are used as given (cast to float32), except that uint8 arrays are scaled to
    [0, 1] and (N, H, W) images get a channel axis, (N, 1, H, W). No standardization:
    normalize your arrays as your model expects. O = ``len(classes)`` if given, else
    ``max(label) + 1`` over both splits.

    Args:
        path: the ``.npz`` file.

    Raises:
        DataNotFoundError: the file does not exist.
        DataFormatError: not an npz archive, missing arrays, or inconsistent shapes/labels.
    """
    path = Path(path)
    if path.is_dir():
        raise DataFormatError(f"numpy dataset {path} is a directory; give the .npz file (folder:PATH reads "
                              f"a folder of images)")
    if not path.is_file():
        raise DataNotFoundError(f"numpy dataset {path} does not exist")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"PK\x03\x04":  # np.savez writes a zip archive; anything else is not one
        raise DataFormatError(f"{path} is not an .npz archive (np.savez / np.savez_compressed write one)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise DataFormatError(f"{path} is not a readable .npz archive ({exc})") from None
    missing = [k for k in REQUIRED if k not in arrays]
    if missing:
        no_test = {"x_test", "y_test"} & set(missing)
        hint = "; without a test split, save x_test and y_test with 0 rows" if no_test else ""
        raise DataFormatError(f"{path} lacks array(s) {', '.join(missing)} "
                              f"(needs {', '.join(REQUIRED)}; has {', '.join(sorted(arrays)) or 'none'}{hint})")
    x_train = to_float(arrays["x_train"], f"{path} x_train")
    x_test = to_float(arrays["x_test"], f"{path} x_test")
    if x_test.size == 0 and x_train.ndim >= 2:
        # No test split (np.zeros(0) or a 0-row array): the run records test_accuracy None.
        x_test = np.zeros((0, *x_train.shape[1:]), np.float32)
    if x_train.ndim < 2 or x_train.shape[1:] != x_test.shape[1:]:
        raise DataFormatError(f"{path}: x_train {x_train.shape} and x_test {x_test.shape} must be (N, ...) "
                              f"with the same per-item shape")
    if x_train.ndim == 4 and x_train.shape[-1] in (1, 3, 4) and x_train.shape[1] not in (1, 3, 4):
        raise DataFormatError(f"{path}: images of shape {x_train.shape[1:]} look channels-last; entk-al "
                              f"expects (N, C, H, W): save x.transpose(0, 3, 1, 2)")
    if x_train.ndim == 3:  # (N, H, W) grayscale images
        x_train, x_test = x_train[:, None], x_test[:, None]
    classes = [str(c) for c in arrays["classes"].tolist()] if "classes" in arrays else None
    y_train = check_labels(arrays["y_train"], f"{path} y_train", len(classes) if classes else None,
                           allow_unknown=True)
    y_test = check_labels(arrays["y_test"], f"{path} y_test", len(classes) if classes else None)
    if len(y_train) != len(x_train) or len(y_test) != len(x_test):
        raise DataFormatError(f"{path}: {len(x_train)}/{len(x_test)} inputs but {len(y_train)}/{len(y_test)} labels")
    if len(y_train) == 0:
        raise DataFormatError(f"{path}: x_train is empty")
    num_classes = len(classes) if classes else int(max(y_train.max(), y_test.max(initial=0))) + 1
    if not classes:
        # Without a 'classes' array the class count is inferred as max label + 1, so one stray
        # label (1000 among 0..9) would silently build a 1001-output model.
        seen = np.union1d(y_train[y_train >= 0], y_test)
        absent = np.setdiff1d(np.arange(num_classes), seen)
        if absent.size:
            shown = ", ".join(str(int(c)) for c in absent[:5]) + (", …" if absent.size > 5 else "")
            raise DataFormatError(f"{path}: labels (y_train, y_test) go up to {num_classes - 1} but class(es) "
                                  f"{shown} never occur ({absent.size} of {num_classes}); labels must be 0..C-1, "
                                  f"or give a 'classes' array naming all C classes")
    if num_classes < 2:
        raise DataFormatError(f"{path}: need at least 2 classes (give a 'classes' array when y_train is unknown)")
    sources = None
    if "sources" in arrays:
        sources = [str(s) for s in arrays["sources"].tolist()]
        if len(sources) != len(x_train):
            raise DataFormatError(f"{path}: sources has {len(sources)} entries, x_train has {len(x_train)}")
    return ALDataset(name=f"numpy:{path}", x_train=torch.from_numpy(np.ascontiguousarray(x_train)),
                     y_train=torch.from_numpy(y_train), x_test=torch.from_numpy(np.ascontiguousarray(x_test)),
                     y_test=torch.from_numpy(y_test), num_classes=num_classes, classes=classes or [],
                     sources=sources)
