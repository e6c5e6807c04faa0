"""Your own images: ``--dataset folder:PATH`` in torchvision's ImageFolder layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataFormatError, DataNotFoundError
from ._common import standardize_images
from .base import ALDataset

#: Fixed split of a folder without train/ and test/: independent of the run seed.
TEST_FRACTION = 0.25
SPLIT_SEED = 0


def _scan(root: Path) -> list[tuple[Path, str]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    items = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(class_dir.rglob("*")):
            if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS:
                items.append((f, class_dir.name))
    return items


def _read(items: list[tuple[Path, str]], mode: str, root: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    out, size = [], None
    for path, _ in items:
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert(mode), dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as exc:
            raise DataFormatError(f"{path}: not a readable image ({exc})") from None
        if size is None:
            size = arr.shape
        elif arr.shape != size:
            raise DataFormatError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]}, others in {root} are "
                                  f"{size[1]}x{size[0]}; resize all images to one size")
        out.append(arr)
    x = np.stack(out).astype(np.float32) / 255.0
    return x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)


def load_folder_dataset(path: str | Path) -> ALDataset:
    """Load images from ``PATH/<class>/<image>`` (torchvision ``ImageFolder`` layout).

    If ``PATH/train`` and ``PATH/test`` both exist they are the pool and the test split;
    otherwise all images are split 75/25, stratified, with a fixed seed (the same split for
    every run). Classes are the sub-folder names of the train split, sorted. All images
    must have one size; they are read as grayscale (1 channel) if every image is
    single-band ("L"/"1"), else RGB, scaled to [0, 1] and standardized per channel with
    the train split's mean and std. ``sources`` are the image paths relative to ``PATH``.

    Args:
        path: the dataset folder, ``PATH`` below.

    Raises:
        DataNotFoundError: ``PATH`` does not exist or holds no images.
        DataFormatError: unreadable images, differing sizes, a test class absent from train.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataNotFoundError(f"image folder {root} does not exist")
    if (root / "train").is_dir() and (root / "test").is_dir():
        train, test = _scan(root / "train"), _scan(root / "test")
    else:
        items = _scan(root)
        if len({c for _, c in items}) < 2 or len(items) < 4:
            train, test = items, []
        else:
            from sklearn.model_selection import train_test_split

            labels = [c for _, c in items]
            counts = {c: labels.count(c) for c in labels}
            strat = labels if min(counts.values()) >= 2 else None
            tr, te = train_test_split(np.arange(len(items)), test_size=TEST_FRACTION, random_state=SPLIT_SEED,
                                      stratify=strat)
            train, test = [items[i] for i in sorted(tr)], [items[i] for i in sorted(te)]
    if not train or not test:
        raise DataNotFoundError(f"image folder {root}: expected images in {root}/<class>/ (at least 2 classes) "
                                f"or in {root}/train/<class>/ and {root}/test/<class>/")
    classes = sorted({c for _, c in train})
    unknown = sorted({c for _, c in test} - set(classes))
    if unknown:
        raise DataFormatError(f"image folder {root}: test class(es) {', '.join(unknown)} have no train images")
    from PIL import Image, UnidentifiedImageError

    def single_band(p: Path) -> bool:
        try:
            with Image.open(p) as im:
                return im.mode in ("L", "1", "I;16", "I", "F")
        except (UnidentifiedImageError, OSError) as exc:
            raise DataFormatError(f"{p}: not a readable image ({exc})") from None

    mode = "L" if all(single_band(p) for p, _ in train + test) else "RGB"
    x_train, x_test = _read(train, mode, root), _read(test, mode, root)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataFormatError(f"image folder {root}: train and test images differ in size")
    xt, xe = standardize_images(x_train, x_test)
    index = {c: i for i, c in enumerate(classes)}
    return ALDataset(name=f"folder:{root}", x_train=xt, y_train=torch.tensor([index[c] for _, c in train]),
                     x_test=xe, y_test=torch.tensor([index[c] for _, c in test]), num_classes=len(classes),
                     classes=classes, sources=[str(p.relative_to(root)) for p, _ in train])
