"""Pools: the unlabeled inputs a strategy chooses from, read by global id in batches.

A :class:`Pool` is anything with ``len(pool)``, ``pool.input_shape`` and
``pool.get(ids) -> (len(ids), *input_shape) float32 tensor``. Everything that scans the pool
(forward passes, kernel blocks, embeddings, the knn prefilter, the Ray shards) asks it for the
ids it needs, a tile at a time, so a pool never has to fit in memory. Sources:

- :class:`TensorPool`: an in-memory tensor (what the built-in datasets give);
- :class:`DatasetPool`: any ``torch.utils.data.Dataset`` whose items are ``x`` or ``(x, y)``
  (tensors or arrays of one shape), read through a ``DataLoader`` with workers;
- :class:`MemmapPool`: a ``.npy`` file (``memmap:PATH.npy``), read with positioned reads, so
  the file's pages are never mapped into the process (peak memory stays that of one batch);
- :class:`FolderPool`: images under ``PATH/<class>/`` read lazily by id (``folder:PATH``).

:func:`as_pool` turns a tensor, an array, a ``Dataset`` or a pool into a pool. A pool is
pickled as what it needs to reopen itself (a path, a dataset object), so Ray shard actors open
the source themselves instead of receiving the inputs from the driver.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataFormatError, DataNotFoundError

#: NumPy dtype kinds a pool's inputs may have: bool, signed and unsigned integers, floats.
NUMERIC_KINDS = "biuf"


def _check_ids(ids: Any, size: int) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= size):
        bad = ids[(ids < 0) | (ids >= size)][0]
        raise IndexError(f"pool id {int(bad)} is out of range for a pool of {size}")
    return ids


class Pool(ABC):
    """Inputs by global pool id (0 .. len − 1).

    Attributes:
        input_shape: shape of one input, without the batch dimension.
        labels: (N,) int64 ground-truth labels when the source has them (simulated oracles,
            tests), else None.
    """

    input_shape: tuple[int, ...]
    labels: np.ndarray | None = None

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def get(self, ids: Any) -> torch.Tensor:
        """Inputs of ``ids``: (len(ids), *input_shape) CPU tensor, rows in ``ids`` order; float32
        for file sources, the tensor's own dtype for :class:`TensorPool`.

        Raises:
            IndexError: an id outside [0, len(pool)).
        """

    def shard(self, start: int, stop: int) -> "Pool":
        """What a worker that owns ids [start, stop) needs (itself unless the inputs are in memory)."""
        return self

    def tensor(self) -> torch.Tensor | None:
        """The whole pool as one in-memory tensor when it is one (:class:`TensorPool`), else None."""
        return None


class TensorPool(Pool):
    """An in-memory pool.

    Args:
        x: (N, *input_shape) inputs (a tensor, or an array of numbers converted to one); ``get``
            returns rows in their dtype (float64 stays float64, token ids stay integers).
        labels: optional (N,) labels.
        offset: global id of ``x[0]`` (a shard's slice of a larger pool).

    Raises:
        DataFormatError: an array that is not of numbers (object, strings), or fewer than 2 dimensions.
    """

    def __init__(self, x: Any, labels: Any = None, offset: int = 0):
        if not isinstance(x, torch.Tensor):
            x = np.asarray(x)
            if x.dtype.kind not in NUMERIC_KINDS:
                raise DataFormatError(f"pool inputs must be numbers, got an array of dtype {x.dtype}; "
                                      f"convert them to float32 (or give a Dataset)")
        x = torch.as_tensor(x)
        if x.dim() < 2:
            raise DataFormatError(f"pool inputs must be (N, *input_shape), got shape {tuple(x.shape)}")
        self.x = x
        self.offset = int(offset)
        self.size = self.offset + len(self.x)
        self.input_shape = tuple(self.x.shape[1:])
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return self.size

    def get(self, ids: Any) -> torch.Tensor:
        ids = _check_ids(ids, self.size)
        rows = ids - self.offset
        if rows.size and rows.min() < 0:
            raise IndexError(f"pool id {int(ids[rows < 0][0])} is not held by this shard (ids from {self.offset})")
        return self.x[torch.from_numpy(rows)]

    def shard(self, start: int, stop: int) -> "TensorPool":
        return TensorPool(self.x[start - self.offset:stop - self.offset].contiguous(), offset=start)

    def tensor(self) -> torch.Tensor | None:
        return self.x if self.offset == 0 else None


def _as_array(item: Any, pos: int) -> np.ndarray:
    if isinstance(item, torch.Tensor):
        return item.detach().cpu().numpy()
    if isinstance(item, np.ndarray):
        if item.dtype.kind not in NUMERIC_KINDS:
            raise DataFormatError(f"dataset item {pos} is an array of dtype {item.dtype}, not of numbers; "
                                  f"convert it to float32")
        return item
    raise DataFormatError(f"dataset item {pos} is a {type(item).__name__}, not a tensor or an array; "
                          f"add a transform that returns one (e.g. torchvision's ToTensor)")


class _Items(torch.utils.data.Dataset):
    """The inputs (first element) of a dataset's items at ``ids``."""

    def __init__(self, dataset: Any, ids: np.ndarray):
        self.dataset, self.ids = dataset, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self.dataset[int(self.ids[i])]
        if isinstance(item, (tuple, list)):
            item = item[0]
        return torch.from_numpy(np.ascontiguousarray(_as_array(item, int(self.ids[i]))))


def _stack(batch: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    shapes = {tuple(b.shape) for b in batch}
    return torch.stack(batch) if len(shapes) == 1 else batch


class DatasetPool(Pool):
    """A torch ``Dataset`` as a pool: items ``x`` or ``(x, y)``, tensors or arrays of one shape.

    Args:
        dataset: the dataset (map-style: ``len`` and ``dataset[i]``).
        labels: (N,) labels, or None: the dataset's ``targets`` attribute if it has one
            (torchvision datasets), else unknown.
        num_workers: ``DataLoader`` worker processes for reads of at least ``batch_size`` ids.
        batch_size: items per worker batch.

    Raises:
        DataFormatError: an empty dataset, or a first item that is not a tensor or an array.
    """

    def __init__(self, dataset: Any, labels: Any = None, num_workers: int = 0, batch_size: int = 256):
        self.dataset, self.num_workers, self.batch_size = dataset, int(num_workers), int(batch_size)
        self.size = len(dataset)
        if self.size == 0:
            raise DataFormatError("the pool dataset is empty")
        first = _Items(dataset, np.zeros(1, dtype=np.int64))[0]
        self.input_shape = tuple(first.shape)
        if labels is None and hasattr(dataset, "targets"):
            labels = dataset.targets
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return self.size

    def get(self, ids: Any) -> torch.Tensor:
        ids = _check_ids(ids, self.size)
        items = _Items(self.dataset, ids)
        workers = self.num_workers if len(ids) >= self.batch_size else 0
        loader = torch.utils.data.DataLoader(items, batch_size=self.batch_size, num_workers=workers,
                                             collate_fn=_stack, shuffle=False)
        parts = []
        for b in loader:
            if isinstance(b, list):
                shapes = sorted({tuple(t.shape) for t in b})
                raise DataFormatError(f"pool dataset items differ in shape ({shapes[0]} and {shapes[1]}); "
                                      f"resize or pad them to one shape")
            parts.append(b)
        x = torch.cat(parts) if parts else torch.zeros((0, *self.input_shape))
        if tuple(x.shape[1:]) != self.input_shape:
            raise DataFormatError(f"pool dataset items have shape {tuple(x.shape[1:])}, the first had "
                                  f"{self.input_shape}; resize or pad them to one shape")
        return x.float() if x.is_floating_point() or x.dtype == torch.uint8 else x


class MemmapPool(Pool):
    """A pool in a ``.npy`` file (N, *input_shape), read by positioned reads of whole rows.

    Reads are ``os.pread`` calls on runs of consecutive ids (sorted first), so the file is
    never mapped: its pages sit in the page cache, not in the process's resident memory.

    Args:
        path: the ``.npy`` file (C order; float32, float64, float16 or uint8 — uint8 is scaled by
            1/255).
        labels: optional (N,) labels, or a path to a ``.npy`` file of them.

    Raises:
        DataNotFoundError: the file does not exist.
        DataFormatError: not a ``.npy`` file, Fortran order, or an unsupported dtype.
    """

    DTYPES = ("float32", "float64", "float16", "uint8")

    def __init__(self, path: str | Path, labels: Any = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataNotFoundError(f"pool file {self.path} does not exist")
        try:
            arr = np.load(self.path, mmap_mode="r")
        except (ValueError, OSError) as exc:
            raise DataFormatError(f"{self.path}: not a .npy array file ({exc})") from None
        if not isinstance(arr, np.memmap) or arr.ndim < 2:
            raise DataFormatError(f"{self.path}: expected an (N, *input_shape) .npy array")
        if arr.dtype.name not in self.DTYPES:
            raise DataFormatError(f"{self.path}: dtype {arr.dtype} is not one of {', '.join(self.DTYPES)}")
        if not arr.flags.c_contiguous:
            raise DataFormatError(f"{self.path}: the array is in Fortran order; save it in C order")
        self.dtype, self.size, self.input_shape = arr.dtype, int(arr.shape[0]), tuple(arr.shape[1:])
        self.offset = int(arr.offset)
        self.row_bytes = int(np.prod(self.input_shape)) * arr.dtype.itemsize
        del arr
        if isinstance(labels, (str, Path)):
            labels = np.load(labels)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.size

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _fd=None)  # each process opens its own descriptor

    def get(self, ids: Any) -> torch.Tensor:
        ids = _check_ids(ids, self.size)
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        order = np.argsort(ids, kind="stable")
        srt = ids[order]
        out = np.empty((len(ids), *self.input_shape), dtype=self.dtype)
        flat = out.reshape(len(ids), -1).view(np.uint8).reshape(len(ids), self.row_bytes)
        starts = np.flatnonzero(np.r_[True, np.diff(srt) != 1]) if len(srt) else np.zeros(0, np.int64)
        stops = np.r_[starts[1:], len(srt)]
        for a, b in zip(starts.tolist(), stops.tolist()):
            n = (b - a) * self.row_bytes
            buf = os.pread(self._fd, n, self.offset + int(srt[a]) * self.row_bytes)
            if len(buf) != n:
                raise DataFormatError(f"{self.path}: file is shorter than its header says")
            flat[order[a:b]] = np.frombuffer(buf, dtype=np.uint8).reshape(b - a, self.row_bytes)
        x = torch.from_numpy(out)
        return x.float().div_(255.0) if self.dtype == np.uint8 else x.float()


class FolderPool(Pool):
    """Images under ``PATH/<class>/`` (torchvision ``ImageFolder`` layout), read lazily by id.

    Ids are the positions in the sorted list of image files (classes sorted by name); nothing
    is read until :meth:`get` asks for an id. Images are scaled to [0, 1], channels first
    (grayscale when the first image is single-band, else RGB), unless ``transform`` is given.

    Args:
        path: the folder.
        transform: ``transform(PIL image) -> tensor or array`` (e.g. torchvision transforms),
            or None.

    Attributes:
        classes: the class folder names, sorted; ``labels`` are indices into it.
        files: the image paths, in id order.

    Raises:
        DataNotFoundError: the folder does not exist or holds no images.
    """

    def __init__(self, path: str | Path, transform: Any = None):
        from torchvision.datasets.folder import IMG_EXTENSIONS

        self.root, self.transform = Path(path), transform
        if self.root.is_file():
            raise DataNotFoundError(f"image folder {self.root} is a file; folder: takes a folder of class "
                                    f"subfolders (a .npy array goes to memmap:)")
        if not self.root.is_dir():
            raise DataNotFoundError(f"image folder {self.root} does not exist")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        files, labels = [], []
        for c, name in enumerate(self.classes):
            for f in sorted((self.root / name).rglob("*")):
                if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS:
                    files.append(f)
                    labels.append(c)
        if not files:
            raise DataNotFoundError(f"image folder {self.root}: no images in {self.root}/<class>/")
        self.files, self.labels = files, np.asarray(labels, dtype=np.int64)
        self.size = len(files)
        self._mode: str | None = None
        self.input_shape = tuple(self._read(0).shape)

    def __len__(self) -> int:
        return self.size

    def _read(self, i: int) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.files[i]) as im:
                if self.transform is not None:
                    x = self.transform(im)
                    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
                if self._mode is None:
                    self._mode = "L" if im.mode in ("L", "1", "I;16", "I", "F") else "RGB"
                arr = np.asarray(im.convert(self._mode), dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError) as exc:
            raise DataFormatError(f"{self.files[i]}: not a readable image ({exc})") from None
        return torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())

    def get(self, ids: Any) -> torch.Tensor:
        ids = _check_ids(ids, self.size)
        xs = [self._read(int(i)) for i in ids]
        for i, x in zip(ids.tolist(), xs):
            if tuple(x.shape) != self.input_shape:
                raise DataFormatError(f"{self.files[i]}: image has shape {tuple(x.shape)}, the first had "
                                      f"{self.input_shape}; resize all images to one size")
        return torch.stack(xs).float() if xs else torch.zeros((0, *self.input_shape))


