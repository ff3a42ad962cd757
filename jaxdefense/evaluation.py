"""Batched evaluation over fixed-shape, padded, device-sharded batches (no recompiles)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdefense import cpu_kernels
from jaxdefense.data import padded_batches
from jaxdefense.sharding import shard_batch, to_host


def padded_batch_size(batch_size: int, n: int) -> int:
    """Round up to a multiple of the device count; no larger than needed for n examples."""
    d = jax.device_count()
    b = min(batch_size, max(n, 1))
    return -(-b // d) * d


@functools.lru_cache(maxsize=64)
def _jit_apply(apply):
    """jax.jit of an `apply(variables, x)` (a module's apply: it holds no parameters, so
    caching it keeps nothing large alive), one per apply."""
    return jax.jit(cpu_kernels.use(apply))


@functools.lru_cache(maxsize=64)
def _top1_apply(apply):
    return lambda v, xb: jnp.argmax(apply(v, xb), -1)


def map_batches(fn, x: np.ndarray, batch_size: int = 256, variables=None) -> np.ndarray:
    """fn applied to x in batches (one compiled shape); returns numpy results for all rows.

    With `variables`, fn(variables, xb) (a flax `apply`): the variables are an argument of
    the compiled function, so a periodic evaluation that passes the same fn with new
    parameters compiles once, not once per call (a closure over the parameters would).
    Without, fn is jitted for this call only (a closure may hold large parameters)."""
    b = padded_batch_size(batch_size, len(x))
    jfn = jax.jit(cpu_kernels.use(fn)) if variables is None else _jit_apply(fn)
    out = []
    for xb, _, mask in padded_batches(x, np.zeros(len(x), np.int32), b):
        xb = shard_batch(xb)
        out.append(to_host(jfn(xb) if variables is None else jfn(variables, xb))[mask])
    return np.concatenate(out)


def accuracy(logits_fn, x: np.ndarray, y: np.ndarray, batch_size: int = 256,
             variables=None) -> float:
    """Top-1 accuracy of logits_fn(x) (or logits_fn(variables, x)) on (x, y), in [0, 1]."""
    top1 = ((lambda xb: jnp.argmax(logits_fn(xb), -1)) if variables is None
            else _top1_apply(logits_fn))
    preds = map_batches(top1, x, batch_size, variables)
    return float(np.mean(preds == y))
