"""Small parts the attacks are built from: argument checks, projection, input gradients."""
from __future__ import annotations

import numbers

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


def bucket_size(n: int, total: int) -> int:
    """The smallest power of two >= n, at most `total`, a multiple of the device count: the
    batch size robust points are gathered into (at most log2(total) shapes compile)."""
    d = jax.device_count()
    size = min(total, 1 << max(0, (n - 1).bit_length()))
    return min(total, -(-size // d) * d)


def gather_bucket(idx: np.ndarray, total: int) -> np.ndarray:
    """idx padded to `bucket_size(len(idx), total)` by repeating its first entry."""
    size = bucket_size(len(idx), total)
    return np.concatenate([idx, np.full(size - len(idx), idx[0])])
