"""DiffPure's score network: the DDPM U-Net of `yang-song/score_sde` (models/ddpm.py), in
noise-prediction form eps(x_t, t) for the continuous VP-SDE.

Inputs: x_t in [-1, 1] scale, NHWC; t [B] in (0, 1], embedded as sinusoids of 999 t (the
reference's continuous DDPM convention). ResNet blocks (GroupNorm, swish, 3x3 convs, the
time embedding added after the first conv, dropout), self-attention at `attn_resolutions`,
strided-conv downsampling, nearest upsampling then a 3x3 conv. The reference CIFAR-10 model
(`vp/cifar10_ddpm_continuous`): base 128, channel_mult (1, 2, 2, 2), 2 blocks per
resolution, attention at 16, dropout 0.1.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def timestep_embedding(t, dim: int, max_positions: int = 10000):
    """Sinusoidal embedding [B, dim] of (scaled) times t [B] (DDPM's)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_positions) * jnp.arange(half) / max(half - 1, 1))
    args = t[:, None].astype(jnp.float32) * freqs[None]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], -1)


# score_sde's default_init(scale=0): near zero but not zero, so every layer gets a gradient
_near_zero = nn.initializers.variance_scaling(1e-10, "fan_avg", "uniform")


def _norm(channels: int, dtype):
    """GroupNorm with 32 groups (the reference) or fewer on narrow test-size layers."""
    return nn.GroupNorm(num_groups=math.gcd(min(32, max(1, channels // 4)), channels),
                        dtype=dtype)


class ResBlock(nn.Module):
    features: int
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, temb, train: bool):
        x = nn.Conv(self.features, (3, 3), dtype=self.dtype)(nn.swish(_norm(h.shape[-1], self.dtype)(h)))
        x = x + nn.Dense(self.features, dtype=self.dtype)(nn.swish(temb))[:, None, None]
        x = nn.swish(_norm(self.features, self.dtype)(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Conv(self.features, (3, 3), dtype=self.dtype, kernel_init=_near_zero)(x)
        if h.shape[-1] != self.features:
            h = nn.Dense(self.features, dtype=self.dtype, name="skip")(h)
        return h + x


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, residual."""
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h):
        b, hh, ww, c = h.shape
        x = _norm(c, self.dtype)(h).reshape(b, hh * ww, c)
        q, k, v = (nn.Dense(c, dtype=self.dtype, name=n)(x) for n in ("q", "k", "v"))
        w = jax.nn.softmax(jnp.einsum("bic,bjc->bij", q, k) / math.sqrt(c), axis=-1)
        out = nn.Dense(c, dtype=self.dtype, kernel_init=_near_zero, name="out")(
            jnp.einsum("bij,bjc->bic", w, v))
        return h + out.reshape(b, hh, ww, c)


class ScoreUNet(nn.Module):
    """eps_theta(x_t, t): the noise in x_t = mean(t) x_0 + std(t) eps, same shape as x_t."""
    base: int = 128
    channel_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, t, train: bool = False):
        block = lambda c: ResBlock(c, self.dropout, self.dtype)
        attend = lambda h: AttnBlock(self.dtype)(h) if h.shape[1] in self.attn_resolutions else h
        temb = timestep_embedding(999.0 * t, self.base)
        temb = nn.Dense(4 * self.base, dtype=self.dtype)(temb)
        temb = nn.Dense(4 * self.base, dtype=self.dtype)(nn.swish(temb))
        h = nn.Conv(self.base, (3, 3), dtype=self.dtype)(x.astype(self.dtype))
        skips = [h]
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                h = attend(block(self.base * mult)(h, temb, train))
                skips.append(h)
            if level != len(self.channel_mult) - 1:
                h = nn.Conv(h.shape[-1], (3, 3), (2, 2), dtype=self.dtype)(h)
                skips.append(h)
        h = block(h.shape[-1])(h, temb, train)
        h = AttnBlock(self.dtype)(h) if self.attn_resolutions else h
        h = block(h.shape[-1])(h, temb, train)
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = attend(block(self.base * mult)(jnp.concatenate([h, skips.pop()], -1),
                                                   temb, train))
            if level != 0:
                size = skips[-1].shape[1:3]      # 7 -> 14 -> 28 on MNIST: the skip's size
                h = jax.image.resize(h, (h.shape[0], *size, h.shape[-1]), "nearest")
                h = nn.Conv(h.shape[-1], (3, 3), dtype=self.dtype)(h)
        h = nn.swish(_norm(h.shape[-1], self.dtype)(h))
        out = nn.Conv(x.shape[-1], (3, 3), dtype=self.dtype, kernel_init=_near_zero,
                      name="out")(h)
        return out.astype(jnp.float32)
