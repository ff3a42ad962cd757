"""LeNet-5 (LeCun et al. 1998) with ReLU and max pooling: the MNIST target and RSM."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxdefense.models.common import normalize


class LeNet5(nn.Module):
    """conv5x5(6, same) - pool - conv5x5(16, valid) - pool - fc120 - fc84 - fc classes.

    `width` scales every layer (1.0 is the original; tests use less). Inputs NHWC in pixel
    units, normalized here with (mean, std).
    """
    num_classes: int = 10
    width: float = 1.0
    mean: Sequence[float] = (0.1307,)
    std: Sequence[float] = (0.3081,)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        w = lambda n: max(1, int(round(n * self.width)))
        x = normalize(x, self.mean, self.std, self.dtype)
        x = nn.relu(nn.Conv(w(6), (5, 5), padding="SAME", dtype=self.dtype)(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(w(16), (5, 5), padding="VALID", dtype=self.dtype)(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(w(120), dtype=self.dtype)(x))
        x = nn.relu(nn.Dense(w(84), dtype=self.dtype)(x))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
