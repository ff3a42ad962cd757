"""Layers with a CPU-friendly formulation of the same math.

On XLA:CPU a small convolution and the gradient of `max_pool` (select-and-scatter) dominate
an attack step on LeNet-5. `Conv` can compute a convolution as one matrix product
(`conv_cpu`: banded kernel matrices over blocks of output columns for small stride-1 layers,
else an einsum over stacked shifted windows, im2col) and `max_pool_2x2` as pairwise maxima
with a gradient that reuses their choices, which XLA:CPU runs well: a LeNet-5 input-gradient
step (batch 128, 2 cores) runs 1.86x as fast as PyTorch's (`bench/attacks_vs_torchattacks.py`,
BENCHMARKS.md).
`Conv(impl='auto')` uses `conv_cpu` while an attack traces it (`fast.fast_layers`), and
elsewhere on CPU the banded form where it applies (it also wins for training's parameter
gradients; im2col does not), XLA's convolution otherwise. `ConvTranspose2x` computes a k4
s2 transposed convolution on CPU as one matrix product of every input pixel with every
kernel tap and an overlap-add of the tap images; a strided `Conv` runs on CPU as
quarter-batch convolutions side by side (`conv_batch_parts`), a 4x4 stride-2 one with its
input gradient in that scatter form (`conv_k4_s2`). Results equal the XLA operations up to
float summation order.
"""
from __future__ import annotations

import contextvars
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _pads(size, k, stride, padding):
    """(low, high) padding of one spatial axis, as XLA resolves 'SAME' / 'VALID'."""
    if padding == "VALID":
        return 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def conv_windows(x, kernel, strides=(1, 1), padding="SAME"):
    """NHWC convolution with an HWIO kernel as one einsum over the kh * kw shifted windows
    (im2col). padding: 'SAME', 'VALID' or ((low, high), (low, high)); strides: (sh, sw)."""
    kh, kw, cin, cout = kernel.shape
    sh, sw = strides
    if isinstance(padding, str):
        pads = (_pads(x.shape[1], kh, sh, padding), _pads(x.shape[2], kw, sw, padding))
    else:
        pads = tuple(tuple(p) for p in padding)
    x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    h = (x.shape[1] - kh) // sh + 1
    w = (x.shape[2] - kw) // sw + 1
    cols = jnp.stack([x[:, i:i + (h - 1) * sh + 1:sh, j:j + (w - 1) * sw + 1:sw, :]
                      for i in range(kh) for j in range(kw)], axis=3)
    return jnp.einsum("bhwpc,pco->bhwo", cols, kernel.reshape(kh * kw, cin, cout))


def band_block(w: int, kw: int, cout: int) -> int:
    """Output columns per block for `conv_banded`: the divisor d of the output width w that
    minimizes (d + kw - 1) / kw * (1 + 41 / (d * cout)): the multiply-adds spent on the
    band's zeros against the product's width N = d * cout, below which the CPU's matrix
    product loses efficiency. The 41 is fitted to LeNet-5's layers, where it picks the
    fastest blocks measured (4 of 28 columns for 1 -> 6 channels, 5 of 10 for 6 -> 16;
    BENCHMARKS.md); block 1 is im2col, block w one band over the whole row."""
    cost = lambda d: (d + kw - 1) / kw * (1 + 41 / (d * cout))
    return min((d for d in range(1, w + 1) if w % d == 0), key=cost)


def on_batch_slices(fn, x, parts: int):
    """fn on `parts` equal slices of x's batch, concatenated: independent operations that
    XLA:CPU runs side by side (fn must treat images independently). fn(x) itself where
    parts is 1 or does not divide the batch."""
    if parts <= 1 or x.shape[0] % parts:
        return fn(x)
    return jnp.concatenate([fn(xi) for xi in jnp.split(x, parts)])


# `conv_banded` works on equal slices of about BAND_SLICE images (at least that many; the
# most slices that divide the batch) once a batch has BAND_SPLIT_BATCH images: independent
# products that XLA runs side by side, so that the kernel gradient of a layer with few input
# channels (a contraction over every output position, which XLA:CPU's own dot runs on one
# thread) splits too. GRFD's L_rb passes ((K + 1) x B images at once) gain: K = 1 two slices,
# K = 4 five (tenth and eleventh sessions, BENCHMARKS.md); at batch 128 (attacks, first-order
# steps) slicing made no difference, so smaller batches stay whole.
BAND_SLICE = 128
BAND_SPLIT_BATCH = 256


