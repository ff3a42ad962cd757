"""Host-side data work: reading a prepared tfds split, and overlapping batches with steps.

    python bench/input_pipeline.py                      # CIFAR-100 sizes
    python bench/input_pipeline.py --examples=2000 --epochs=1

1. Reading: writes --examples fake CIFAR-100 training examples in the real builder's
   ArrayRecord layout (`jaxdefense.data.prepare`), then reads them back one record at a time
   (what `data/sources.py` did before) and with `sources.read_source` (batched
   `__getitems__` chunks decoded on a thread pool): seconds and images/s each.
2. Overlap: `training.fit` on CIFAR-size images (crop + flip augmentation, a small
   convolutional classifier, batch 128) with `prefetch_batches=0` (batches prepared between
   steps) and 2 (prepared on a background thread while the device computes): seconds per
   epoch each (fit's own epoch timer, median over --epochs after the compile epoch), and the host's share: the time
   to prepare an epoch's batches alone.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import jax
import numpy as np

from jaxdefense.cli import setup_process


def reading(examples: int) -> None:
    import tensorflow_datasets as tfds
    from jaxdefense.data import prepare, sources
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        prepare.write_fake("cifar100", d, examples, splits=("train",))
        print(f"wrote {examples} fake CIFAR-100 examples in {time.perf_counter() - t0:.0f} s")
        source = tfds.builder("cifar100", data_dir=d).as_data_source(split="train")
        t0 = time.perf_counter()
        for i in range(len(source)):
            ex = source[i]
            np.asarray(ex["image"]), ex["label"]
        one = time.perf_counter() - t0
        t0 = time.perf_counter()
        sources.read_source(source, (32, 32, 3))
        batched = time.perf_counter() - t0
    print(f"\n| reading {examples} CIFAR-100 records | seconds | images/s |\n|---|---|---|")
    print(f"| one record at a time | {one:.1f} | {examples / one:.0f} |")
    print(f"| read_source (chunks of 2048, {min(8, os.cpu_count() or 1)} threads) | "
          f"{batched:.1f} | {examples / batched:.0f} |")


def overlap(epochs: int, examples: int) -> None:
    import flax.linen as nn
    import optax
    from jaxdefense import training
    from jaxdefense.data import train_batches

    class Small(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x))
            x = nn.relu(nn.Conv(32, (3, 3), strides=2)(x))
            return nn.Dense(100)(x.reshape(len(x), -1))
    rng = np.random.default_rng(0)
    x = rng.random((examples, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 100, examples).astype(np.int32)
    model = Small()
    step = training.classifier_step(model)
    t0 = time.perf_counter()
    for _ in train_batches(x, y, 128, 0, 0, augment=True):
        pass
    host = time.perf_counter() - t0
    rows = []
    for depth in (0, 2):
        state = training.init_classifier_state(model, (32, 32, 3), optax.sgd(0.01),
                                               jax.random.key(0))
        with tempfile.TemporaryDirectory() as d:
            training.fit(state, step, x, y, epochs=epochs + 1, batch_size=128, seed=0,
                         augment=True, ckpt_dir=os.path.join(d, "ckpt"), phase="b",
                         metrics_path=os.path.join(d, "metrics.jsonl"), progress=False,
                         prefetch_batches=depth, keep=1)
            times = [json.loads(line)["seconds"] for line in open(os.path.join(d, "metrics.jsonl"))]
        rows.append((depth, statistics.median(times[1:])))
    print(f"\n| fit, {examples} CIFAR-size images, augment, batch 128 | s / epoch |\n|---|---|")
    print(f"| preparing the epoch's batches alone (host) | {host:.2f} |")
    for depth, s in rows:
        print(f"| prefetch_batches={depth} | {s:.2f} |")
    print(f"gain: {rows[0][1] / rows[1][1]:.2f}x")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=50_000)
    p.add_argument("--fit_examples", type=int, default=10_240)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    setup_process()   # malloc as the command lines have it (jaxdefense.host_memory)
    print(f"machine: {os.cpu_count()} CPU cores, {jax.devices()[0].platform}, "
          f"jax {jax.__version__}")
    reading(args.examples)
    overlap(args.epochs, args.fit_examples)


if __name__ == "__main__":
    main()
