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


def test_batches_from_a_mid_epoch_start_are_the_rest_of_the_epoch():
    """A run resumed at batch 3 of an epoch sees the batches (order and augmentation) an
    uninterrupted run sees from batch 3 on."""
    rng = np.random.default_rng(0)
    x = rng.random((40, 8, 8, 3)).astype(np.float32)
    y = np.arange(40, dtype=np.int32)
    full = list(data.train_batches(x, y, 8, seed=2, epoch=1, augment=True))
    rest = list(data.train_batches(x, y, 8, seed=2, epoch=1, augment=True, start=3))
    assert len(full) == 5 and len(rest) == 2
    for (xa, ya), (xb, yb) in zip(full[3:], rest):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)
    assert not np.array_equal(full[3][0], x[np.sort(full[3][1])])     # augmented


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


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_prepared_tfds_layout_reads_through_the_real_builder(tmp_path, name):
    """`python -m jaxdefense.data.prepare --fake_examples` leaves what download_and_prepare
    leaves (DatasetInfo, features, ArrayRecord shards of tf.train.Example with PNG images);
    `data.load` reads it back exactly through the real builder, slices included."""
    import tensorflow_datasets as tfds
    from jaxdefense.data import prepare
    written = prepare.write_fake(name, str(tmp_path), examples=40, seed=3)
    builder = tfds.builder(name, data_dir=str(tmp_path))
    assert builder.is_prepared() and builder.info.file_format.value == "array_record"
    assert builder.info.splits["train"].num_examples == 40
    assert builder.info.features["label"].num_classes == data.dataset_info(name)["num_classes"]
    for split in ("train", "test"):
        images, labels = written[split]
        ds = data.load(name, split, str(tmp_path))
        assert ds.x.dtype == np.float32 and ds.x.shape == (40, 32, 32, 3)
        np.testing.assert_array_equal(np.round(ds.x * 255).astype(np.uint8), images)
        np.testing.assert_array_equal(ds.y, labels)
    part = data.load(name, "test[30:]", str(tmp_path))
    np.testing.assert_array_equal(part.y, written["test"][1][30:])
    # a second write over prepared data refuses, and the CLI says so with exit code 2
    assert prepare.main([f"--dataset={name}", f"--data_dir={tmp_path}",
                         "--fake_examples=5"]) == 2


def test_read_source_batches_every_record_in_order():
    records = [{"image": np.full((2, 2, 1), i, np.uint8), "label": i % 7} for i in range(23)]

    class Source:
        calls = 0

        def __len__(self):
            return len(records)

        def __getitems__(self, idx):
            Source.calls += 1
            return [records[i] for i in idx]
    x, y = sources.read_source(Source(), (2, 2, 1), chunk=5, workers=2)
    np.testing.assert_array_equal(x[:, 0, 0, 0], np.arange(23))
    np.testing.assert_array_equal(y, np.arange(23) % 7)
    assert Source.calls == 5                          # ceil(23 / 5) batched reads


@pytest.mark.slow
def test_training_reads_prepared_cifar100_as_the_readme_says(tmp_path):
    """README: prepare into a data_dir, then train with --data_dir=; here with fake content."""
    import json
    from jaxdefense.data import prepare
    from train import standard
    assert prepare.main(["--dataset=cifar100", f"--data_dir={tmp_path / 'tfds'}",
                         "--fake_examples=64"]) == 0
    work = tmp_path / "run"
    rc = standard.main(["--dataset=cifar100", "--smoke", f"--data_dir={tmp_path / 'tfds'}",
                        f"--workdir={work}", "--epochs=1", "--batch_size=32",
                        "--attack_examples=16", "--attack_max_steps=1", "--limit_eval=32"])
    assert rc == 0
    records = [json.loads(line) for line in open(work / "metrics.jsonl")]
    train = [r for r in records if r.get("epoch") == 1]
    assert train and np.isfinite(train[0]["train"]["loss"])
    assert train[0]["images_per_s"] > 0
    results = json.load(open(work / "results.json"))
    assert 0.0 <= results["clean_acc"] <= 1.0
