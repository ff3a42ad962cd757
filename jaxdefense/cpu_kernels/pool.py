"""2x2 max pooling (stride 2, 'VALID') as pairwise maxima, with the derivative that
`nn.max_pool` has: a window's derivative goes to its first maximum in row-major order.

XLA:CPU runs the gradient of `reduce_window` max (select-and-scatter) slowly; here the
forward pass keeps its three comparisons and the backward pass sends each window's
cotangent to the chosen element with selects and a reshape. A custom_vjp: reverse mode to
any order (GRFD's L_rb differentiates the input gradient again), no forward mode.

`rtol`: values within rtol (relative) of each other count as tied (0: exactly equal ones).
TIE_RTOL undoes the rounding of a convolution computed in another summation order
(`conv.conv_banded`), which leaves the equal patches of a uniform background a few ulps
apart: the input gradient then goes where XLA's convolution would have sent it (the
harness hands the attacks `cpu_kernels.attacked(f)`, which is `use(f, ties="rounding")`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# Relative gap below which two pooled values count as tied (2^-19, about 16 float32 ulps):
# the banded product rounds an output by its column within the block, so equal patches of
# MNIST's normalized background give a first layer's outputs up to ~8 ulps apart.
TIE_RTOL = 2.0 ** -19


def _beats(later, first, rtol: float):
    """Whether `later` is larger than `first` by more than rtol (relative)."""
    if not rtol:
        return later > first
    return later - first > rtol * jnp.maximum(jnp.abs(later), jnp.abs(first))


def _windows(x):
    b, h, w, c = x.shape
    q = x.reshape(b, h // 2, 2, w // 2, 2, c)
    return q[:, :, 0, :, 0], q[:, :, 0, :, 1], q[:, :, 1, :, 0], q[:, :, 1, :, 1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _pool(x, rtol):
    a, b, c, d = _windows(x)
    return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))


def _scatter(choices, g):
    """Each window's cotangent to its chosen element, zeros elsewhere."""
    right_top, right_bottom, lower = choices
    zero = jnp.zeros_like(g)
    split = lambda take, gg: (jnp.where(take, zero, gg), jnp.where(take, gg, zero))
    g_top, g_bottom = split(lower, g)
    row = lambda gg, right: jnp.stack(split(right, gg), 3)            # [B, h/2, w/2, 2, C]
    out = jnp.stack([row(g_top, right_top), row(g_bottom, right_bottom)], 2)
    b, h2, _, w2, _, c = out.shape
    return out.reshape(b, 2 * h2, 2 * w2, c)


def _pool_fwd(x, rtol):
    a, b, c, d = _windows(x)
    top, bottom = jnp.maximum(a, b), jnp.maximum(c, d)
    choices = (_beats(b, a, rtol), _beats(d, c, rtol), _beats(bottom, top, rtol))
    return jnp.maximum(top, bottom), choices


def _pool_bwd(rtol, choices, g):
    return (_scatter(choices, g),)


_pool.defvjp(_pool_fwd, _pool_bwd)


def max_pool_2x2(x, rtol: float = 0.0):
    """2x2 max pooling, stride 2, 'VALID', of NHWC x (an odd last row / column is dropped):
    `nn.max_pool(x, (2, 2), (2, 2))`'s values and derivative, ties within `rtol` (module
    doc)."""
    _, h, w, _ = x.shape
    return _pool(x[:, :h - h % 2, :w - w % 2], float(rtol))
