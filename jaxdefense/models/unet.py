"""A small U-Net that predicts a residual: IDFR's input denoiser ID(x) = clip(x + U(x))."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdefense.models.common import batch_norm, normalize


class ConvBNReLU(nn.Module):
    features: int
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(self.features, (3, 3), (self.stride, self.stride), padding="SAME",
                    use_bias=False, dtype=self.dtype)(x)
        return nn.relu(batch_norm(train, self.dtype)(x))


class UNet(nn.Module):
    """Contracting path: two 3x3 convs (base), then stride-2 convs to 2*base, 4*base, 4*base;
    expanding path: bilinear upsampling to the skip's size, concatenation, a 3x3 conv
    (4*base, 2*base, base); a 1x1 conv predicts the residual. 3x3 convs carry BN + ReLU.
    IDFR's reference uses base 64 (64 / 128 / 256 / 256). Output: x + residual, clipped to
    [0, 1] (pixel units, like the input).
    """
    base: int = 64
    mean: Sequence[float] = (0.1307,)
    std: Sequence[float] = (0.3081,)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        b = self.base
        h = normalize(x, self.mean, self.std, self.dtype)
        h = ConvBNReLU(b, 1, self.dtype)(ConvBNReLU(b, 1, self.dtype)(h, train), train)
        skips = [h]
        for c in (2 * b, 4 * b, 4 * b):
            h = ConvBNReLU(c, 2, self.dtype)(h, train)
            skips.append(h)
        skips.pop()
        for c in (4 * b, 2 * b, b):
            skip = skips.pop()
            h = jax.image.resize(h, (h.shape[0], *skip.shape[1:3], h.shape[3]), "bilinear")
            h = ConvBNReLU(c, 1, self.dtype)(jnp.concatenate([h, skip], -1), train)
        residual = nn.Conv(x.shape[-1], (1, 1), dtype=self.dtype, name="residual")(h)
        return jnp.clip(x + residual.astype(jnp.float32), 0.0, 1.0)


class FeatureRestorer(nn.Module):
    """IDFR's feature restorer on a classifier embedding [B, D] -> [B, D]: dense layers
    narrowing by halves (`depth` times) and widening back, with skip additions between
    equal widths, BN + ReLU after each hidden layer; the last layer maps back to D.
    The reference (D = 256): 256-128-64-32 then 64-128-256."""
    depth: int = 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, e, train: bool = False):
        d = e.shape[-1]
        dense_bn = lambda n, t: nn.relu(batch_norm(train, self.dtype)(
            nn.Dense(n, dtype=self.dtype)(t)))
        h, skips = e.astype(self.dtype), []
        for i in range(1, self.depth + 1):
            skips.append(h)
            h = dense_bn(max(1, d >> i), h)
        for i in range(self.depth - 1, 0, -1):
            h = dense_bn(max(1, d >> i), h) + skips[i]
        return nn.Dense(d, dtype=self.dtype, name="out")(h).astype(jnp.float32) + e
