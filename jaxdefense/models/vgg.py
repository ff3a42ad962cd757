"""VGG16 with BatchNorm for 32x32 inputs (Simonyan & Zisserman 2015; CIFAR variant)."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxdefense.models.common import MaxPool, batch_norm, normalize

# Five conv blocks (channels of each 3x3 conv), each followed by 2x2 max pooling.
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGG16BN(nn.Module):
    """Five blocks of conv3x3-BN-ReLU with 2x2 max pooling after each, then a linear layer
    on the 512 x 1 x 1 feature (32x32 inputs).

    feature_hook: an optional module `hook(f, train) -> f` applied after the fourth conv
    block's convolutions (512x4x4 on 32x32 inputs, before its pooling), where FSR sits in
    its paper. width scales channels (tests use 1/8).
    """
    num_classes: int = 10
    width: float = 1.0
    mean: Sequence[float] = (0.4914, 0.4822, 0.4465)
    std: Sequence[float] = (0.2470, 0.2435, 0.2616)
    dtype: Any = jnp.float32
    feature_hook: Optional[nn.Module] = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        if min(x.shape[1:3]) < 32:
            raise ValueError(f"VGG16BN pools five times and needs images of at least 32x32, "
                             f"got {x.shape[1]}x{x.shape[2]}")
        x = normalize(x, self.mean, self.std, self.dtype)
        for b, block in enumerate(VGG16_BLOCKS):
            for channels in block:
                x = nn.Conv(max(1, int(round(channels * self.width))), (3, 3), padding="SAME",
                            dtype=self.dtype)(x)
                x = nn.relu(batch_norm(train, self.dtype)(x))
            if b == 3 and self.feature_hook is not None:
                x = self.feature_hook(x, train)
            x = MaxPool()(x)
        x = jnp.mean(x, axis=(1, 2))   # 1x1 on 32x32 inputs; also accepts larger images
        self.sow("intermediates", "embedding", x)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)
