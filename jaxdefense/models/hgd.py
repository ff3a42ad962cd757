"""HGD's denoiser (Liao et al., CVPR 2018): the U-Net-like DUNET of `lfz/Guided-Denoise`
(`Exps/sample/inception.py`), predicting the negative noise: x_hat = x + D(x).

Blocks are 3x3 convolutions without bias, BatchNorm, ReLU. The encoder has one level per
entry of `levels` (channels), the first with 2 blocks and the others with 3, each level
after the first starting with a stride-2 block (sizes rounded up: 28, 14, 7). The decoder
goes back up level by level: bilinear upsampling to the skip's exact size, concatenation
with the encoder's features there, 3 blocks (2 at full resolution), then a 1x1 convolution
without bias to the image's channels, added to the input. The reference has five levels of
64-256 channels for 299x299 images; `levels` (default 32, 64, 128) fits 28x28 ones. It sees
2x - 1 (the reference's [-1, 1] images); the output is not clipped, as the reference's.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdefense.models.common import batch_norm


class Block(nn.Module):
    channels: int
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(self.channels, (3, 3), (self.stride, self.stride), padding="SAME",
                    use_bias=False, dtype=self.dtype)(x)
        return nn.relu(batch_norm(train, self.dtype)(x))


class Denoiser(nn.Module):
    levels: Sequence[int] = (32, 64, 128)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = (2.0 * x - 1.0).astype(self.dtype)
        skips = []
        for i, c in enumerate(self.levels):
            for j in range(2 if i == 0 else 3):
                h = Block(c, 2 if (i > 0 and j == 0) else 1, self.dtype)(h, train)
            skips.append(h)
        for i in range(len(self.levels) - 2, -1, -1):
            skip = skips[i]
            h = jax.image.resize(h, (h.shape[0], *skip.shape[1:3], h.shape[-1]), "bilinear")
            h = jnp.concatenate([h, skip], axis=-1)
            for _ in range(2 if i == 0 else 3):
                h = Block(self.levels[i], 1, self.dtype)(h, train)
        noise = nn.Conv(x.shape[-1], (1, 1), use_bias=False, dtype=self.dtype,
                        name="final")(h)
        return x + noise.astype(jnp.float32) / 2          # [-1, 1] units back to [0, 1]
