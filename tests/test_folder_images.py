"""``folder:`` reads every Pillow image mode at the precision its file holds (or refuses it in
one line), and splits folders without train/ and test/ for any class sizes >= 1."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from entk_al.data import load_dataset
from entk_al.errors import DataFormatError
from entk_al.run.config import RunConfig
from entk_al.run.loop import ActiveLearningLoop

RNG = np.random.default_rng(0)


def _save(path: Path, im: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def _png16(path: Path, arr: np.ndarray) -> Path:
    """A 16-bit-per-channel PNG (gray+alpha, RGB or RGBA; Pillow cannot write them)."""
    h, w, c = arr.shape
    color_type = {2: 4, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def _tiff_rgb16(path: Path, arr: np.ndarray) -> Path:
    """An uncompressed little-endian 16-bit RGB TIFF (Pillow cannot write one)."""
    h, w, _ = arr.shape
    data = arr.astype("<u2").tobytes()
    tags = [(256, w), (257, h), (258, None), (259, 1), (262, 2), (273, None), (277, 3), (278, h), (279, len(data)),
            (284, 1)]
    ifd = 8
    bps_at = ifd + 2 + 12 * len(tags) + 4
    data_at = bps_at + 6
    out = b"II*\x00" + struct.pack("<I", ifd) + struct.pack("<H", len(tags))
    for tag, value in tags:
        if tag == 258:
            out += struct.pack("<HHII", tag, 3, 3, bps_at)
        elif tag in (273, 279):
            out += struct.pack("<HHII", tag, 4, 1, data_at if tag == 273 else value)
        else:
            out += struct.pack("<HHIHH", tag, 3, 1, value, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out + struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16) + data)
    return path


def _standardized(x):
    m = x.mean(axis=(0, 2, 3), keepdims=True)
    s = x.std(axis=(0, 2, 3), keepdims=True)
    return (x - m) / s


def _brightness_folder(root: Path, n: int = 16) -> dict:
    """Two classes that differ only above 255: 16-bit gray 1000..1199 vs 3000..3199, written as
    PNG (I;16), little-endian and big-endian TIFF (I;16, I;16B)."""
    raw = {}
    for cls, base in (("bright", 3000), ("dark", 1000)):
        for i in range(n):
            arr = (base + RNG.integers(0, 200, (4, 4))).astype(np.uint16)
            kind = i % 3
            path = root / cls / f"{i}.{'png' if kind == 0 else 'tif'}"
            _save(path, Image.fromarray(arr.astype(">u2") if kind == 2 else arr))
            raw[path.relative_to(root).as_posix()] = arr
    return raw


def test_16_bit_gray_is_read_at_full_precision_and_classes_stay_separable(tmp_path):
    raw = _brightness_folder(tmp_path)
    data = load_dataset(f"folder:{tmp_path}")
    expected = np.stack([raw[s] for s in data.sources])[:, None].astype(np.float64) / 65535
    np.testing.assert_allclose(data.x_train.numpy(), _standardized(expected), atol=1e-4)
    brightness = data.x_train.mean(dim=(1, 2, 3))
    assert brightness[data.y_train == 0].min() > 0 > brightness[data.y_train == 1].max()  # bright > dark
    # A run on them learns the classes (clipped to 255 they were identical: 50% every round).
    loop = ActiveLearningLoop(RunConfig(dataset="x", strategy="random", initial=6, query=2, rounds=0, subset=10,
                                        min_steps=100), tmp_path / "run", dataset=data)
    assert loop.run()[0]["test_accuracy"] == 1.0


def test_pgm_with_maxval_above_255_is_read_at_full_precision(tmp_path):
    for cls, values in (("a", [0, 511, 1023]), ("b", [100, 600, 1000])):
        for i in range(4):
            path = tmp_path / cls / f"{i}.pgm"
            path.parent.mkdir(parents=True, exist_ok=True)
            if i % 2:  # binary and plain (ASCII) PGM
                path.write_bytes(b"P5 3 1 1023\n" + np.array(values, ">u2").tobytes())
            else:
                path.write_text("P2 3 1 1023\n" + " ".join(map(str, values)) + "\n")
    data = load_dataset(f"folder:{tmp_path}")
    x = np.concatenate([data.x_train.numpy(), data.x_test.numpy()])
    assert len(np.unique(x.round(4))) == 6  # clipped at 255, 511, 600, 1000 and 1023 were one value


@pytest.mark.parametrize("mode,suffix", [("1", "png"), ("L", "png"), ("P", "png"), ("LA", "png"), ("PA", "tif"),
                                         ("RGB", "png"), ("RGBA", "png"), ("CMYK", "tif"), ("YCbCr", "tif"),
                                         ("LAB", "tif"), ("I;16", "png"), ("I;16B", "tif"), ("F", "tif")])
def test_every_mode_is_read_into_0_1_before_standardization(tmp_path, mode, suffix):
    """Each mode next to an 8-bit RGB image: the folder is RGB, and each image's pixels are
    its 8-bit conversion / 255, or, for 16-bit and float gray, value / 65535 or the value."""
    base = Image.fromarray(RNG.integers(0, 256, (3, 5, 3), dtype=np.uint8))
    gray = None
    if mode == "I;16":
        im = Image.fromarray(RNG.integers(256, 65536, (3, 5)).astype(np.uint16))
    elif mode == "I;16B":
        im = Image.fromarray(RNG.integers(256, 65536, (3, 5)).astype(">u2"))
    elif mode == "F":
        im = Image.fromarray(RNG.random((3, 5)).astype(np.float32))
    else:
        im = base.convert(mode)
    path = _save(tmp_path / "train" / "a" / f"0.{suffix}", im)
    for split, cls in (("train", "b"), ("test", "a"), ("test", "b")):
        _save(tmp_path / split / cls / "0.png", base)
    with Image.open(path) as again:
        if mode in ("I;16", "I;16B"):
            gray = np.asarray(again).astype(np.float64) / 65535
        elif mode == "F":
            gray = np.asarray(again).astype(np.float64)
        else:
            rgb = np.asarray(again.convert("RGB")).astype(np.float64) / 255
    if gray is not None:
        rgb = np.repeat(gray[:, :, None], 3, axis=2)
    other = np.asarray(base).astype(np.float64) / 255
    expected = _standardized(np.stack([rgb, other]).transpose(0, 3, 1, 2))
    data = load_dataset(f"folder:{tmp_path}")
    np.testing.assert_allclose(data.x_train.numpy(), expected, atol=1e-4)


def test_single_band_folders_stay_one_channel_at_full_precision(tmp_path):
    _save(tmp_path / "train" / "a" / "0.png", Image.fromarray(np.full((2, 2), 40000, np.uint16)))
    _save(tmp_path / "train" / "b" / "0.tif", Image.fromarray(np.full((2, 2), 0.25, np.float32)))
    _save(tmp_path / "test" / "a" / "0.png", Image.fromarray(np.full((2, 2), 7, np.uint8)))
    _save(tmp_path / "test" / "b" / "0.png", Image.fromarray(np.full((2, 2), 255, np.uint8)).convert("1"))
    data = load_dataset(f"folder:{tmp_path}")
    assert data.x_train.shape == (2, 1, 2, 2) and data.x_test.shape == (2, 1, 2, 2)
    raw_train, raw_test = np.array([40000 / 65535, 0.25]), np.array([7 / 255, 1.0])
    mean, std = raw_train.mean(), raw_train.std()
    np.testing.assert_allclose(data.x_train.numpy()[:, 0, 0, 0], (raw_train - mean) / std, atol=1e-5)
    np.testing.assert_allclose(data.x_test.numpy()[:, 0, 0, 0], (raw_test - mean) / std, atol=1e-5)


@pytest.mark.parametrize("make,needle", [
    (lambda p: _png16(p / "rgb48.png", RNG.integers(0, 65536, (2, 2, 3))), "more than 8 bits per channel"),
    (lambda p: _png16(p / "rgba64.png", RNG.integers(0, 65536, (2, 2, 4))), "more than 8 bits per channel"),
    (lambda p: _png16(p / "la32.png", RNG.integers(0, 65536, (2, 2, 2))), "more than 8 bits per channel"),
    (lambda p: _tiff_rgb16(p / "rgb48.tif", RNG.integers(0, 65536, (2, 2, 3))), "more than 8 bits per channel"),
    (lambda p: (p.mkdir(parents=True), (p / "c.ppm").write_bytes(b"P6 1 1 1023\n" + bytes(6)))[-1] and p / "c.ppm",
     "more than 8 bits per channel"),
    (lambda p: (p.mkdir(parents=True), (p / "c.ppm").write_text("P3 1 1 1023\n0 511 1023\n"))[-1] and p / "c.ppm",
     "more than 8 bits per channel"),
    (lambda p: _save(p / "i32.tif", Image.fromarray(np.full((2, 2), 70000, np.int32))), "no fixed range"),
    (lambda p: _save(p / "f.tif", Image.fromarray(np.full((2, 2), 3.5, np.float32))), "values in [3.5, 3.5]"),
    (lambda p: _save(p / "nan.tif", Image.fromarray(np.full((2, 2), np.nan, np.float32))), "float image"),
])
def test_modes_that_cannot_be_read_at_their_precision_are_refused_in_one_line(tmp_path, make, needle):
    bad = make(tmp_path / "train" / "a")
    for split, cls in (("train", "b"), ("test", "a"), ("test", "b")):
        _save(tmp_path / split / cls / "0.png", Image.fromarray(np.zeros((2, 2), np.uint8)))
    with pytest.raises(DataFormatError) as err:
        load_dataset(f"folder:{tmp_path}")
    assert needle in str(err.value) and str(bad) in str(err.value) and "\n" not in str(err.value)


# -- the loader's own split ------------------------------------------------------------------
def _tiny_folder(root: Path, sizes: dict) -> None:
    for cls, n in sizes.items():
        for i in range(n):
            _save(root / cls / f"{i}.png", Image.fromarray(RNG.integers(0, 256, (3, 3), dtype=np.uint8)))


def test_ten_classes_of_two_images_split_one_each(tmp_path):
    _tiny_folder(tmp_path, {f"c{k}": 2 for k in range(10)})
    data = load_dataset(f"folder:{tmp_path}")
    assert sorted(data.y_train.tolist()) == list(range(10)) and sorted(data.y_test.tolist()) == list(range(10))


def test_a_class_with_one_image_goes_to_the_pool(tmp_path):
    _tiny_folder(tmp_path, {"common": 8, "other": 8, "rare": 1})
    data = load_dataset(f"folder:{tmp_path}")
    rare = data.classes.index("rare")
    assert (data.y_train == rare).sum() == 1 and (data.y_test == rare).sum() == 0
    assert sorted(data.y_test.tolist()) == [0, 0, 1, 1]  # the others: 25% stratified
    again = load_dataset(f"folder:{tmp_path}")
    assert again.sources == data.sources and torch.equal(again.y_test, data.y_test)


def test_only_singleton_classes_give_a_pool_without_test_split(tmp_path):
    _tiny_folder(tmp_path, {"a": 1, "b": 1})
    data = load_dataset(f"folder:{tmp_path}")
    assert data.pool_size == 2 and not data.has_test_split


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=2, max_size=12))
def test_split_works_for_any_class_sizes(sizes):
    from entk_al.data.folder import _split

    items = [(Path(f"c{k}/{i}.png"), f"c{k}") for k, n in enumerate(sizes) for i in range(n)]
    train, test = _split(items)
    assert sorted(train + test) == list(range(len(items)))  # every image in exactly one split
    train_classes = {items[i][1] for i in train}
    assert {items[i][1] for i in test} <= train_classes == {c for _, c in items}
    for k, n in enumerate(sizes):  # classes with >= 2 images are in test when the split is per class
        in_test = sum(items[i][1] == f"c{k}" for i in test)
        assert in_test <= max(1, n - 1) and (n > 1 or in_test == 0)
    assert _split(items) == (train, test)
