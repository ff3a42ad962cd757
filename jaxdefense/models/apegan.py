"""APE-GAN's networks (Jin et al., ICASSP 2019), as in the public reimplementation
`owruby/APE-GAN` (models.py): a four-layer conv encoder-decoder generator and a
three-conv discriminator. LeakyReLU with torch's default slope 0.01 throughout.

- G: conv 4x4 s2 p1 (base) + BN, conv 4x4 s2 p1 (2 base) + BN, transposed conv 4x4 s2 p1
  (base) + BN, each + LeakyReLU; transposed conv 4x4 s2 p1 (channels), tanh. The
  reference uses base 64, takes [0, 1] pixels and compares the tanh output with them
  directly; here G sees 2x - 1 and its tanh is mapped back to [0, 1] (images stay in
  [0, 1] without a clip, whose flat parts would hide gradients from a white-box attack).
  Sizes divisible by 4 (28x28, 32x32).
- D: conv 3x3 s2 unpadded (base), conv 3x3 s2 (2 base) + BN, conv 3x3 s2 (4 base) + BN,
  each + LeakyReLU; dense to one logit (the reference's sigmoid lives in the loss).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxdefense.models.common import batch_norm


SLOPE = 0.01          # torch.nn.functional.leaky_relu's default, as the reference calls it


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
            h = nn.leaky_relu(batch_norm(train, self.dtype)(h), SLOPE)
        # torch ConvTranspose2d(k=4, s=2, p=1) == flax ConvTranspose k4 s2 'SAME' (2 per side)
        up = lambda c, name: nn.ConvTranspose(c, (4, 4), (2, 2), "SAME", dtype=self.dtype,
                                              name=name)
        h = nn.leaky_relu(batch_norm(train, self.dtype)(up(self.base, "ConvTranspose_0")(h)),
                          SLOPE)
        h = jnp.tanh(up(x.shape[-1], "out")(h))
        return ((h.astype(jnp.float32) + 1.0) / 2.0)


class Discriminator(nn.Module):
    base: int = 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = (2.0 * x - 1.0).astype(self.dtype)
        for i, c in enumerate((self.base, 2 * self.base, 4 * self.base)):
            h = nn.Conv(c, (3, 3), (2, 2), padding="VALID", dtype=self.dtype)(h)
            if i:
                h = batch_norm(train, self.dtype)(h)
            h = nn.leaky_relu(h, SLOPE)
        return nn.Dense(1, dtype=self.dtype)(h.reshape(len(x), -1))[:, 0].astype(jnp.float32)
