"""Dataset loaders: digits split, IDX reader on tiny files written here, missing-data errors."""

import gzip
import struct

import numpy as np
import pytest

from entk_al.data import load_dataset, read_idx
from entk_al.errors import ConfigError, DataNotFoundError


def write_idx(path, arr, gz=False):
    arr = np.asarray(arr, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    data = header + arr.tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def fake_fashion(root, n_train=12, n_test=5, gz=True):
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    write_idx(root / f"train-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_train, 28, 28)), gz)
    write_idx(root / f"train-labels-idx1-ubyte{sfx}", np.arange(n_train) % 10, gz)
    write_idx(root / f"t10k-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_test, 28, 28)), gz)
    write_idx(root / f"t10k-labels-idx1-ubyte{sfx}", np.arange(n_test) % 10, gz)


def test_digits_fixed_split():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.x_train.shape == (1347, 1, 8, 8) and a.x_test.shape == (450, 1, 8, 8)
    assert (a.y_train == b.y_train).all() and float(a.x_train.max()) <= 1.0
    assert set(a.y_test.tolist()) == set(range(10))


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_data_dir(tmp_path, gz):
    fake_fashion(tmp_path, gz=gz)
    ds = load_dataset("fashion-mnist", str(tmp_path))
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (5, 1, 28, 28)
    assert ds.y_train.tolist() == [i % 10 for i in range(12)]
    assert abs(float(ds.x_train.mean())) < 1e-5  # standardized with train statistics
    assert ds.classes[9] == "Ankle boot"


def test_env_var_is_searched(tmp_path, monkeypatch):
    (tmp_path / "FashionMNIST" / "raw").mkdir(parents=True)
    fake_fashion(tmp_path / "FashionMNIST" / "raw")
    monkeypatch.setenv("ENTK_AL_DATA", str(tmp_path))
    assert load_dataset("fashion-mnist", None).pool_size == 12


def test_read_idx_roundtrip_and_bad_magic(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", arr)
    assert (read_idx(tmp_path / "a") == arr).all()
    (tmp_path / "b").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "b")


def test_missing_data_dir_says_how_to_get_it(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist.*--download") as err:
        load_dataset("mnist", str(tmp_path / "nope"))
    assert "\n" not in str(err.value)


def test_unknown_dataset():
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_dataset("imagenet-22k")
