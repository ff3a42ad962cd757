"""LeNet-5 (LeCun et al. 1998) with ReLU and max pooling: the MNIST target and RSM."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxdefense.models.common import MaxPool, normalize


class LeNet5(nn.Module):
    """conv5x5(6, same) - pool - conv5x5(16, valid) - pool - fc120 - fc84 - fc classes.

    `width` scales every layer (1.0 is the original; tests use less). Inputs NHWC in pixel
    units, normalized here with (mean, std). Plain Flax layers (`jaxdefense.cpu_kernels`
    computes them faster on CPU).
    feature_hook: an optional module `hook(f, train) -> f` applied to the last feature map
    (16x5x5 at width 1), e.g. FSR.
    """
    num_classes: int = 10
    width: float = 1.0
    mean: Sequence[float] = (0.1307,)
    std: Sequence[float] = (0.3081,)
    dtype: Any = jnp.float32
    feature_hook: Optional[nn.Module] = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        w = lambda n: max(1, int(round(n * self.width)))
        x = normalize(x, self.mean, self.std, self.dtype)
        conv = lambda n, pad, name: nn.Conv(n, (5, 5), padding=pad, dtype=self.dtype,
                                            name=name)
        # pool before relu: the same values and gradients (max and relu commute), on 4x
        # fewer elements
        x = nn.relu(MaxPool()(conv(w(6), "SAME", "Conv_0")(x)))
        x = nn.relu(MaxPool()(conv(w(16), "VALID", "Conv_1")(x)))
        if self.feature_hook is not None:
            x = self.feature_hook(x, train)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(w(120), dtype=self.dtype)(x))
        x = nn.relu(nn.Dense(w(84), dtype=self.dtype)(x))
        self.sow("intermediates", "embedding", x)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)


class AdvertorchLeNet5(LeNet5):
    """advertorch's `test_utils.LeNet5` (the target of the ARN paper's MNIST tables):
    conv3x3(32, same) - pool - conv3x3(64, same) - pool - fc200 - fc classes, ReLU.

    LeNet5's fields: `width` scales every layer (tests use less); inputs NHWC in pixel units,
    normalized here with (mean, std) (advertorch's takes [0, 1] pixels as they are);
    feature_hook on the last feature map (64x7x7 at width 1).
    """

    @nn.compact
    def __call__(self, x, train: bool = False):
        w = lambda n: max(1, int(round(n * self.width)))
        x = normalize(x, self.mean, self.std, self.dtype)
        for i, c in enumerate((32, 64)):
            x = nn.Conv(w(c), (3, 3), padding="SAME", dtype=self.dtype, name=f"Conv_{i}")(x)
            x = nn.relu(MaxPool()(x))            # pool before relu: the same values
        if self.feature_hook is not None:
            x = self.feature_hook(x, train)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(w(200), dtype=self.dtype)(x))
        self.sow("intermediates", "embedding", x)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)
