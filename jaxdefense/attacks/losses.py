"""Per-sample attack losses on logits [B, K] and labels [B]; each returns [B], to maximize."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits, y):
    """Softmax cross-entropy of the true class (untargeted: maximize)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def margin(logits, y):
    """C&W-Linf margin: max_{i != y} z_i - z_y (positive once misclassified)."""
    z_y = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    other = jnp.where(jax.nn.one_hot(y, logits.shape[1], dtype=bool), -jnp.inf, logits)
    return jnp.max(other, axis=1) - z_y


def dlr(logits, y):
    """Difference of logits ratio (Croce & Hein 2020): -(z_y - max_{i!=y} z_i)/(z_1 - z_3)."""
    s = jnp.sort(logits, axis=1)
    return margin(logits, y) / (s[:, -1] - s[:, -3] + 1e-12)


LOSSES = {"ce": cross_entropy, "margin": margin, "dlr": dlr}


def get_loss(name: str):
    if name not in LOSSES:
        raise ValueError(f"unknown attack loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]


def dlr_targeted(logits, y, target):
    """Targeted DLR (Croce & Hein 2020): -(z_y - z_t) / (z_1 - (z_3 + z_4) / 2); [B].

    Needs at least 4 classes; maximizing it moves the prediction toward `target`.
    """
    if logits.shape[1] < 4:
        raise ValueError(f"the targeted DLR loss (APGD-T) needs at least 4 classes, got "
                         f"{logits.shape[1]}")
    s = jnp.sort(logits, axis=1)
    z_y = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    z_t = jnp.take_along_axis(logits, target[:, None], axis=1)[:, 0]
    return -(z_y - z_t) / (s[:, -1] - 0.5 * (s[:, -3] + s[:, -4]) + 1e-12)
