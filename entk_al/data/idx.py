"""MNIST-format (IDX) datasets read from local files: Fashion-MNIST and MNIST."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DataFormatError, DataNotFoundError
from .base import ALDataset

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a NumPy array.

    Format: LeCun et al., "THE MNIST DATABASE" file format (magic = 0, 0, dtype, ndim).

    Args:
        path: an IDX file, gzip-compressed if its name ends in ``.gz``.

    Raises:
        DataFormatError: (a ValueError) the file is not a well-formed IDX file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataFormatError(f"{path}: unreadable ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataFormatError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataFormatError(f"{path}: IDX payload is {len(raw) - header} bytes, header says {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


def _candidate_roots(data_dir: str | None, sub: str) -> list[Path]:
    # An explicit --data-dir is the only place searched: silently reading other files
    # than the ones the user pointed at would be worse than an error.
    base = data_dir or os.environ.get("ENTK_AL_DATA")
    return [Path(base), Path(base) / sub, Path(base) / sub / "raw"] if base else []


def load_idx_dataset(name: str, data_dir: str | None, *, download: bool = False) -> ALDataset:
    """Load Fashion-MNIST (``name="fashion-mnist"``) or MNIST (``"mnist"``) from IDX files.

    Search order: ``data_dir`` alone when it is given; otherwise ``$ENTK_AL_DATA`` (each also
    with a ``<name>/`` and ``<name>/raw`` sub-folder), then, for Fashion-MNIST, the Debian package
    ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``). With
    ``download=True`` and nothing found, torchvision fetches the files into ``data_dir``.

    Returns:
        Images as float32 (N, 1, 28, 28) standardized with the train-split mean and std.

    Raises:
        DataNotFoundError: no directory holds all four files (the message says how to get them).
        DataFormatError: (a ValueError) a file is not a valid IDX file or the shapes disagree.
    """
    sub = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}[name]
    if data_dir is not None and not Path(data_dir).exists() and not download:
        raise DataNotFoundError(f"{name}: --data-dir {data_dir} does not exist; point it at a folder with the "
                                f"four IDX files, or pass --download")
    roots = _candidate_roots(data_dir, sub)
    if name == "fashion-mnist" and data_dir is None:
        roots.append(DEBIAN_FASHION_MNIST)
    for root in roots:
        found = {k: _find(root, v) for k, v in _FILES.items()}
        if all(found.values()):
            return _from_files(name, found)
    if download:
        return _download(name, data_dir or "data")
    where = ("no IDX files found in " + ", ".join(str(r) for r in roots) if roots
             else "no --data-dir given and $ENTK_AL_DATA is not set")
    hint = ("install the Debian package (apt-get install -y dataset-fashion-mnist), "
            if name == "fashion-mnist" else "")
    raise DataNotFoundError(
        f"{name}: {where}; {hint}point --data-dir or $ENTK_AL_DATA at a folder with the four "
        f"IDX files, or pass --download")


def _from_files(name: str, files: dict[str, Path]) -> ALDataset:
    arr = {k: read_idx(p) for k, p in files.items()}
    for split in ("train", "test"):
        if len(arr[f"x_{split}"]) != len(arr[f"y_{split}"]):
            raise DataFormatError(f"{name}: {split} images and labels differ in count")
    x_train = arr["x_train"].astype(np.float32) / 255.0
    x_test = arr["x_test"].astype(np.float32) / 255.0
    mean, std = float(x_train.mean()), float(x_train.std())
    classes = FASHION_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)]
    return ALDataset(
        name=name,
        x_train=torch.from_numpy((x_train - mean) / std)[:, None],
        y_train=torch.from_numpy(arr["y_train"].astype(np.int64)),
        x_test=torch.from_numpy((x_test - mean) / std)[:, None],
        y_test=torch.from_numpy(arr["y_test"].astype(np.int64)),
        num_classes=10,
        classes=list(classes),
    )


def _download(name: str, data_dir: str) -> ALDataset:
    import torchvision

    cls = {"fashion-mnist": torchvision.datasets.FashionMNIST, "mnist": torchvision.datasets.MNIST}[name]
    try:
        cls(data_dir, train=True, download=True)
        cls(data_dir, train=False, download=True)
    except Exception as exc:  # network errors come in many types
        raise DataNotFoundError(f"{name}: download into {data_dir} failed ({exc})") from None
    return load_idx_dataset(name, data_dir, download=False)
