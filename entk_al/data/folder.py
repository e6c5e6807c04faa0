"""Your own images: ``--dataset folder:PATH`` in torchvision's ImageFolder layout.

Images are read with Pillow at the precision their file holds and scaled to [0, 1] by the
range of their mode: 8-bit modes by 255, 16-bit grayscale (``I;16``, PNG/TIFF/PGM) by 65535,
float (``F``) images as they are (they must lie in [0, 1]). Modes whose range is not fixed
(32-bit or signed integers) and files Pillow can only read at less than their precision
(48/64-bit RGB(A), 16-bit gray+alpha) are refused in one line rather than silently clipped.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..errors import DataFormatError, DataNotFoundError
from ..seeding import FOLDER_SPLIT, numpy_rng
from ._common import standardize_images
from .base import ALDataset

#: Fixed split of a folder without train/ and test/: independent of the run seed.
TEST_FRACTION = 0.25
SPLIT_SEED = 0

#: Pillow rawmodes of gray integer samples read into mode ``I``, by the range they scale by.
#: 32-bit and signed integers are not here: they have no range to scale by.
_INT_RANGES = {"I;8": 255.0, "I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0}
#: Rawmodes with more than 8 bits per channel that Pillow reads into an 8-bit mode (truncating):
#: 16-bit RGB(A)/CMYK/LA per channel (``RGB;16B``...) and 32-bit ones. ``RGB;16`` (5-6-5
#: packed) is not one of them.
_WIDE_RAWMODE = re.compile(r"(;16[BLN]|;32[A-Z]*|^L;16)$")
_REWRITE = "save it as 8-bit (L/RGB) or 16-bit grayscale (I;16) PNG/TIFF, or put the arrays in a numpy: archive"


def _scan(root: Path) -> list[tuple[Path, str]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    items = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(class_dir.rglob("*")):
            if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS:
                items.append((f, class_dir.name))
    return items


def _split(items: list[tuple[Path, str]]) -> tuple[list[int], list[int]]:
    """Indices of the train and test images of a folder without train/ and test/.

    A class with one image puts it in train. The others are split 75/25 stratified by
    scikit-learn with a fixed seed; when their classes are too small for that (fewer test
    than classes, e.g. 10 classes × 2 images), each class with n >= 2 images gives
    max(1, round(n/4)) to test, drawn from a fixed-seed stream. Every test class has train
    images either way.
    """
    labels = [c for _, c in items]
    counts = Counter(labels)
    single = [i for i, c in enumerate(labels) if counts[c] == 1]
    rest = np.array([i for i, c in enumerate(labels) if counts[c] >= 2], dtype=np.int64)
    if len(rest) == 0:
        return single, []
    from sklearn.model_selection import train_test_split

    rest_labels = [labels[i] for i in rest]
    try:
        tr, te = train_test_split(rest, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=rest_labels)
    except ValueError:  # scikit-learn refuses: fewer test (or train) images than classes
        tr, te = None, None
    if te is None or not {labels[i] for i in te} <= {labels[i] for i in tr}:
        rng = numpy_rng(SPLIT_SEED, -1, FOLDER_SPLIT)
        tr, te = [], []
        for c in sorted(set(rest_labels)):
            ids = rest[[lab == c for lab in rest_labels]]
            ids = ids[rng.permutation(len(ids))]
            n_test = max(1, round(TEST_FRACTION * len(ids)))
            te += ids[:n_test].tolist()
            tr += ids[n_test:].tolist()
    return sorted([*single, *(int(i) for i in tr)]), sorted(int(i) for i in te)


def _is_gray(im) -> bool:
    """One band that is an intensity (a palette index is not: ``P`` is read as RGB)."""
    return len(im.getbands()) == 1 and im.mode != "P"


def _source(im) -> tuple[str, str, tuple]:
    """(codec, rawmode, other decoder args) of the file's first tile, before it is loaded."""
    tiles = getattr(im, "tile", None) or []
    if not tiles:
        return "", "", ()
    codec, args = tiles[0][0], tiles[0][3]
    if isinstance(args, str):
        return codec, args, ()
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return codec, args[0], tuple(args[1:])
    return codec, "", ()


def _gray(im, path: Path) -> np.ndarray:
    """(H, W) float32 in [0, 1] of a single-band image, at the file's precision."""
    mode = im.mode
    if mode in ("1", "L"):
        return np.asarray(im.convert("L"), dtype=np.uint8).astype(np.float32) / 255.0
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.float32) / 65535.0
    if mode == "I":
        codec, rawmode, _ = _source(im)
        # Pillow rescales PGM files with maxval > 255 to 0..65535 in mode I.
        scale = 65535.0 if codec.startswith("ppm") else _INT_RANGES.get(rawmode)
        if scale is None:
            raise DataFormatError(f"{path}: {rawmode or 'integer'} image (mode I: 32-bit or signed integers) has no "
                                  f"fixed range to scale by; {_REWRITE}")
        arr = np.asarray(im).astype(np.float64) / scale
        if arr.size and not (arr.min() >= 0 and arr.max() <= 1):
            raise DataFormatError(f"{path}: integer image values beyond the 0..{scale:.0f} of its format; {_REWRITE}")
        return arr.astype(np.float32)
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        if arr.size and not (np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1):
            raise DataFormatError(f"{path}: float image (mode F) with values in [{arr.min():g}, {arr.max():g}]; "
                                  f"float images are read as intensities in [0, 1]: rescale it, or put the "
                                  f"arrays in a numpy: archive")
        return arr
    raise DataFormatError(f"{path}: image mode {mode} is not supported; {_REWRITE}")


