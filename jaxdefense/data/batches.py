"""Batching and augmentation in numpy, deterministic from (seed, epoch)."""
from __future__ import annotations

from typing import Iterator

import numpy as np


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator that fixes an epoch's order (so resume is exact)."""
    return np.random.default_rng([seed, epoch])


def batch_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one batch's augmentation: its own, so a run resumed in the middle of
    an epoch augments the batches after the resume point as an uninterrupted run does."""
    return np.random.default_rng([seed, epoch, index, 1])


def crop_flip(x: np.ndarray, rng: np.random.Generator, pad: int = 4,
              rows: slice | None = None, total: int | None = None) -> np.ndarray:
    """CIFAR augmentation: random crop of the zero-padded image (pad px) and horizontal flip.

    With `rows`/`total`: x holds rows `rows` of a batch of `total`; the random draws are made
    for the whole batch (so a process's share is augmented as in a one-process run)."""
    n, h, w, _ = x.shape
    total = n if total is None else total
    rows = slice(0, n) if rows is None else rows
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy = rng.integers(0, 2 * pad + 1, total)[rows]
    dx = rng.integers(0, 2 * pad + 1, total)[rows]
    rows_i = dy[:, None] + np.arange(h)[None]          # [n, h]
    cols = dx[:, None] + np.arange(w)[None]            # [n, w]
    out = padded[np.arange(n)[:, None, None], rows_i[:, :, None], cols[:, None, :]]
    flip = (rng.random(total) < 0.5)[rows]
    out[flip] = out[flip, :, ::-1]
    return out


def train_batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, epoch: int,
                  augment: bool = False, rows: slice | None = None, start: int = 0
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Shuffled full batches (the remainder is dropped so every step has one shape), from
    batch `start` of the epoch on (a mid-epoch resume: the same batches as from 0, less the
    first `start`).

    rows: yield only these rows of every global batch (a process's share,
    `sharding.process_share`), gathered and augmented alone; order and augmentation are
    drawn for the global batch, so the shares together are the one-process batch."""
    if len(x) < batch_size:
        raise ValueError(f"{len(x)} training examples is fewer than one batch of {batch_size}")
    rng = epoch_rng(seed, epoch)
    order = rng.permutation(len(x))
    rows = slice(0, batch_size) if rows is None else rows
    for i in range(start, len(x) // batch_size):
        idx = np.sort(order[i * batch_size:(i + 1) * batch_size])[rows]
        xb = x[idx]
        if augment:
            xb = crop_flip(xb, batch_rng(seed, epoch, i), rows=rows, total=batch_size)
        yield xb, y[idx]


def padded_batches(x: np.ndarray, y: np.ndarray, batch_size: int):
    """Every example once, in order, in fixed-size batches: (x, y, mask); padding has mask 0."""
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        n = len(xb)
        mask = np.zeros(batch_size, bool)
        mask[:n] = True
        if n < batch_size:
            xb = np.concatenate([xb, np.zeros((batch_size - n, *xb.shape[1:]), xb.dtype)])
            yb = np.concatenate([yb, np.zeros((batch_size - n,), yb.dtype)])
        yield xb, yb, mask