def as_pool(obj: Any, labels: Any = None) -> Pool:
    """A :class:`Pool` for ``obj``: a pool (as is), a tensor or an array (:class:`TensorPool`),
    a ``Dataset`` (:class:`DatasetPool`), a ``memmap:PATH.npy`` or a ``folder:PATH`` string.

    Args:
        obj: the pool's source.
        labels: (N,) ground-truth labels, for sources that do not carry them.

    Raises:
        DataFormatError: a path string or ``Path`` without ``memmap:``/``folder:``, a mapping
            (a dict, an ``NpzFile``), or anything else.
    """
    if isinstance(obj, Pool):
        return obj
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return TensorPool(obj, labels)
    if isinstance(obj, str) and obj.startswith("memmap:"):
        return MemmapPool(obj[len("memmap:"):], labels)
    if isinstance(obj, str) and obj.startswith("folder:"):
        return FolderPool(obj[len("folder:"):])
    if isinstance(obj, (str, os.PathLike)):  # a str is also a sequence: its characters must not become items
        where = os.fspath(obj)
        hint = (f"'memmap:{where}'" if where.endswith(".npy") else f"'folder:{where}'" if Path(where).is_dir()
                else "'memmap:PATH.npy' (one .npy array) or 'folder:PATH' (image files)")
        raise DataFormatError(f"a pool given as a path must say how to read it: {hint}; got {where!r}")
    if isinstance(obj, Mapping):  # a dict or np.load's NpzFile: keyed by name, not by id
        raise DataFormatError(f"a pool is indexed by id, got a {type(obj).__name__} keyed by name; pass one array "
                              f"of it (e.g. np.load(PATH)['x_train'])")
    if isinstance(obj, torch.utils.data.Dataset) or (hasattr(obj, "__getitem__") and hasattr(obj, "__len__")):
        return DatasetPool(obj, labels)
    raise DataFormatError(f"a pool must be a Pool, a tensor, an array, a torch Dataset, 'memmap:PATH.npy' or "
                          f"'folder:PATH', got a {type(obj).__name__}")
