"""CIFAR-10, CIFAR-100 and SVHN read from their standard local files.

The files are the ones torchvision downloads (the Python pickle batches of CIFAR, the
``*_32x32.mat`` files of SVHN). We read them ourselves so that a local copy works without
torchvision's checksum step; torchvision is only the ``--download`` fetcher.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import DataFormatError, DataNotFoundError
from ._common import candidate_roots, check_labels, standardize_images
from .base import ALDataset

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
_SPECS = {
    # name: (folder under the root, train files, test files, label key, meta file, names key, subfolder alias)
    "cifar10": (CIFAR10_DIR, [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels",
                "batches.meta", "label_names", "CIFAR10"),
    "cifar100": (CIFAR100_DIR, ["train"], ["test"], "fine_labels", "meta", "fine_label_names", "CIFAR100"),
}
SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


#: The only globals a CIFAR batch may name: NumPy's array reconstruction and codecs' encode
#: (Python 3's protocol-2 pickles of bytes). Anything else in a batch could run code on load.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's batch files: plain containers and NumPy arrays, nothing that runs code.

    CIFAR is distributed as Python pickles, a format that can run any code when loaded; a
    batch file received from anyone but the CIFAR site could carry such code. ``find_class``
    refuses every global outside :data:`_CIFAR_GLOBALS`.
    """

    def find_class(self, module: str, name: str):
        if (module, name) in _CIFAR_GLOBALS or (module in ("numpy", "numpy.dtypes") and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (CIFAR batches hold only NumPy arrays "
                                     f"and plain containers)")


def _unpickle(path: Path) -> dict:
    """Read one CIFAR pickle batch with :class:`_BatchUnpickler`.

    Raises:
        DataFormatError: not a CIFAR batch, or it names a type a batch never holds.
    """
    try:
        with path.open("rb") as fh:
            data = _BatchUnpickler(fh, encoding="latin1").load()
    except Exception as exc:  # truncated or foreign files raise many types
        raise DataFormatError(f"{path}: not a CIFAR pickle batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise DataFormatError(f"{path}: not a CIFAR pickle batch (no dict inside)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def _cifar_split(folder: Path, files: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in files:
        batch = _unpickle(folder / name)
        if "data" not in batch or label_key not in batch:
            raise DataFormatError(f"{folder / name}: lacks 'data' or {label_key!r}")
        x = np.asarray(batch["data"], dtype=np.uint8)
        if x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
            raise DataFormatError(f"{folder / name}: data must be (N, 3072) uint8, got {x.shape}")
        xs.append(x.reshape(-1, 3, 32, 32))
        ys.append(check_labels(np.asarray(batch[label_key]), str(folder / name)))
        if len(ys[-1]) != len(xs[-1]):
            raise DataFormatError(f"{folder / name}: {len(xs[-1])} images but {len(ys[-1])} labels")
    return np.concatenate(xs), np.concatenate(ys)


def _find_cifar(name: str, data_dir: str | None) -> Path | None:
    folder, train, test, *_ , alias = _SPECS[name]
    for root in candidate_roots(data_dir, alias):
        for cand in (root / folder, root):
            if all((cand / f).is_file() for f in train + test):
                return cand
    return None


def load_cifar(name: str, data_dir: str | None, *, download: bool = False) -> ALDataset:
    """Load CIFAR-10 (``"cifar10"``) or CIFAR-100 (``"cifar100"``, fine labels).

    Search order: ``data_dir``, then ``$ENTK_AL_DATA``, each also with a ``CIFAR10/`` or
    ``CIFAR100/`` sub-folder, for the extracted ``cifar-10-batches-py/`` (or
    ``cifar-100-python/``) folder or its files directly.

    Args:
        name: ``cifar10`` or ``cifar100``.
        data_dir: folder to search first, or None.
        download: fetch the files with torchvision into ``data_dir`` (default ``data``) when they
            are missing.

    Returns:
        Images as float32 (N, 3, 32, 32) standardized per channel with train-split statistics.

    Raises:
        DataNotFoundError: files missing (and no ``download``), or the download failed.
        DataFormatError: a batch file is malformed.
    """
    folder, train_files, test_files, label_key, meta, names_key, alias = _SPECS[name]
    where = _find_cifar(name, data_dir)
    if where is None:
        if download:
            _download(name, data_dir or "data")
            return load_cifar(name, data_dir or "data", download=False)
        raise DataNotFoundError(_missing(name, data_dir, f"the extracted {folder}/ folder"))
    x_train, y_train = _cifar_split(where, train_files, label_key)
    x_test, y_test = _cifar_split(where, test_files, label_key)
    num_classes = 10 if name == "cifar10" else 100
    classes = [str(i) for i in range(num_classes)]
    if (where / meta).is_file():
        names = _unpickle(where / meta).get(names_key)
        if names is not None and len(names) == num_classes:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    for split, y in (("train", y_train), ("test", y_test)):
        check_labels(y, f"{name} {split}", num_classes)
    xt, xe = standardize_images(x_train.astype(np.float32) / 255.0, x_test.astype(np.float32) / 255.0)
    return ALDataset(name=name, x_train=xt, y_train=torch.from_numpy(y_train), x_test=xe,
                     y_test=torch.from_numpy(y_test), num_classes=num_classes, classes=classes)


def load_svhn(data_dir: str | None, *, download: bool = False) -> ALDataset:
    """Load SVHN (cropped digits) from ``train_32x32.mat`` and ``test_32x32.mat``.

    Search order as for CIFAR (sub-folder ``SVHN/``). Label 10 in the files is digit 0, as
    in torchvision. Returns float32 (N, 3, 32, 32) standardized per channel (train statistics).

    Args:
        data_dir: folder to search first, or None.
        download: fetch the files with torchvision into ``data_dir`` (default ``data``) when they
            are missing.

    Raises:
        DataNotFoundError: files missing (and no ``download``), or the download failed.
        DataFormatError: a .mat file is malformed.
    """
    where = None
    for root in candidate_roots(data_dir, "SVHN"):
        if all((root / f).is_file() for f in SVHN_FILES.values()):
            where = root
            break
    if where is None:
        if download:
            _download("svhn", data_dir or "data")
            return load_svhn(data_dir or "data", download=False)
        raise DataNotFoundError(_missing("svhn", data_dir, "train_32x32.mat and test_32x32.mat"))
    from scipy.io import loadmat

    split = {}
    for key, fname in SVHN_FILES.items():
        try:
            mat = loadmat(where / fname)
            x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
        except Exception as exc:
            raise DataFormatError(f"{where / fname}: not an SVHN .mat file ({type(exc).__name__}: {exc})") from None
        if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
            raise DataFormatError(f"{where / fname}: X must be (32, 32, 3, N) with N labels, got {x.shape}")
        y = check_labels(y, str(where / fname)) % 10  # the files store digit 0 as 10
        split[key] = (x.transpose(3, 2, 0, 1).astype(np.float32) / 255.0, y)
    xt, xe = standardize_images(split["train"][0], split["test"][0])
    return ALDataset(name="svhn", x_train=xt, y_train=torch.from_numpy(split["train"][1]), x_test=xe,
                     y_test=torch.from_numpy(split["test"][1]), num_classes=10)


def _missing(name: str, data_dir: str | None, what: str) -> str:
    if data_dir is not None and not Path(data_dir).exists():
        return f"{name}: --data-dir {data_dir} does not exist"
    return (f"{name}: {what} not found under --data-dir or $ENTK_AL_DATA; point --data-dir at the folder "
            f"that holds it, or pass --download (needs network)")


def _download(name: str, root: str) -> None:
    import torchvision.datasets as tvd

    try:
        if name == "svhn":
            for split in ("train", "test"):
                tvd.SVHN(root, split=split, download=True)
        else:
            cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            cls(root, train=True, download=True)
    except Exception as exc:  # network errors come in many types
        raise DataNotFoundError(f"{name}: download into {root} failed ({exc})") from None
