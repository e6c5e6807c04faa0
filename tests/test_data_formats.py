"""Your own data and the torchvision datasets, from tiny fake files in each format (no network)."""

import gzip
import pickle

import numpy as np
import pytest
import torch

from entk_al.data import load_dataset
from entk_al.errors import ConfigError, DataFormatError, DataNotFoundError

RNG = np.random.default_rng(0)


def standardized(x):
    """Per-channel (N, C, H, W) standardization with the given array's own statistics."""
    m = x.mean(axis=(0, 2, 3), keepdims=True)
    s = x.std(axis=(0, 2, 3), keepdims=True)
    return (x - m) / s


# -- numpy:PATH.npz ------------------------------------------------------------------------
def test_numpy_npz(tmp_path):
    xtr = RNG.integers(0, 256, (12, 5, 5), dtype=np.uint8)
    xte = RNG.integers(0, 256, (4, 5, 5), dtype=np.uint8)
    ytr, yte = np.arange(12) % 3, np.array([0, 1, 2, 2])
    path = tmp_path / "d.npz"
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, classes=np.array(["a", "b", "c"]),
             sources=np.array([f"img{i}.png" for i in range(12)]))
    d = load_dataset(f"numpy:{path}")
    assert d.x_train.shape == (12, 1, 5, 5) and d.x_train.dtype == torch.float32
    np.testing.assert_allclose(d.x_train[:, 0].numpy(), xtr / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(d.y_test.numpy(), yte)
    assert d.num_classes == 3 and d.classes == ["a", "b", "c"] and d.source_of(4) == "img4.png"


def test_numpy_float_features_used_as_given(tmp_path):
    xtr, xte = RNG.normal(size=(10, 7)), RNG.normal(size=(3, 7))
    path = tmp_path / "f.npz"
    np.savez(path, x_train=xtr, y_train=np.arange(10) % 4, x_test=xte, y_test=np.array([3, 0, 1]))
    d = load_dataset(f"numpy:{path}")
    np.testing.assert_allclose(d.x_test.numpy(), xte.astype(np.float32))
    assert d.num_classes == 4 and d.source_of(7) == "7"


@pytest.mark.parametrize("change,err,needle", [
    (dict(drop="y_test"), DataFormatError, "lacks array(s) y_test"),
    (dict(x_test=np.zeros((3, 6))), DataFormatError, "same per-item shape"),
    (dict(y_train=np.arange(10) + 0.5), DataFormatError, "integers"),
    (dict(y_test=np.array([0, 1, 9]), classes=np.array(["a", "b"])), DataFormatError, "out of range"),
    (dict(y_train=np.arange(9)), DataFormatError, "labels"),
    (dict(x_train=np.full((10, 7), np.nan)), DataFormatError, "NaN"),
    # one stray label would otherwise make a 1001-class model (the fresh-user trial's case)
    (dict(y_train=np.where(np.arange(10) == 5, 1000, np.arange(10) % 2)), DataFormatError,
     "labels (y_train, y_test) go up to 1000 but class(es) 2, 3, 4, 5, 6, … never occur (998 of 1001)"),
    (dict(y_test=np.array([0, 1, 3])), DataFormatError, "class(es) 2 never occur"),
])
def test_numpy_malformed(tmp_path, change, err, needle):
    arrays = dict(x_train=np.zeros((10, 7)), y_train=np.arange(10) % 2, x_test=np.zeros((3, 7)),
                  y_test=np.array([0, 1, 1]))
    drop = change.pop("drop", None)
    arrays.update(change)
    arrays.pop(drop, None)
    np.savez(tmp_path / "m.npz", **arrays)
    with pytest.raises(err, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_dataset(f"numpy:{tmp_path / 'm.npz'}")


def test_numpy_classes_array_declares_classes_the_data_lacks(tmp_path):
    """With a 'classes' array a class with no item is fine (the model gets all its outputs)."""
    np.savez(tmp_path / "c.npz", x_train=np.zeros((10, 7)), y_train=np.arange(10) % 2, x_test=np.zeros((3, 7)),
             y_test=np.array([0, 1, 1]), classes=np.array(["a", "b", "c"]))
    assert load_dataset(f"numpy:{tmp_path / 'c.npz'}").num_classes == 3


def test_numpy_missing_or_not_npz(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_dataset(f"numpy:{tmp_path / 'none.npz'}")
    (tmp_path / "t.npz").write_text("hello")
    with pytest.raises(DataFormatError, match="is not an .npz archive") as err:
        load_dataset(f"numpy:{tmp_path / 't.npz'}")
    assert "pickle" not in str(err.value)  # numpy's own message talks about allow_pickle
    np.save(tmp_path / "a.npy", np.zeros(3))  # a single array, not an archive
    with pytest.raises(DataFormatError, match="is not an .npz archive"):
        load_dataset(f"numpy:{tmp_path / 'a.npy'}")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataFormatError, match="not a readable .npz"):
        load_dataset(f"numpy:{tmp_path / 'bad.npz'}")
    with pytest.raises(ConfigError, match="give a path"):
        load_dataset("numpy:")


# -- folder:PATH ---------------------------------------------------------------------------
def _png(path, arr):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_folder_with_train_and_test(tmp_path):
    imgs = {}
    for split, n in (("train", 3), ("test", 1)):
        for cls in ("cat", "dog"):
            for i in range(n):
                arr = RNG.integers(0, 256, (6, 4, 3), dtype=np.uint8)
                _png(tmp_path / split / cls / f"{i}.png", arr)
                imgs[(split, cls, i)] = arr
    d = load_dataset(f"folder:{tmp_path}")
    assert d.classes == ["cat", "dog"] and d.num_classes == 2
    assert d.x_train.shape == (6, 3, 6, 4) and d.y_train.tolist() == [0, 0, 0, 1, 1, 1]
    assert d.sources[0] == "train/cat/0.png" and d.sources[5] == "train/dog/2.png"
    raw_train = np.stack([imgs[("train", c, i)] for c in ("cat", "dog") for i in range(3)])
    raw_train = raw_train.transpose(0, 3, 1, 2).astype(np.float64) / 255
    np.testing.assert_allclose(d.x_train.numpy(), standardized(raw_train), atol=1e-5)
    raw_test = np.stack([imgs[("test", c, 0)] for c in ("cat", "dog")]).transpose(0, 3, 1, 2) / 255
    m, s = raw_train.mean(axis=(0, 2, 3), keepdims=True), raw_train.std(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(d.x_test.numpy(), (raw_test - m) / s, atol=1e-5)


def test_folder_without_split_is_split_75_25_stratified_and_fixed(tmp_path):
    for cls in ("a", "b"):
        for i in range(8):
            _png(tmp_path / cls / f"{i}.png", RNG.integers(0, 256, (3, 3), dtype=np.uint8))  # grayscale
    d1, d2 = load_dataset(f"folder:{tmp_path}"), load_dataset(f"folder:{tmp_path}")
    assert d1.x_train.shape == (12, 1, 3, 3) and d1.x_test.shape == (4, 1, 3, 3)
    assert sorted(d1.y_test.tolist()) == [0, 0, 1, 1]
    assert d1.sources == d2.sources and torch.equal(d1.x_train, d2.x_train)


def test_folder_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'none'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="expected images"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    bad = tmp_path / "sizes"
    for i, shape in enumerate([(4, 4), (4, 4), (5, 4), (4, 4)]):
        _png(bad / "train" / ("a" if i % 2 else "b") / f"{i}.png", np.zeros(shape, np.uint8))
    _png(bad / "test" / "a" / "t.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataFormatError, match="resize"):
        load_dataset(f"folder:{bad}")
    extra = tmp_path / "extra"
    for split, cls in (("train", "a"), ("train", "b"), ("test", "zebra")):
        _png(extra / split / cls / "0.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(DataFormatError, match="zebra"):
        load_dataset(f"folder:{extra}")
    broken = tmp_path / "broken"
    for split, cls in (("train", "a"), ("train", "b"), ("test", "a")):
        _png(broken / split / cls / "0.png", np.zeros((2, 2), np.uint8))
    (broken / "train" / "a" / "1.png").write_bytes(b"not a png")
    with pytest.raises(DataFormatError, match="not a readable image"):
        load_dataset(f"folder:{broken}")


# -- MNIST-family IDX files ----------------------------------------------------------------
def _idx(path, arr):
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[arr.dtype], arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.tobytes())


@pytest.mark.parametrize("name", ["mnist", "MNIST"])
def test_mnist_idx_from_data_dir(tmp_path, name):
    root = tmp_path / "MNIST" / "raw"
    root.mkdir(parents=True)
    xtr = RNG.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    xte = RNG.integers(0, 256, (2, 28, 28), dtype=np.uint8)
    for stem, arr in (("train-images-idx3-ubyte", xtr), ("train-labels-idx1-ubyte", np.arange(6, dtype=np.uint8)),
                      ("t10k-images-idx3-ubyte", xte), ("t10k-labels-idx1-ubyte", np.array([3, 9], np.uint8))):
        _idx(root / f"{stem}.gz", arr)
    d = load_dataset(name, data_dir=str(tmp_path))
    x = xtr.astype(np.float64) / 255
    np.testing.assert_allclose(d.x_train[:, 0].numpy(), (x - x.mean()) / x.std(), atol=1e-5)
    assert d.y_test.tolist() == [3, 9] and d.num_classes == 10


def test_mnist_missing_is_data_not_found(tmp_path):
    with pytest.raises(DataNotFoundError, match="--download"):
        load_dataset("mnist", data_dir=str(tmp_path))
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_dataset("mnist", data_dir=str(tmp_path / "nope"))


# -- CIFAR-10 / CIFAR-100 pickles, SVHN .mat ---------------------------------------------
def _pickle(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


def _cifar10(root, n=2):
    folder = root / "cifar-10-batches-py"
    batches = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in RNG.integers(0, 10, n)]
        _pickle(folder / name, {b"data": data, b"labels": labels})
        batches.append((data, labels))
    _pickle(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return batches


def test_cifar10_pickles(tmp_path):
    batches = _cifar10(tmp_path / "CIFAR10")
    d = load_dataset("cifar10", data_dir=str(tmp_path))
    raw = np.concatenate([b[0] for b in batches[:5]]).reshape(-1, 3, 32, 32).astype(np.float64) / 255
    assert d.x_train.shape == (10, 3, 32, 32) and d.x_test.shape == (2, 3, 32, 32)
    np.testing.assert_allclose(d.x_train.numpy(), standardized(raw), atol=1e-4)
    assert d.y_train.tolist() == sum((b[1] for b in batches[:5]), []) and d.y_test.tolist() == batches[5][1]
    assert d.classes[3] == "c3"


def test_cifar100_fine_labels(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-100-python"
    for split, n in (("train", 5), ("test", 3)):
        _pickle(folder / split, {"data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8),
                                 "fine_labels": [97, 0, 5, 99, 1][:n], "coarse_labels": [0] * n})
    _pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)]})
    monkeypatch.setenv("ENTK_AL_DATA", str(tmp_path))  # found through the environment variable
    d = load_dataset("cifar100")
    assert d.num_classes == 100 and d.y_train.tolist() == [97, 0, 5, 99, 1] and d.classes[99] == "f99"


def test_cifar_malformed_and_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("ENTK_AL_DATA", raising=False)
    with pytest.raises(DataNotFoundError, match="cifar-10-batches-py"):
        load_dataset("cifar10", data_dir=str(tmp_path))
    _cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"garbage")
    with pytest.raises(DataFormatError, match="test_batch"):
        load_dataset("cifar10", data_dir=str(tmp_path))


def test_svhn_mat(tmp_path):
    from scipy.io import savemat

    xs = {}
    for split, labels in (("train", [10, 1, 2, 10]), ("test", [3, 10])):
        x = RNG.integers(0, 256, (32, 32, 3, len(labels)), dtype=np.uint8)
        savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": np.array(labels)[:, None]})
        xs[split] = x
    d = load_dataset("svhn", data_dir=str(tmp_path))
    assert d.y_train.tolist() == [0, 1, 2, 0] and d.y_test.tolist() == [3, 0]  # 10 means digit 0
    raw = xs["train"].transpose(3, 2, 0, 1).astype(np.float64) / 255
    np.testing.assert_allclose(d.x_train.numpy(), standardized(raw), atol=1e-4)
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_dataset("svhn", data_dir=str(tmp_path / "none"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="train_32x32.mat"):
        load_dataset("svhn", data_dir=str(tmp_path / "empty"))


def test_unknown_dataset_lists_choices():
    with pytest.raises(ConfigError, match="numpy:PATH.npz"):
        load_dataset("imagenet")


def test_run_on_own_numpy_data_through_cli(tmp_path, capsys):
    import json

    from entk_al.cli import main

    x = RNG.normal(size=(60, 1, 4, 4)).astype(np.float32)
    y = (x.reshape(60, -1).sum(1) > 0).astype(np.int64)
    np.savez(tmp_path / "own.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    with pytest.raises(SystemExit) as exc:
        main(["run", "--dataset", f"numpy:{tmp_path / 'own.npz'}", "--strategy", "entropy", "--initial", "6",
              "--query", "3", "--rounds", "1", "--epochs", "1", "--min-steps", "3", "-q", "--out",
              str(tmp_path / "run")])
    assert exc.value.code == 0, capsys.readouterr().err
    rows = [json.loads(r) for r in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    assert [r["n_labeled"] for r in rows] == [6, 9] and all(0 <= i < 40 for i in rows[0]["queried"])