def _rgb(im, path: Path) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]: a gray image repeated, any other mode converted by Pillow
    (palette -> its colors, CMYK/YCbCr/LAB/HSV -> RGB; alpha is dropped)."""
    if _is_gray(im):
        return np.repeat(_gray(im, path)[:, :, None], 3, axis=2)
    codec, rawmode, args = _source(im)
    ppm_maxval = args[0] if codec.startswith("ppm") and args and isinstance(args[0], int) else 0
    if _WIDE_RAWMODE.search(rawmode) or ppm_maxval > 255:
        raise DataFormatError(f"{path}: {rawmode or im.mode} image with more than 8 bits per channel, which Pillow "
                              f"reads only as 8 bits (mode {im.mode}); {_REWRITE}")
    try:
        rgb = im.convert("RGB")
    except ValueError as exc:
        raise DataFormatError(f"{path}: image mode {im.mode} cannot be converted to RGB ({exc}); {_REWRITE}") from None
    return np.asarray(rgb, dtype=np.uint8).astype(np.float32) / 255.0


def _read(items: list[tuple[Path, str]], rgb: bool, root: Path) -> np.ndarray:
    """(N, C, H, W) float32 in [0, 1]: C = 3 if ``rgb`` else 1."""
    from PIL import Image, UnidentifiedImageError

    out, size = [], None
    for path, _ in items:
        try:
            with Image.open(path) as im:
                arr = _rgb(im, path) if rgb else _gray(im, path)
        except (UnidentifiedImageError, OSError) as exc:
            raise DataFormatError(f"{path}: not a readable image ({exc})") from None
        if size is None:
            size = arr.shape
        elif arr.shape != size:
            raise DataFormatError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]}, others in {root} are "
                                  f"{size[1]}x{size[0]}; resize all images to one size")
        out.append(arr)
    x = np.stack(out)
    return x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)


def load_folder_dataset(path: str | Path) -> ALDataset:
    """Load images from ``PATH/<class>/<image>`` (torchvision ``ImageFolder`` layout).

    If ``PATH/train`` exists it is the pool and ``PATH/test`` (if it exists and holds
    images) the test split; without ``PATH/test`` there is no test split (runs record
    ``test_accuracy`` None). Otherwise all images are split 75/25, stratified, with a fixed
    seed (the same split for every run; a class with one image goes to the pool, and
    classes too small for a stratified 25% give max(1, round(n/4)) images each to test).
    Classes are the sub-folder names of the train split, sorted. All images must have one
    size; they are read as grayscale (1 channel) if every image is single-band, else RGB
    (a gray image repeated), scaled to [0, 1] by their mode's range (see the module
    docstring) and standardized per channel with the train split's mean and std.
    ``sources`` are the image paths relative to ``PATH``.

    Args:
        path: the dataset folder, ``PATH`` below.

    Raises:
        DataNotFoundError: ``PATH`` does not exist or holds no images of 2 classes.
        DataFormatError: unreadable images, image modes that cannot be read at their
            precision, differing sizes, a test class absent from train.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataNotFoundError(f"image folder {root} does not exist")
    if (root / "train").is_dir():
        train = _scan(root / "train")
        test = _scan(root / "test") if (root / "test").is_dir() else []
    else:
        items = _scan(root)
        tr, te = _split(items) if len({c for _, c in items}) >= 2 else (list(range(len(items))), [])
        train, test = [items[i] for i in tr], [items[i] for i in te]
    if len({c for _, c in train}) < 2:
        raise DataNotFoundError(f"image folder {root}: expected images in {root}/<class>/ (at least 2 classes) "
                                f"or in {root}/train/<class>/ (and optionally {root}/test/<class>/)")
    classes = sorted({c for _, c in train})
    unknown = sorted({c for _, c in test} - set(classes))
    if unknown:
        raise DataFormatError(f"image folder {root}: test class(es) {', '.join(unknown)} have no train images")
    from PIL import Image, UnidentifiedImageError

    def gray(p: Path) -> bool:
        try:
            with Image.open(p) as im:
                return _is_gray(im)
        except (UnidentifiedImageError, OSError) as exc:
            raise DataFormatError(f"{p}: not a readable image ({exc})") from None

    rgb = not all(gray(p) for p, _ in train + test)
    x_train = _read(train, rgb, root)
    x_test = _read(test, rgb, root) if test else np.zeros((0, *x_train.shape[1:]), np.float32)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataFormatError(f"image folder {root}: train and test images differ in size")
    xt, xe = standardize_images(x_train, x_test)
    index = {c: i for i, c in enumerate(classes)}
    return ALDataset(name=f"folder:{root}", x_train=xt, y_train=torch.tensor([index[c] for _, c in train]),
                     x_test=xe, y_test=torch.tensor([index[c] for _, c in test], dtype=torch.int64),
                     num_classes=len(classes), classes=classes, sources=[str(p.relative_to(root)) for p, _ in train])
