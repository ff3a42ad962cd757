"""ResNet-18 for 32x32 inputs (He et al. 2016, CIFAR stem: one 3x3 conv, no max-pool)."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxdefense.models.common import batch_norm, conv_dtype, normalize


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus (projected) shortcut, then ReLU."""
    channels: int
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        conv = lambda c, k, s: nn.Conv(c, (k, k), (s, s), padding="SAME" if k > 1 else "VALID",
                                       use_bias=False, dtype=conv_dtype(self.dtype, s))
        y = nn.relu(batch_norm(train, self.dtype)(conv(self.channels, 3, self.stride)(x)))
        y = batch_norm(train, self.dtype)(conv(self.channels, 3, 1)(y))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.channels:
            shortcut = batch_norm(train, self.dtype)(conv(self.channels, 1, self.stride)(x))
        return nn.relu(y + shortcut)


class ResNet18(nn.Module):
    """ResNet-18: stem conv3x3(64*width), four stages of two BasicBlocks (64, 128, 256, 512
    times width; strides 1, 2, 2, 2), global average pool, linear.

    feature_hook: an optional module `hook(f, train) -> f` applied to the output of the last
    stage (512x4x4 on 32x32 inputs), where FSR sits in its paper. width scales channels
    (tests use 1/8).
    """
    num_classes: int = 10
    width: float = 1.0
    mean: Sequence[float] = (0.4914, 0.4822, 0.4465)
    std: Sequence[float] = (0.2470, 0.2435, 0.2616)
    dtype: Any = jnp.float32
    feature_hook: Optional[nn.Module] = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        c = lambda n: max(1, int(round(n * self.width)))
        x = normalize(x, self.mean, self.std, self.dtype)
        x = nn.Conv(c(64), (3, 3), padding="SAME", use_bias=False, dtype=self.dtype)(x)
        x = nn.relu(batch_norm(train, self.dtype)(x))
        for i, channels in enumerate((64, 128, 256, 512)):
            for j in range(2):
                x = BasicBlock(c(channels), 2 if (i > 0 and j == 0) else 1, self.dtype)(x, train)
        if self.feature_hook is not None:
            x = self.feature_hook(x, train)
        x = jnp.mean(x, axis=(1, 2))
        self.sow("intermediates", "embedding", x)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)
