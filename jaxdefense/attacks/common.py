"""Small parts the attacks are built from: argument checks, projection, input gradients."""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np


def check_budget(eps, step_size=None, steps=None):
    """Reject negative or non-finite budgets early, when they are concrete numbers."""
    for name, v in (("eps", eps), ("step_size", step_size)):
        if isinstance(v, (numbers.Number, np.ndarray)) and not (np.all(np.isfinite(v))
                                                               and np.all(np.asarray(v) >= 0)):
            raise ValueError(f"{name} must be finite and >= 0, got {v}")
    if steps is not None and (not isinstance(steps, numbers.Integral) or steps < 1):
        raise ValueError(f"steps must be a positive integer, got {steps}")


def check_images(x, y):
    if x.ndim != 4:
        raise ValueError(f"images must be NHWC [B, H, W, C], got shape {x.shape}")
    if y.shape != x.shape[:1]:
        raise ValueError(f"labels must have shape {x.shape[:1]}, got {y.shape}")


def project_linf(x_adv, x, eps):
    """Into the Linf ball of radius eps around x, then into the image box [0, 1]."""
    return jnp.clip(jnp.clip(x_adv, x - eps, x + eps), 0.0, 1.0)


def loss_and_grad(logits_fn, loss_fn, x, y):
    """Per-sample loss [B] and the gradient of its sum w.r.t. x (per-sample gradients)."""
    def total(xa):
        logits = logits_fn(xa)
        losses = loss_fn(logits, y)
        return losses.sum(), (losses, logits)
    (_, (losses, logits)), g = jax.value_and_grad(total, has_aux=True)(x)
    return losses, logits, g
