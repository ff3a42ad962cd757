"""WideResNet-d-k (Zagoruyko & Komodakis 2016), pre-activation blocks with dropout."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxdefense.models.common import batch_norm, conv_dtype, normalize


class WideBlock(nn.Module):
    channels: int
    stride: int
    dropout: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        bn = lambda: batch_norm(train, self.dtype)
        conv = lambda c, k, s: nn.Conv(c, (k, k), (s, s), padding="SAME" if k > 1 else "VALID",
                                       use_bias=False, dtype=conv_dtype(self.dtype, s))
        out = nn.relu(bn()(x))
        shortcut = x
        if x.shape[-1] != self.channels or self.stride != 1:
            shortcut = conv(self.channels, 1, self.stride)(out)
        y = conv(self.channels, 3, self.stride)(out)
        y = nn.relu(bn()(y))
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        y = conv(self.channels, 3, 1)(y)
        return y + shortcut


class WideResNet(nn.Module):
    """WRN-`depth`-`widen`; depth = 6n + 4. WRN-28-10 with dropout 0.3 is GRFD's CIFAR model.

    Dropout draws from the 'dropout' rng in training mode. feature_hook: an optional module
    `hook(f, train) -> f` applied after the final BN-ReLU (640x8x8 for WRN-34-10 on 32x32),
    where FSR sits in its paper.
    """
    num_classes: int = 10
    depth: int = 28
    widen: int = 10
    dropout: float = 0.3
    mean: Sequence[float] = (0.4914, 0.4822, 0.4465)
    std: Sequence[float] = (0.2470, 0.2435, 0.2616)
    dtype: Any = jnp.float32
    feature_hook: Optional[nn.Module] = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        if (self.depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {self.depth}")
        n = (self.depth - 4) // 6
        x = normalize(x, self.mean, self.std, self.dtype)
        x = nn.Conv(16, (3, 3), padding="SAME", use_bias=False, dtype=self.dtype)(x)
        for i, c in enumerate((16 * self.widen, 32 * self.widen, 64 * self.widen)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                x = WideBlock(c, stride, self.dropout, self.dtype)(x, train)
        x = nn.relu(batch_norm(train, self.dtype)(x))
        if self.feature_hook is not None:
            x = self.feature_hook(x, train)
        x = jnp.mean(x, axis=(1, 2))
        self.sow("intermediates", "embedding", x)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)
