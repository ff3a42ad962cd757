"""Prepare a tfds dataset where training will read it: ArrayRecord files, no TensorFlow to read.

    python -m jaxdefense.data.prepare --dataset=cifar100 --data_dir=~/tensorflow_datasets
    python -m jaxdefense.data.prepare --dataset=cifar10 --data_dir=/tmp/fake --fake_examples=64

The first form runs the real builder (`download_and_prepare`, file format array_record); it
needs internet and TensorFlow (`pip install -e '.[tfds-prepare]'`). Then train with
`--data_dir=` the same directory.

`--fake_examples=N` writes N made-up examples per split through the same builder's metadata
(its DatasetInfo, features.json, split names, and ArrayRecord shards of serialized
`tf.train.Example`s with PNG-encoded images, exactly the layout `download_and_prepare`
leaves), with neither internet nor TensorFlow: for tests, CI, and a dry run of a CIFAR
command on a machine without the data. Images are a per-class colour plus noise, so a model
can learn them; nothing about them is real.
"""
from __future__ import annotations

import argparse
import io
import os
import sys

import numpy as np

from jaxdefense.data.sources import DATASETS, DatasetError

TFDS_DATASETS = ("mnist", "cifar10", "cifar100", "svhn_cropped")


def _builder(name: str, data_dir: str):
    import tensorflow_datasets as tfds
    if name not in TFDS_DATASETS:
        raise DatasetError(f"{name!r} is not a tfds dataset this project reads; "
                           f"choose one of {TFDS_DATASETS}")
    return tfds.builder(name, data_dir=os.path.expanduser(data_dir), file_format="array_record")


def prepare(name: str, data_dir: str) -> str:
    """Download and prepare the real dataset into data_dir; returns the version directory."""
    from jaxdefense.data.sources import _online
    builder = _builder(name, data_dir)
    if builder.is_prepared():
        return os.fspath(builder.data_dir)
    if not _online():
        raise DatasetError(f"{name}: preparing needs internet, and this machine is offline; "
                           f"prepare on another machine and copy {builder.data_dir!r}, or "
                           f"use --fake_examples for a dry run")
    import importlib.util
    if importlib.util.find_spec("tensorflow") is None:
        raise DatasetError(f"{name}: preparing tfds data needs TensorFlow: "
                           f"pip install -e '.[tfds-prepare]'")
    builder.download_and_prepare(file_format="array_record")
    return os.fspath(builder.data_dir)


def _png(image: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return buf.getvalue()


def fake_images(labels: np.ndarray, shape: tuple, num_classes: int,
                rng: np.random.Generator) -> np.ndarray:
    """uint8 [N, *shape]: a fixed colour per class (seeded by the class) plus noise."""
    palette = np.random.default_rng(1234).integers(40, 216, (num_classes, shape[-1]))
    noise = rng.integers(-40, 41, (len(labels), *shape))
    return np.clip(palette[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def write_fake(name: str, data_dir: str, examples: int, seed: int = 0,
               splits: tuple[str, ...] | None = None) -> dict:
    """Write `examples` made-up examples per split in the real builder's prepared layout.

    Returns {split: (images uint8 [N, H, W, C], labels int64 [N])}, what was written."""
    import tensorflow_datasets as tfds
    from array_record.python.array_record_module import ArrayRecordWriter
    from tensorflow_datasets.proto import tf_example_pb2

    if examples < 1:
        raise DatasetError(f"--fake_examples must be >= 1, got {examples}")
    builder = _builder(name, data_dir)
    if builder.is_prepared():
        raise DatasetError(f"{builder.data_dir} already holds prepared {name} data; "
                           f"fake examples are written only into an empty directory")
    features = builder.info.features
    kinds = {k: type(f).__name__ for k, f in features.items()}
    unknown = {k: v for k, v in kinds.items() if v not in ("Image", "ClassLabel", "Text")}
    if unknown:
        raise DatasetError(f"{name}: cannot fake features {unknown}")
    shape, num_classes = DATASETS[name]["shape"], DATASETS[name]["num_classes"]
    splits = splits or tuple(builder.info.splits.keys()) or ("train", "test")
    os.makedirs(builder.data_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    written, infos = {}, []
    for split in splits:
        labels = rng.integers(0, num_classes, examples)
        images = fake_images(labels, shape, num_classes, rng)
        template = tfds.core.ShardedFileTemplate(
            data_dir=builder.data_dir, dataset_name=builder.name, split=split,
            filetype_suffix="array_record")
        path = os.fspath(template.sharded_filepaths(1)[0])
        writer = ArrayRecordWriter(path, "group_size:1")
        num_bytes = 0
        for i, (image, label) in enumerate(zip(images, labels)):
            example = tf_example_pb2.Example()
            feature = example.features.feature
            for key, kind in kinds.items():
                if kind == "Image":
                    feature[key].bytes_list.value.append(_png(image))
                elif kind == "ClassLabel":          # CIFAR-100's coarse_label: made up too
                    n = features[key].num_classes
                    feature[key].int64_list.value.append(int(label) % n)
                else:
                    feature[key].bytes_list.value.append(f"{split}_{i:05d}".encode())
            record = example.SerializeToString()
            num_bytes += len(record)
            writer.write(record)
        writer.close()
        infos.append(tfds.core.SplitInfo(name=split, shard_lengths=[examples],
                                         num_bytes=num_bytes, filename_template=template))
        written[split] = (images, labels)
    builder.info.set_splits(tfds.core.SplitDict(infos))
    builder.info.write_to_directory(builder.data_dir)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jaxdefense.data.prepare", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=TFDS_DATASETS)
    p.add_argument("--data_dir", required=True, help="tfds data directory (train with the same)")
    p.add_argument("--fake_examples", type=int, default=None,
                   help="write this many made-up examples per split instead of downloading")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        if args.fake_examples is not None:
            write_fake(args.dataset, args.data_dir, args.fake_examples, args.seed)
            where = _builder(args.dataset, args.data_dir).data_dir
            print(f"wrote {args.fake_examples} fake examples per split of {args.dataset} "
                  f"to {where}")
        else:
            print(f"prepared {args.dataset} in {prepare(args.dataset, args.data_dir)}")
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
