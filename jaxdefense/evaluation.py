"""Batched evaluation over fixed-shape, padded, device-sharded batches (no recompiles)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdefense.data import padded_batches
from jaxdefense.sharding import shard_batch


def padded_batch_size(batch_size: int, n: int) -> int:
    """Round up to a multiple of the device count; no larger than needed for n examples."""
    d = jax.device_count()
    b = min(batch_size, max(n, 1))
    return -(-b // d) * d


def map_batches(fn, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """fn applied to x in batches (one compiled shape); returns numpy results for all rows."""
    b = padded_batch_size(batch_size, len(x))
    jfn = jax.jit(fn)
    out = []
    for xb, _, mask in padded_batches(x, np.zeros(len(x), np.int32), b):
        out.append(np.asarray(jfn(shard_batch(xb)))[mask])
    return np.concatenate(out)


def accuracy(logits_fn, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of logits_fn on (x, y), in [0, 1]."""
    preds = map_batches(lambda xb: jnp.argmax(logits_fn(xb), -1), x, batch_size)
    return float(np.mean(preds == y))
