"""LVCVAE: a beta-VAE whose latent also feeds a linear rectification head (GRFD's generator).

The encoder sees the normalized image; the decoder reconstructs it in normalized units
(tanh, then BatchNorm as in the reference code); `x_u` is the reconstruction mapped back to
pixel units, so `x_r = x - x_u` is the robust (residual) feature in pixel units.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdefense.models.common import batch_norm, normalize


class ResBlock(nn.Module):
    """LeakyReLU(0.01) - conv3x3 - BN - LeakyReLU - conv1x1, plus identity."""
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        c = x.shape[-1]
        y = nn.Conv(c, (3, 3), padding="SAME", dtype=self.dtype)(nn.leaky_relu(x, 0.01))
        y = batch_norm(train, self.dtype)(y)
        y = nn.Conv(c, (1, 1), dtype=self.dtype)(nn.leaky_relu(y, 0.01))
        return x + y


class ConvEncoder(nn.Module):
    """LeNet-style (MNIST): conv k4 s2 (base) - conv k4 s2 (2*base), BN LeakyReLU(0.2) each."""
    base: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train):
        for c in (self.base, 2 * self.base):
            x = nn.Conv(c, (4, 4), (2, 2), ((1, 1), (1, 1)), use_bias=False,
                        dtype=self.dtype)(x)
            x = nn.leaky_relu(batch_norm(train, self.dtype)(x), 0.2)
        return x


def _upsample_twice(h, base, channels, slope, dtype, train):
    """Both decoders' tail, inside the calling module (names ConvTranspose_0, BatchNorm_k,
    ConvTranspose_1): transposed conv to `base`, BN, LeakyReLU(slope), transposed conv to
    `channels`; each 4x4 stride 2."""
    up = lambda c, i: nn.ConvTranspose(c, (4, 4), (2, 2), "SAME", dtype=dtype,
                                       name=f"ConvTranspose_{i}")
    h = nn.leaky_relu(batch_norm(train, dtype)(up(base, 0)(h)), slope)
    return up(channels, 1)(h)


class ConvDecoder(nn.Module):
    """Two 4x4 stride-2 transposed convs (base, then channels), BN LeakyReLU(0.2) between."""
    base: int
    channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, train):
        return _upsample_twice(h, self.base, self.channels, 0.2, self.dtype, train)


class ResidualEncoder(nn.Module):
    """Reference CIFAR encoder: conv k4 s2 (base) BN ReLU, conv k4 s2 (2*base) BN ReLU,
    ResBlock, BN, ResBlock."""
    base: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train):
        for c in (self.base, 2 * self.base):
            x = nn.Conv(c, (4, 4), (2, 2), ((1, 1), (1, 1)), use_bias=False,
                        dtype=self.dtype)(x)
            x = nn.relu(batch_norm(train, self.dtype)(x))
        x = ResBlock(self.dtype)(x, train)
        x = batch_norm(train, self.dtype)(x)
        return ResBlock(self.dtype)(x, train)


class ResidualDecoder(nn.Module):
    """(ResBlock, BN) x 2, then transposed convs as ConvDecoder with LeakyReLU(0.01)."""
    base: int
    channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, train):
        for _ in range(2):
            h = ResBlock(self.dtype)(h, train)
            h = batch_norm(train, self.dtype)(h)
        return _upsample_twice(h, self.base, self.channels, 0.01, self.dtype, train)


class LVCVAE(nn.Module):
    """Encoder -> (mu, logvar) -> z -> decoder, and the rectification head z -> logits.

    kind: 'conv' (MNIST, z 256, base 32) or 'residual' (CIFAR, z 2048, base 16). Image
    height and width must be divisible by 4. In training z = mu + exp(logvar / 2) * n with n
    from the 'sample' rng; in evaluation z = mu, so G is deterministic. rectifier=False
    drops the head (CD-VAE); logits_z is then None.
    """
    num_classes: int
    z_dim: int = 256
    kind: str = "conv"
    base: int = 32
    mean: Sequence[float] = (0.1307,)
    std: Sequence[float] = (0.3081,)
    dtype: Any = jnp.float32
    rectifier: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.kind not in ("conv", "residual"):
            raise ValueError(f"LVCVAE kind must be 'conv' or 'residual', got {self.kind!r}")
        _, h, w, c = x.shape
        if h % 4 or w % 4:
            raise ValueError(f"LVCVAE needs height and width divisible by 4, got {h}x{w}")
        enc, dec = ((ConvEncoder, ConvDecoder) if self.kind == "conv"
                    else (ResidualEncoder, ResidualDecoder))
        feat = enc(self.base, self.dtype, name="encoder")(
            normalize(x, self.mean, self.std, self.dtype), train)
        feat = feat.reshape(feat.shape[0], -1)
        mu = nn.Dense(self.z_dim, dtype=self.dtype, name="mu")(feat).astype(jnp.float32)
        logvar = nn.Dense(self.z_dim, dtype=self.dtype, name="logvar")(feat).astype(jnp.float32)
        if train:
            noise = jax.random.normal(self.make_rng("sample"), mu.shape)
            z = mu + jnp.exp(0.5 * logvar) * noise
        else:
            z = mu
        dec_c = 2 * self.base
        hid = nn.Dense((h // 4) * (w // 4) * dec_c, dtype=self.dtype, name="project")(z)
        hid = hid.reshape(-1, h // 4, w // 4, dec_c)
        decoder = dec(self.base, c, self.dtype, name="decoder")
        recon = jnp.tanh(decoder(hid, train))
        recon = batch_norm(train, self.dtype)(recon).astype(jnp.float32)   # normalized units
        x_u = recon * jnp.asarray(self.std) + jnp.asarray(self.mean)  # pixel units
        logits_z = (nn.Dense(self.num_classes, dtype=self.dtype, name="rectifier")(z)
                    .astype(jnp.float32) if self.rectifier else None)
        return dict(mu=mu, logvar=logvar, z=z, recon=recon, x_u=x_u, logits_z=logits_z)
