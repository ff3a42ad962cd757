"""Small parts the attacks are built from: argument checks, projection, input gradients."""
from __future__ import annotations

import numbers
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxdefense.attacks.norms import project_linf  # noqa: F401 (re-exported)


def check_budget(eps, step_size=None, steps=None):
    """Reject negative or non-finite budgets early, when they are concrete numbers."""
    for name, v in (("eps", eps), ("step_size", step_size)):
        if isinstance(v, (numbers.Number, np.ndarray)) and not (np.all(np.isfinite(v))
                                                               and np.all(np.asarray(v) >= 0)):
            raise ValueError(f"{name} must be finite and >= 0, got {v}")
    if steps is not None and (not isinstance(steps, numbers.Integral) or steps < 1):
        raise ValueError(f"steps must be a positive integer, got {steps}")


def check_pixels(x) -> None:
    """Reject images an attack or a model cannot use: integer dtypes (scale uint8 by 1/255
    first), non-finite values, floats outside [0, 1]. Checked when x is concrete (not
    inside a traced function)."""
    if isinstance(x, jax.core.Tracer):
        return
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"images must be float in [0, 1], got dtype {x.dtype} "
                         f"(uint8 images: divide by 255)")
    if x.size == 0:
        return
    bad, lo, hi = (float(v) for v in jax.device_get(_pixel_stats(x)))
    if bad:
        raise ValueError(f"images contain {int(bad)} non-finite values")
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"images must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}] "
                         f"(0-255 images: divide by 255)")


@jax.jit
def _pixel_stats(x):
    """(non-finite count, min, max) computed where x lives: three scalars come back, not the
    images (which, sharded over several processes, no one process holds)."""
    finite = jnp.isfinite(x)
    return (jnp.sum(~finite), jnp.min(jnp.where(finite, x, jnp.inf)),
            jnp.max(jnp.where(finite, x, -jnp.inf)))


def check_images(x, y):
    if x.ndim != 4:
        raise ValueError(f"images must be NHWC [B, H, W, C], got shape {x.shape}")
    if y.shape != x.shape[:1]:
        raise ValueError(f"labels must have shape {x.shape[:1]}, got {y.shape}")
    check_pixels(x)


def call_logits(logits_fn, x, key=None, stochastic: bool = False):
    """logits_fn(x), or logits_fn(x, key) for a model with randomness (stochastic=True)."""
    return logits_fn(x, key) if stochastic else logits_fn(x)


@partial(jax.jit, static_argnames=("logits_fn", "stochastic"))
def jit_logits(logits_fn, x, key=None, stochastic: bool = False):
    """call_logits compiled once per (logits_fn, shapes): for the attacks' host-side checks."""
    return call_logits(logits_fn, x, key, stochastic)


def loss_and_grad(logits_fn, loss_fn, x, y, key=None, eot_samples: int = 1,
                  stochastic: bool = False):
    """Per-sample loss [B], logits and the gradient of the summed loss w.r.t. x.

    With stochastic=True the model is called as logits_fn(x, key) for `eot_samples` keys
    split from `key` (vmapped) and loss, logits and gradient are averaged over the draws
    (Expectation over Transformation). Summing per-sample losses keeps gradients per sample.
    """
    def one(k):
        def total(xa):
            logits = call_logits(logits_fn, xa, k, stochastic)
            losses = loss_fn(logits, y)
            return losses.sum(), (losses, logits)
        (_, (losses, logits)), g = jax.value_and_grad(total, has_aux=True)(x)
        return losses, logits, g

    if not stochastic:
        return one(None)
    out = jax.vmap(one)(jax.random.split(key, eot_samples))
    return jax.tree.map(lambda a: jnp.mean(a, axis=0), out)


