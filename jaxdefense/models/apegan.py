"""APE-GAN's networks (Jin et al., ICASSP 2019), as in the public reimplementation
`owruby/APE-GAN`: a four-layer conv encoder-decoder generator and a three-conv
discriminator. Images enter in [0, 1]; G's tanh output is mapped back to [0, 1].

- G: conv 4x4 s2 (base) + BN + LeakyReLU(0.2), conv 4x4 s2 (2 base) + BN + LeakyReLU,
  transposed conv 4x4 s2 (base) + BN + ReLU, transposed conv 4x4 s2 (channels), tanh.
  The reference uses base 64. 28x28 and 32x32 inputs (any size divisible by 4).
- D: conv 3x3 s2 (base) + LeakyReLU, conv 3x3 s2 (2 base) + BN + LeakyReLU, conv 3x3 s2
  (4 base) + BN + LeakyReLU, dense to one logit (the reference's sigmoid lives in the loss).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


def _bn(train, dtype):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=dtype)


class Generator(nn.Module):
    base: int = 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        if x.shape[1] % 4 or x.shape[2] % 4:
            raise ValueError(f"APE-GAN's generator takes sizes divisible by 4, got {x.shape[1:3]}")
        h = (2.0 * x - 1.0).astype(self.dtype)
        for c in (self.base, 2 * self.base):
            h = nn.Conv(c, (4, 4), (2, 2), padding=((1, 1), (1, 1)), dtype=self.dtype)(h)
            h = nn.leaky_relu(_bn(train, self.dtype)(h), 0.2)
        # torch ConvTranspose2d(k=4, s=2, p=1) == flax ConvTranspose with padding 2 per side
        up = lambda c, name=None: nn.ConvTranspose(c, (4, 4), (2, 2), padding=((2, 2), (2, 2)),
                                                   dtype=self.dtype, name=name)
        h = nn.relu(_bn(train, self.dtype)(up(self.base)(h)))
        h = jnp.tanh(up(x.shape[-1], "out")(h))
        return ((h.astype(jnp.float32) + 1.0) / 2.0)


class Discriminator(nn.Module):
    base: int = 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = (2.0 * x - 1.0).astype(self.dtype)
        for i, c in enumerate((self.base, 2 * self.base, 4 * self.base)):
            h = nn.Conv(c, (3, 3), (2, 2), padding=((1, 1), (1, 1)), dtype=self.dtype)(h)
            if i:
                h = _bn(train, self.dtype)(h)
            h = nn.leaky_relu(h, 0.2)
        return nn.Dense(1, dtype=self.dtype)(h.reshape(len(x), -1))[:, 0].astype(jnp.float32)
