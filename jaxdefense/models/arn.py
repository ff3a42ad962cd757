"""ARN's networks (Zhou et al., ICML 2021): encoder E, decoder G, attack discriminator D_A,
image discriminator D_I. Images enter in [0, 1] and are mapped to [-1, 1] inside, as the
reference; G's tanh output is mapped back to [0, 1]. Layer widths scale with `base`
(reference 128, so 128 / 256 / 512 / 1024 and z 2048); 28x28 and 32x32 inputs.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxdefense.models.common import batch_norm


def _check_size(h, w):
    if (h, w) not in ((28, 28), (32, 32)):
        raise ValueError(f"ARN's networks take 28x28 or 32x32 images, got {h}x{w}")


class Encoder(nn.Module):
    """conv+BN+LeakyReLU(0.2): base k4 s2, 2*base (k2 s2 on 28x28, else k4), 4*base k4 s2,
    8*base k4 s2; mean and log-variance heads (conv k4 s2 to 1x1, z_dim channels)."""
    base: int = 128
    z_dim: int = 2048
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        _check_size(*x.shape[1:3])
        h = (2.0 * x - 1.0).astype(self.dtype)
        k2 = 2 if x.shape[1] == 28 else 4
        for c, k in ((self.base, 4), (2 * self.base, k2), (4 * self.base, 4), (8 * self.base, 4)):
            h = nn.Conv(c, (k, k), (2, 2), padding=((1, 1), (1, 1)), dtype=self.dtype)(h)
            h = nn.leaky_relu(batch_norm(train, self.dtype)(h), 0.2)
        head = lambda name: nn.Conv(self.z_dim, (4, 4), (2, 2), padding=((1, 1), (1, 1)),
                                    dtype=self.dtype, name=name)(h)
        mu, logvar = head("mu"), head("logvar")
        return (mu.reshape(len(x), -1).astype(jnp.float32),
                logvar.reshape(len(x), -1).astype(jnp.float32))


class Decoder(nn.Module):
    """Transposed convs + BN + LeakyReLU(0.2) from 1x1: 8*base, 4*base, 2*base (k4 s2 p1),
    base (k2 s2 p1 on 28x28, else k4), channels (k4 s2 p1), tanh; returns [0, 1] images."""
    channels: int = 1
    size: int = 28
    base: int = 128
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z, train: bool = False):
        _check_size(self.size, self.size)
        h = z.reshape(len(z), 1, 1, -1).astype(self.dtype)
        k2 = 2 if self.size == 28 else 4
        # torch ConvTranspose2d(k, s=2, p=1) == flax ConvTranspose padding k - 1 - p per side
        convt = lambda c, k, name=None: nn.ConvTranspose(c, (k, k), (2, 2),
                                                         padding=((k - 2, k - 2),) * 2,
                                                         dtype=self.dtype, name=name)
        for c, k in ((8 * self.base, 4), (4 * self.base, 4), (2 * self.base, 4), (self.base, k2)):
            h = nn.leaky_relu(batch_norm(train, self.dtype)(convt(c, k)(h)), 0.2)
        out = jnp.tanh(convt(self.channels, 4, "out")(h).astype(jnp.float32))
        return (out + 1.0) / 2.0


class AttackDiscriminator(nn.Module):
    """MLP on z: 1024-256-64 (LeakyReLU 0.2, widths scale with base / 128) -> num_attacks."""
    num_attacks: int
    base: int = 128
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z):
        h = z.astype(self.dtype)
        for n in (1024, 256, 64):
            h = nn.leaky_relu(nn.Dense(max(2, n * self.base // 128), dtype=self.dtype)(h), 0.2)
        return nn.Dense(self.num_attacks, dtype=self.dtype)(h).astype(jnp.float32)


class ImageDiscriminator(nn.Module):
    """conv k4 s2 32-64-128-256 (x base / 128, LeakyReLU 0.2, no BN), FC 512, 1 logit
    (real = natural image)."""
    base: int = 128
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = (2.0 * x - 1.0).astype(self.dtype)
        for c in (32, 64, 128, 256):
            h = nn.Conv(max(2, c * self.base // 128), (4, 4), (2, 2), padding=((1, 1), (1, 1)),
                        dtype=self.dtype)(h)
            h = nn.leaky_relu(h, 0.2)
        h = nn.leaky_relu(nn.Dense(max(2, 512 * self.base // 128), dtype=self.dtype)(
            h.reshape(len(x), -1)), 0.2)
        return nn.Dense(1, dtype=self.dtype)(h)[:, 0].astype(jnp.float32)