def keep_best(x_new, losses, fooled, best):
    """Per sample, replace (best_x, best_loss, best_fooled) by the new point when it fools
    the model and the best does not, or both agree on fooling and its loss is higher."""
    bx, bl, bf = best
    upd = (fooled & ~bf) | ((fooled == bf) & (losses > bl))
    shape = (-1,) + (1,) * (x_new.ndim - 1)
    return (jnp.where(upd.reshape(shape), x_new, bx), jnp.where(upd, losses, bl),
            jnp.where(upd, fooled, bf))


def init_best(x):
    return x, jnp.full((x.shape[0],), -jnp.inf), jnp.zeros((x.shape[0],), bool)


BUCKETS = ("fine", "pow2")


def check_buckets(buckets) -> None:
    if buckets not in BUCKETS:
        raise ValueError(f"buckets must be one of {BUCKETS}, got {buckets!r}")


def bucket_size(n: int, total: int, buckets: str = "fine") -> int:
    """The batch size n robust points are gathered into, at most `total`, a multiple of the
    device count. 'fine': the smallest of 1, 2, 3, 4, 6, 8, 12, ... (powers of two and 1.5
    times them) >= n: at most 2 log2(total) shapes compile, the padding costs at most 1.5x
    the work. 'pow2': the smallest power of two >= n: at most log2(total) shapes, up to 2x."""
    check_buckets(buckets)
    d = jax.device_count()
    size = 1 << max(0, (n - 1).bit_length())
    if buckets == "fine" and size >= 4 and n <= 3 * size // 4:
        size = 3 * size // 4
    return min(total, -(-size // d) * d)


def gather_bucket(idx: np.ndarray, total: int, buckets: str = "fine") -> np.ndarray:
    """idx padded to `bucket_size(len(idx), total, buckets)` by repeating its first entry."""
    size = bucket_size(len(idx), total, buckets)
    return np.concatenate([idx, np.full(size - len(idx), idx[0])])


def on_host(*args) -> bool:
    """Whether work on these arrays can be staged from the host (dropping fooled points):
    none is a tracer (the call is not inside jit / grad / vmap) and this process holds each
    one whole (not a batch spread over several processes)."""
    leaves = jax.tree.leaves(args)
    return not any(isinstance(a, jax.core.Tracer) for a in leaves) and all(
        getattr(a, "is_fully_addressable", True) for a in leaves)


def on_robust_bucket(attack, robust: np.ndarray, buckets: str = "fine"):
    """Run `attack(rows)` on the rows where `robust` [B] (numpy bool) holds, gathered into a
    bucket (`gather_bucket`); returns (rows [n], its outputs cut to those n rows). `attack`
    returns arrays (or a tuple of them) with one row per entry of its `rows`."""
    idx = np.nonzero(robust)[0]
    out = attack(gather_bucket(idx, len(robust), buckets))
    return idx, jax.tree.map(lambda a: a[:len(idx)], out)


def per_target_stages(run, x, y, logits, target_list, key, buckets: str = "fine"):
    """A targeted attack staged on the host, one target class at a time, as the reference
    runs APGD-T and FAB-T. target_list [n, B]: the classes per stage; stage t calls
    `run(x[rows], y[rows], target_list[t][rows], keys[t]) -> (x_adv, score, fooled)`
    (keys = split(key, n)) on the rows still robust (correctly classified by `logits` [B,
    classes] at the start, then not fooled by an earlier stage), gathered into a bucket
    (`gather_bucket`). Per sample keeps the first fooling point, else the highest-score one
    (`keep_best`); rows never attacked keep x. Returns x_adv [B, ...]."""
    keys = jax.random.split(key, target_list.shape[0])
    best = init_best(x)
    robust = np.array(jnp.argmax(logits, 1) == y, bool)
    for t in range(target_list.shape[0]):
        if not robust.any():
            break
        rows, out = on_robust_bucket(
            lambda sub, t=t: run(x[sub], y[sub], target_list[t][sub], keys[t]), robust,
            buckets)
        merged = keep_best(*out, tuple(a[rows] for a in best))
        best = tuple(a.at[rows].set(m) for a, m in zip(best, merged))
        robust[rows] &= ~np.asarray(merged[2])
    return best[0]
