import gzip
import time

import numpy as np
import pytest

from jaxdefense import data
from jaxdefense.data import sources
from tests.conftest import mnist_dir


def test_digits_is_mnist_shaped_and_deterministic():
    a = data.load("digits", "train")
    b = data.load("digits", "train")
    t = data.load("digits", "test")
    assert a.x.shape[1:] == (28, 28, 1) and a.x.dtype == np.float32 and a.y.dtype == np.int32
    assert 0 <= a.x.min() and a.x.max() <= 1
    assert len(a) + len(t) == 1797
    np.testing.assert_array_equal(a.x, b.x)


def test_real_mnist_idx_and_slices():
    d = mnist_dir()
    full = data.load("mnist", "test", d)
    assert full.x.shape == (10000, 28, 28, 1) and full.num_classes == 10
    assert set(np.unique(full.y)) == set(range(10))
    head, tail = data.load("mnist", "test[:8000]", d), data.load("mnist", "test[8000:]", d)
    assert len(head) == 8000 and len(tail) == 2000
    np.testing.assert_array_equal(tail.x, full.x[8000:])


def test_npz_source(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "train.npz", x=x, y=np.arange(5))
    ds = data.load("mnist", "train", str(tmp_path))
    assert ds.x.shape == (5, 28, 28, 1)
    np.testing.assert_allclose(ds.x[..., 0], x / 255.0, rtol=1e-6)


def test_bad_inputs_have_clear_errors(tmp_path):
    with pytest.raises(data.DatasetError, match="unknown dataset"):
        data.load("imagenet")
    with pytest.raises(data.DatasetError, match="bad split"):
        data.load("digits", "train[a:b]")
    np.savez(tmp_path / "train.npz", x=np.zeros((2, 32, 32, 3), np.float32), y=[0, 1])
    with pytest.raises(data.DatasetError, match="expected"):
        data.load("mnist", "train", str(tmp_path))
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") * 3 + b"\x00" * 7)
    with pytest.raises(data.DatasetError, match="truncated"):
        data.read_idx(str(bad))


def test_offline_tfds_fails_fast_naming_data_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "_online", lambda *a, **k: False)
    t0 = time.time()
    with pytest.raises(data.DatasetError, match="--data_dir"):
        data.load("cifar10", "train", str(tmp_path))
    assert time.time() - t0 < 30


def test_batches_deterministic_and_complete():
    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
    y = np.arange(10, dtype=np.int32)
    a = list(data.train_batches(x, y, 4, seed=1, epoch=0))
    b = list(data.train_batches(x, y, 4, seed=1, epoch=0))
    c = list(data.train_batches(x, y, 4, seed=1, epoch=1))
    assert len(a) == 2 and all(len(yb) == 4 for _, yb in a)
    assert all(np.array_equal(p[1], q[1]) for p, q in zip(a, b))
    assert not all(np.array_equal(p[1], q[1]) for p, q in zip(a, c))
    padded = list(data.padded_batches(x, y, 4))
    assert [m.sum() for _, _, m in padded] == [4, 4, 2]


def test_crop_flip_keeps_shape_and_content():
    rng = np.random.default_rng(0)
    x = rng.random((16, 32, 32, 3)).astype(np.float32)
    out = data.crop_flip(x, np.random.default_rng(1))
    assert out.shape == x.shape
    # every augmented image is a shifted (maybe mirrored) copy: its centre patch exists in x
    for i in range(4):
        patch = out[i, 12:20, 12:20]
        found = any(np.array_equal(patch, cand[dy:dy + 8, dx:dx + 8])
                    for cand in (x[i], x[i, :, ::-1]) for dy in range(8, 17) for dx in range(8, 17))
        assert found