def band_parts(n: int) -> int:
    """How many slices `conv_banded` cuts a batch of n images into: 1 below
    BAND_SPLIT_BATCH, else the most slices of at least BAND_SLICE images dividing n."""
    if n < BAND_SPLIT_BATCH:
        return 1
    return max(p for p in range(1, n // BAND_SLICE + 1) if n % p == 0)


def conv_banded(x, kernel, padding=((0, 0), (0, 0)), block=None):
    """`_conv_banded` on `band_parts` slices of the batch, concatenated: the same values
    (each product row is one output position of one image)."""
    return on_batch_slices(lambda xi: _conv_banded(xi, kernel, padding, block), x,
                           band_parts(x.shape[0]))


def _conv_banded(x, kernel, padding=((0, 0), (0, 0)), block=None):
    """Stride-1 NHWC convolution (HWIO kernel) as one matrix product. The output width is
    cut into blocks of `block` columns (default `band_block`; the last block is padded);
    each block's kh rows of block + kw - 1 padded input columns, [B, Ho, blocks,
    kh * (block + kw - 1) * cin], times one banded (Toeplitz) matrix that slides the kernel
    along the block, [kh * (block + kw - 1) * cin, block * cout], gives the block. It does
    (block + kw - 1) / kw times the multiply-adds of the convolution, but in a shape the
    CPU's matrix product runs near its peak, where im2col's [*, kh * kw * cin] x
    [kh * kw * cin, cout] with few output channels does not (block = Wo: one band over the
    whole row). padding: ((low, high), (low, high))."""
    kh, kw, cin, cout = kernel.shape
    b, hi, wi, _ = x.shape
    h, w = hi + sum(padding[0]) - kh + 1, wi + sum(padding[1]) - kw + 1
    block = band_block(w, kw, cout) if block is None else min(block, w)
    n_blocks = -(-w // block)
    extra = n_blocks * block - w                      # right padding to whole blocks
    x = jnp.pad(x, ((0, 0), tuple(padding[0]), (padding[1][0], padding[1][1] + extra),
                    (0, 0)))
    win = block + kw - 1
    if n_blocks <= win:      # [B, Hp, blocks, win, cin]: each block's input columns...
        blocks = jnp.stack([x[:, :, j * block:j * block + win] for j in range(n_blocks)], 2)
    else:                    # ... or, with fewer slices, each column offset's blocks
        last = (n_blocks - 1) * block + 1
        blocks = jnp.stack([x[:, :, c:c + last:block] for c in range(win)], 3)
    blocks = blocks.reshape(b, h + kh - 1, n_blocks, win * cin)
    rows = jnp.concatenate([blocks[:, i:i + h] for i in range(kh)], -1)
    offset = np.arange(win)[:, None] - np.arange(block)[None, :]    # input col - output col
    inside = (offset >= 0) & (offset < kw)
    band = jnp.where(inside[None, :, :, None, None], kernel[:, np.clip(offset, 0, kw - 1)],
                     0.0)                                        # [kh, win, block, cin, cout]
    band = band.transpose(0, 1, 3, 2, 4).reshape(kh * win * cin, block * cout)
    y = (rows.reshape(-1, kh * win * cin) @ band).reshape(b, h, n_blocks * block, cout)
    return y[:, :, :w] if extra else y


# The largest whole-row band (elements, kh * Wp * cin * Wo * cout) for `conv_cpu` to take
# the banded form: LeNet-5's layers (27k and 67k) are well inside; CIFAR-sized layers
# (millions) are not. The gate is on the whole-row size, though `conv_banded` now builds the
# smaller blocked band, so that the same layers go banded as were measured (BENCHMARKS.md).
BANDED_MAX = 1 << 18


def banded_padding(x_shape, kernel_shape, strides=(1, 1), padding="SAME"):
    """The ((low, high), (low, high)) padding for `conv_banded` when this convolution is
    small enough for it (stride 1, a whole-row band of at most BANDED_MAX elements), else
    None."""
    kh, kw, cin, cout = kernel_shape
    if tuple(strides) != (1, 1):
        return None
    if isinstance(padding, str):
        padding = (_pads(x_shape[1], kh, 1, padding), _pads(x_shape[2], kw, 1, padding))
    wp = x_shape[2] + sum(padding[1])
    return padding if kh * wp * cin * (wp - kw + 1) * cout <= BANDED_MAX else None


def conv_cpu(x, kernel, strides=(1, 1), padding="SAME"):
    """The faster CPU formulation of a small convolution: `conv_banded` where
    `banded_padding` allows it, else `conv_windows` (im2col). Arguments as `conv_windows`."""
    pads = banded_padding(x.shape, kernel.shape, strides, padding)
    if pads is not None:
        return conv_banded(x, kernel, pads)
    return conv_windows(x, kernel, strides, padding)


# Set by `fast.fast_layers()`, i.e. while an attack traces a model on the CPU backend.
_im2col_auto = contextvars.ContextVar("jaxdefense_im2col_auto", default=False)


def resolve_impl(impl: str, x_shape=None, kernel_shape=None, padding="SAME") -> str:
    """'auto' -> 'im2col' while an attack traces the model on CPU (`fast.fast_layers`);
    otherwise 'banded' on the CPU backend where `banded_padding` allows it (given the
    shapes), else 'xla'. 'im2col' computes with `conv_cpu` (banded for small layers, else
    the windows), which wins for input gradients on XLA:CPU; for parameter gradients
    (training, GRFD's second-order L_rb) the banded form beats XLA's convolution on
    XLA:CPU and the windows do not; GPU / TPU use XLA's."""
    if impl == "auto":
        if _im2col_auto.get():
            return "im2col"
        if (x_shape is not None and jax.default_backend() == "cpu"
                and banded_padding(x_shape, kernel_shape, (1, 1), padding) is not None):
            return "banded"
        return "xla"
    if impl not in ("xla", "im2col"):
        raise ValueError(f"conv impl must be auto, xla or im2col, got {impl!r}")
    return impl


# `Conv(impl='auto')` on CPU computes a strided convolution that XLA runs itself as this
# many independent convolutions over slices of the batch: XLA:CPU's XNNPACK convolution
# keeps to one thread, and independent operations run side by side on the cores
# (LVCVAE's encoder; BENCHMARKS.md).
BATCH_PARTS = 4


def conv_batch_parts(x, kernel, strides, padding, parts: int = BATCH_PARTS):
    """XLA's NHWC / HWIO convolution computed as `parts` convolutions over equal slices of
    the batch, concatenated (`on_batch_slices`): the same values, and the kernel's gradient
    summed over the slices. XLA's convolution itself where parts is 1 or does not divide
    the batch."""
    conv = lambda xi: jax.lax.conv_general_dilated(xi, kernel, strides, padding,
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return on_batch_slices(conv, x, parts)


_PAD_1 = ((1, 1), (1, 1))


def is_k4_s2_p1(x_shape, kernel_shape, strides, padding) -> bool:
    """Whether this is a 4x4 stride-2 convolution padded by 1 on every side ('SAME' is that
    for even sizes) of an input with even height and width: the LVCVAE encoders' layers,
    whose input gradient is exactly a k4 s2 'SAME' transposed convolution (`conv_k4_s2`)."""
    h, w = x_shape[1:3]
    if tuple(kernel_shape[:2]) != (4, 4) or tuple(strides) != (2, 2) or h % 2 or w % 2:
        return False
    if isinstance(padding, str):
        padding = (_pads(h, 4, 2, padding), _pads(w, 4, 2, padding))
    return tuple(tuple(p) for p in padding) == _PAD_1


@jax.custom_vjp
def conv_k4_s2(x, kernel):
    """A 4x4 stride-2 convolution padded by 1 (`is_k4_s2_p1`), NHWC / HWIO: forward and
    kernel gradient XLA's in BATCH_PARTS batch slices (`conv_batch_parts`), the input
    gradient as the scatter form of the transposed convolution (`conv_transpose_scatter`
    with the kernel flipped and its channels swapped), which XLA:CPU runs faster than its
    own input gradient (BENCHMARKS.md, eleventh session). Same values up to float rounding.
    A custom_vjp (as `max_pool_2x2`): reverse mode to any order and forward-over-reverse
    work, plain forward mode (`jax.jvp` of the layer itself) does not."""
    return conv_batch_parts(x, kernel, (2, 2), _PAD_1)


def _conv_k4_s2_fwd(x, kernel):
    return conv_k4_s2(x, kernel), (x, kernel)


def _conv_k4_s2_bwd(res, g):
    x, kernel = res
    dk, = jax.linear_transpose(lambda k: conv_batch_parts(x, k, (2, 2), _PAD_1), kernel)(g)
    dx = conv_transpose_scatter(g, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
    return dx.astype(x.dtype), dk


conv_k4_s2.defvjp(_conv_k4_s2_fwd, _conv_k4_s2_bwd)


class Conv(nn.Module):
    """A convolution with nn.Conv's parameters ('kernel' HWIO, 'bias' unless use_bias is
    False) and names, so checkpoints are the same whichever `impl` computes it.

    Stride 1: `resolve_impl` (banded / im2col / XLA). Other strides: `conv_cpu` for 'im2col'
    and inside attacks (`fast.fast_layers`), else XLA's convolution, on CPU in BATCH_PARTS
    slices of the batch where it divides (`conv_batch_parts`), with a 4x4 stride-2 layer's
    input gradient in the scatter form (`conv_k4_s2`). padding: 'SAME', 'VALID' or
    ((lo, hi), (lo, hi)).
    """
    features: int
    kernel_size: tuple
    padding: Any = "SAME"
    impl: str = "auto"
    dtype: Any = jnp.float32
    strides: tuple = (1, 1)
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (kh, kw, x.shape[-1], self.features), jnp.float32)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        strides = tuple(self.strides)
        if strides == (1, 1):
            impl = resolve_impl(self.impl, x.shape, kernel.shape, self.padding)
        else:
            impl = resolve_impl(self.impl)
        cpu_auto = self.impl == "auto" and jax.default_backend() == "cpu"
        if impl in ("im2col", "banded"):       # conv_cpu: banded wherever 'banded' was chosen
            y = conv_cpu(x, kernel, strides, self.padding)
        elif cpu_auto and is_k4_s2_p1(x.shape, kernel.shape, strides, self.padding):
            y = conv_k4_s2(x, kernel)
        else:
            parts = BATCH_PARTS if cpu_auto and strides != (1, 1) else 1
            y = conv_batch_parts(x, kernel, strides, self.padding, parts)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,),
                               jnp.float32).astype(self.dtype)
        return y


def max_pool_2x2(x):
    """2x2 max pooling, stride 2, VALID (an odd last row/column is dropped). The gradient
    goes to the first maximum of each window in row-major order (as nn.max_pool's
    select-and-scatter and torch's max_pool2d; jnp.max would split it among ties, which
    uniform image regions make common). While an attack traces the model on CPU
    (`fast.fast_layers`), values within TIE_RTOL (relative) count as tied, so that the banded
    convolution's rounding does not decide; in training any maximum's gradient serves, and
    the comparison is exact. Computed as pairwise maxima whose choices (bits) the backward
    pass reuses: on XLA:CPU far cheaper than a reduce-window or a reshape-max gradient."""
    b, h, w, c = x.shape
    pool = _POOL_2X2_TIES if _im2col_auto.get() else _POOL_2X2
    return pool(x[:, :h - h % 2, :w - w % 2])


# Relative gap below which two pooled values count as tied under attack (2^-19, about 16
# float32 ulps). The banded product rounds an output by its column within the block, so the
# equal patches of a uniform background (MNIST's, normalized) give a first layer's outputs
# up to ~8 ulps apart (measured 9.8e-7); compared exactly, the gradient then went to
# whichever rounded highest instead of the first maximum, and every real MNIST image's input
# gradient moved from torch's (BENCHMARKS.md, docs/attacks.md).
TIE_RTOL = 2.0 ** -19


def _pool_2x2_bwd(choices, g):
    right_top, right_bottom, lower = choices
    zero = jnp.zeros_like(g)
    split = lambda take, gg: (jnp.where(take, zero, gg), jnp.where(take, gg, zero))
    g_top, g_bottom = split(lower, g)
    row = lambda gg, right: jnp.stack(split(right, gg), 3)            # [B, h/2, w/2, 2, C]
    out = jnp.stack([row(g_top, right_top), row(g_bottom, right_bottom)], 2)
    b, h2, _, w2, _, c = out.shape
    return (out.reshape(b, 2 * h2, 2 * w2, c),)


def _make_pool_2x2(rtol: float):
    """The 2x2 pool whose backward pass sends a window's gradient to its first element
    unless a later one is larger by more than `rtol` (relative; 0: exactly larger)."""
    def beats(later, first):
        if not rtol:
            return later > first
        return later - first > rtol * jnp.maximum(jnp.abs(later), jnp.abs(first))

    def parts(x):   # (max, (right beats left in the top row, ... bottom row, bottom beats top))
        b, h, w, c = x.shape
        q = x.reshape(b, h // 2, 2, w // 2, 2, c)
        top = jnp.maximum(q[:, :, 0, :, 0], q[:, :, 0, :, 1])
        bottom = jnp.maximum(q[:, :, 1, :, 0], q[:, :, 1, :, 1])
        choices = (beats(q[:, :, 0, :, 1], q[:, :, 0, :, 0]),
                   beats(q[:, :, 1, :, 1], q[:, :, 1, :, 0]), beats(bottom, top))
        return jnp.maximum(top, bottom), choices

    pool = jax.custom_vjp(lambda x: parts(x)[0])
    pool.defvjp(parts, _pool_2x2_bwd)
    return pool


_POOL_2X2 = _make_pool_2x2(0.0)
_POOL_2X2_TIES = _make_pool_2x2(TIE_RTOL)


# Output parity p of a k4 s2 'SAME' transposed convolution reads input rows m - 1, m, m + 1
# (window rows 0, 1, 2) through kernel taps: parity 0 -> {row 0: tap 0, row 1: tap 2},
# parity 1 -> {row 1: tap 1, row 2: tap 3} (lax.conv_transpose pads the 2x-dilated input by
# 2 on each side and correlates without flipping).
# A numpy constant: a jnp array here would start the JAX backend at import (before a user's
# jax.distributed.initialize).
_SUBPIXEL_TAPS = np.zeros((2, 3, 4), np.float32)
_SUBPIXEL_TAPS[0, 0, 0] = _SUBPIXEL_TAPS[0, 1, 2] = _SUBPIXEL_TAPS[1, 1, 1] = \
    _SUBPIXEL_TAPS[1, 2, 3] = 1.0


def conv_transpose_subpixel(x, kernel):
    """flax `ConvTranspose(k 4x4, stride 2, 'SAME')` of NHWC x [B, H, W, Cin] with its kernel
    [4, 4, Cin, Cout], as one stride-1 3x3 convolution with 4 * Cout outputs (one per output
    pixel parity) and depth-to-space -> [B, 2H, 2W, Cout]. Same math, float rounding apart;
    its gradients avoid the dilated-convolution kernel gradient that is slow on XLA:CPU."""
    b, h, w, cin = x.shape
    cout = kernel.shape[-1]
    taps = jnp.asarray(_SUBPIXEL_TAPS, kernel.dtype)
    sub = jnp.einsum("prt,qcs,tsio->rcipqo", taps, taps, kernel).reshape(3, 3, cin, 4 * cout)
    y = jax.lax.conv_general_dilated(x, sub, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = y.reshape(b, h, w, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(b, 2 * h, 2 * w, cout)


# The same taps over the 2x2 window that each parity reads (rows m - 1, m for parity 0; m,
# m + 1 for parity 1): [parity, window row, tap].
_WINDOW_TAPS = np.stack([_SUBPIXEL_TAPS[p, p:p + 2] for p in range(2)])


def conv_transpose_windows(x, kernel):
    """flax `ConvTranspose(k 4x4, stride 2, 'SAME')` as in `conv_transpose_subpixel`, but as
    one matrix product over the 2x2 windows of the 1-padded input (im2col): [B * (H + 1) *
    (W + 1), 4 * Cin] x [4 * Cin, 4 * Cout], one column block per output parity; parity
    (p, q) of output pixel (m, n) is window (m + p, n + q)'s block. (H+1)(W+1) / HW times the
    transposed convolution's multiply-adds, against the 3x3 sub-pixel form's 9/4; the window
    stack costs 4x the input's memory, so it pays where 4 * Cout >= Cin (`ConvTranspose2x`).
    """
    b, h, w, cin = x.shape
    cout = kernel.shape[-1]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = jnp.concatenate([xp[:, i:i + h + 1, j:j + w + 1] for i in range(2) for j in range(2)],
                           -1)
    taps = jnp.asarray(_WINDOW_TAPS, kernel.dtype)
    k = jnp.einsum("prt,qcs,tsio->rcipqo", taps, taps, kernel).reshape(4 * cin, 4 * cout)
    q = (cols.reshape(-1, 4 * cin) @ k).reshape(b, h + 1, w + 1, 2, 2, cout)
    y = jnp.stack([jnp.stack([q[:, p:p + h, r:r + w, p, r] for r in range(2)], 3)
                   for p in range(2)], 2)                            # [B, H, 2, W, 2, Cout]
    return y.reshape(b, 2 * h, 2 * w, cout)


def _overlap_add_2x(z, axis: int, tap_axis: int):
    """Fold the 4 kernel taps at `tap_axis` of z into twice the length of its spatial `axis`
    (n -> 2n): output row o = 2i + 2 - t gets input row i's tap t (lax.conv_transpose's
    k4 s2 'SAME' placement, no kernel flip). With o + 1 = 2m + p: tap 3 - p of row m plus tap
    1 - p of row m - 1. Slices, pads and adds only; tap_axis > axis."""
    n = z.shape[axis]
    pad = lambda a, lo, hi: jnp.pad(a, [(lo, hi) if d == axis else (0, 0)
                                        for d in range(a.ndim)])
    tap = lambda t: jax.lax.index_in_dim(z, t, tap_axis, keepdims=False)
    out = jnp.stack([pad(tap(3 - p), 0, 1) + pad(tap(1 - p), 1, 0) for p in range(2)], axis + 1)
    out = out.reshape(*out.shape[:axis], 2 * n + 2, *out.shape[axis + 2:])
    return jax.lax.slice_in_dim(out, 1, 2 * n + 1, axis=axis)


def conv_transpose_scatter(x, kernel):
    """flax `ConvTranspose(k 4x4, stride 2, 'SAME')` as in `conv_transpose_subpixel`, but as
    the textbook scatter form: one matrix product [B * H * W, Cin] x [Cin, 16 * Cout] (every
    input pixel times every kernel tap, the transposed convolution's own multiply-adds and
    no more), then the 16 tap images overlap-added into the 2x output (`_overlap_add_2x`,
    rows then columns). Its gradients are a product of the same shape and slices."""
    b, h, w, cin = x.shape
    cout = kernel.shape[-1]
    k = kernel.transpose(2, 0, 1, 3).reshape(cin, 16 * cout)
    z = (x.reshape(-1, cin) @ k).reshape(b, h, w, 4, 4, cout)      # taps: row, column
    return _overlap_add_2x(_overlap_add_2x(z, 1, 3), 2, 3)


class ConvTranspose2x(nn.Module):
    """A 4x4, stride-2, 'SAME' transposed convolution with nn.ConvTranspose's parameters
    ('kernel' [4, 4, Cin, Cout], 'bias'), so checkpoints do not depend on `impl`.

    impl: 'scatter' (`conv_transpose_scatter`), 'subpixel' (`conv_transpose_subpixel`),
    'im2col' (`conv_transpose_windows`), 'xla' (lax.conv_transpose) or 'auto': on CPU
    scatter (the fastest of the four in every layer shape timed, BENCHMARKS.md), xla
    elsewhere."""
    features: int
    impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        impl = self.impl
        if impl == "auto":
            impl = "scatter" if jax.default_backend() == "cpu" else "xla"
        if impl not in ("xla", "subpixel", "im2col", "scatter"):
            raise ValueError("transposed conv impl must be auto, xla, subpixel, im2col or "
                             f"scatter, got {impl!r}")
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (4, 4, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
        if impl == "subpixel":
            y = conv_transpose_subpixel(x, kernel)
        elif impl == "im2col":
            y = conv_transpose_windows(x, kernel)
        elif impl == "scatter":
            y = conv_transpose_scatter(x, kernel)
        else:
            y = jax.lax.conv_transpose(x, kernel, (2, 2), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias
