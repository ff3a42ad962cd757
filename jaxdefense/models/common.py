"""Pieces shared by the models: input normalization inside the model."""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp


def normalize(x, mean: Sequence[float], std: Sequence[float], dtype=jnp.float32):
    """(x - mean) / std per channel; x is NHWC in pixel units ([0, 1] for images)."""
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return ((x - mean) / std).astype(dtype)
