"""Batched evaluation over fixed-shape, padded, device-sharded batches (no recompiles)."""
from __future__ import annotations

import collections
import functools

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


_JITTED: "collections.OrderedDict[int, tuple]" = collections.OrderedDict()


def _jitted(fn):
    """jax.jit(fn), one per function object (kept alive while cached, so its id is not
    reused): calling again with the same fn and new arguments compiles nothing new."""
    hit = _JITTED.get(id(fn))
    if hit is not None and hit[0] is fn:
        _JITTED.move_to_end(id(fn))
        return hit[1]
    _JITTED[id(fn)] = (fn, jax.jit(fn))
    while len(_JITTED) > 128:
        _JITTED.popitem(last=False)
    return _JITTED[id(fn)][1]


def map_batches(fn, x: np.ndarray, batch_size: int = 256, variables=None) -> np.ndarray:
    """fn applied to x in batches (one compiled shape); returns numpy results for all rows.

    With `variables`, fn(variables, xb) (a flax `apply`): the variables are an argument of
    the compiled function, so a periodic evaluation that passes the same fn with new
    parameters compiles once, not once per call (a closure over the parameters would)."""
    b = padded_batch_size(batch_size, len(x))
    jfn = _jitted(fn)
    out = []
    for xb, _, mask in padded_batches(x, np.zeros(len(x), np.int32), b):
        xb = shard_batch(xb)
        out.append(np.asarray(jfn(xb) if variables is None else jfn(variables, xb))[mask])
    return np.concatenate(out)


@functools.lru_cache(maxsize=128)
def _top1(fn, with_variables: bool):
    if with_variables:
        return lambda v, xb: jnp.argmax(fn(v, xb), -1)
    return lambda xb: jnp.argmax(fn(xb), -1)


def accuracy(logits_fn, x: np.ndarray, y: np.ndarray, batch_size: int = 256,
             variables=None) -> float:
    """Top-1 accuracy of logits_fn(x) (or logits_fn(variables, x)) on (x, y), in [0, 1]."""
    try:
        top1 = _top1(logits_fn, variables is not None)
    except TypeError:                     # an unhashable callable: no reuse across calls
        top1 = _top1.__wrapped__(logits_fn, variables is not None)
    preds = map_batches(top1, x, batch_size, variables)
    return float(np.mean(preds == y))
