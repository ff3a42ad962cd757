"""Layers with a CPU-friendly formulation of the same math.

On XLA:CPU a small convolution and the gradient of `max_pool` (select-and-scatter) dominate
an attack step on LeNet-5. `Conv` can compute a convolution as one einsum over stacked
shifted windows (im2col) and `max_pool_2x2` as a reshape-max, which XLA:CPU fuses well:
a PGD-20 step on LeNet-5 drops from about 28 ms to 13 ms per batch of 128 on 2 cores
(BENCHMARKS.md). Results equal the XLA convolution up to float summation order.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def conv_im2col(x, kernel, padding: str):
    """Stride-1 NHWC convolution as an einsum over the kh*kw shifted windows."""
    kh, kw, cin, cout = kernel.shape
    if padding == "SAME":
        x = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    cols = jnp.stack([x[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)], axis=3)
    return jnp.einsum("bhwpc,pco->bhwo", cols, kernel.reshape(kh * kw, cin, cout))


def resolve_impl(impl: str) -> str:
    """'auto' -> 'im2col' on CPU, 'xla' elsewhere (cuDNN / TPU convolutions are faster)."""
    if impl == "auto":
        return "im2col" if jax.default_backend() == "cpu" else "xla"
    if impl not in ("xla", "im2col"):
        raise ValueError(f"conv impl must be auto, xla or im2col, got {impl!r}")
    return impl


class Conv(nn.Module):
    """A stride-1 convolution with nn.Conv's parameters ('kernel' HWIO, 'bias'), so
    checkpoints are the same whichever `impl` computes it."""
    features: int
    kernel_size: tuple
    padding: str = "SAME"
    impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (kh, kw, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
        if resolve_impl(self.impl) == "im2col":
            y = conv_im2col(x, kernel, self.padding)
        else:
            y = jax.lax.conv_general_dilated(x, kernel, (1, 1), self.padding,
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias


def max_pool_2x2(x):
    """2x2 max pooling, stride 2, VALID (an odd last row/column is dropped), as reshape-max."""
    b, h, w, c = x.shape
    x = x[:, :h - h % 2, :w - w % 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
