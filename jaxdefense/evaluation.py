"""Batched evaluation over fixed-shape, padded, device-sharded batches (no recompiles)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxdefense.data import padded_batches
from jaxdefense.sharding import shard_batch


def _batch_size(batch_size: int, n: int) -> int:
    """Round up to a multiple of the device count; no larger than needed for n examples."""
    d = jax.device_count()
    b = min(batch_size, max(n, 1))
    return -(-b // d) * d


def map_batches(fn, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """fn applied to x in batches (one compiled shape); returns numpy results for all rows."""
    b = _batch_size(batch_size, len(x))
    jfn = jax.jit(fn)
    out = []
    for xb, _, mask in padded_batches(x, np.zeros(len(x), np.int32), b):
        out.append(np.asarray(jfn(shard_batch(xb)))[mask])
    return np.concatenate(out)


def accuracy(logits_fn, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of logits_fn on (x, y), in [0, 1]."""
    preds = map_batches(lambda xb: jnp.argmax(logits_fn(xb), -1), x, batch_size)
    return float(np.mean(preds == y))


def robust_accuracy(logits_fn, attack, x: np.ndarray, y: np.ndarray, key, *,
                    batch_size: int = 256, desc: str | None = None, **params) -> dict:
    """Accuracy of logits_fn on attack(logits_fn, x, y, key, **params), per batch.

    Returns {'clean': .., 'robust': .., 'max_linf': largest |x_adv - x|}. Attack-crafting
    and checking run per fixed-shape batch; the key is folded with the batch index.
    """
    b = _batch_size(batch_size, len(x))
    predict = jax.jit(lambda xb: jnp.argmax(logits_fn(xb), -1))
    clean = robust = 0
    max_linf = 0.0
    batches = padded_batches(x, y, b)
    for i, (xb, yb, mask) in enumerate(tqdm(batches, total=-(-len(x) // b), desc=desc,
                                            disable=desc is None, leave=False)):
        xb, yb = shard_batch((xb, yb))
        x_adv = attack(logits_fn, xb, yb, jax.random.fold_in(key, i), **params)
        ok_clean = np.asarray(predict(xb) == yb) & mask
        ok_adv = np.asarray(predict(x_adv) == yb) & mask
        clean += int(ok_clean.sum())
        robust += int((ok_adv & ok_clean).sum())
        max_linf = max(max_linf, float(np.max(np.abs(np.asarray(x_adv - xb))[mask])))
    return dict(clean=clean / len(x), robust=robust / len(x), max_linf=max_linf)
