"""Convolutions as XLA:CPU runs them well: the same math as `nn.Conv` / `nn.ConvTranspose`
with the parameters in their layout (HWIO kernels), equal up to float summation order.

- `conv_banded`: a small stride-1 convolution as one matrix product with a banded
  (Toeplitz) kernel matrix over blocks of output columns (LeNet-5's layers);
- `conv_k4_s2`: a 4x4 stride-2 convolution padded by 1 (the LVCVAE encoders'), forward in
  batch slices, its input gradient in the scatter form of the transposed convolution;
- `conv_transpose_scatter`: a 4x4 stride-2 'SAME' transposed convolution (the decoders')
  as one product of every input pixel with every tap and an overlap-add.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def pads(size: int, k: int, stride: int, padding) -> tuple:
    """(low, high) padding of one spatial axis, as XLA resolves 'SAME' / 'VALID'."""
    if padding == "VALID":
        return 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def explicit_padding(x_shape, kernel_shape, strides, padding):
    """((lo, hi), (lo, hi)) for 'SAME' / 'VALID' / explicit pairs of an NHWC input."""
    if isinstance(padding, str):
        return tuple(pads(x_shape[1 + a], kernel_shape[a], strides[a], padding)
                     for a in range(2))
    return tuple(tuple(p) for p in padding)


def band_block(w: int, kw: int, cout: int) -> int:
    """Output columns per block for `conv_banded`: the divisor d of the output width w that
    minimizes (d + kw - 1) / kw * (1 + 41 / (d * cout)): the multiply-adds spent on the
    band's zeros against the product's width N = d * cout, below which the CPU's matrix
    product loses efficiency. The 41 is fitted to LeNet-5's layers, where it picks the
    fastest blocks measured (4 of 28 columns for 1 -> 6 channels, 5 of 10 for 6 -> 16)."""
    cost = lambda d: (d + kw - 1) / kw * (1 + 41 / (d * cout))
    return min((d for d in range(1, w + 1) if w % d == 0), key=cost)


def on_batch_slices(fn, x, parts: int):
    """fn on `parts` equal slices of x's batch, concatenated: independent operations that
    XLA:CPU runs side by side (fn must treat images independently). fn(x) itself where
    parts is 1 or does not divide the batch."""
    if parts <= 1 or x.shape[0] % parts:
        return fn(x)
    return jnp.concatenate([fn(xi) for xi in jnp.split(x, parts)])


# `conv_banded` works on equal slices of about BAND_SLICE images once a batch has
# BAND_SPLIT_BATCH images: independent products that XLA runs side by side, so that the
# kernel gradient of a layer with few input channels (a contraction over every output
# position, which XLA:CPU's dot runs on one thread) splits too (GRFD's L_rb passes, (K + 1)
# x B images at once). At batch 128 slicing made no difference, so smaller batches stay whole.
BAND_SLICE = 128
BAND_SPLIT_BATCH = 256


def band_parts(n: int) -> int:
    """How many slices `conv_banded` cuts a batch of n images into: 1 below
    BAND_SPLIT_BATCH, else the most slices of at least BAND_SLICE images dividing n."""
    if n < BAND_SPLIT_BATCH:
        return 1
    return max(p for p in range(1, n // BAND_SLICE + 1) if n % p == 0)


def conv_banded(x, kernel, padding=((0, 0), (0, 0)), block=None):
    """Stride-1 NHWC convolution (HWIO kernel) as one matrix product per batch slice
    (`band_parts`). The output width is cut into blocks of `block` columns (default
    `band_block`; the last block is padded); each block's kh rows of block + kw - 1 padded
    input columns, [B, Ho, blocks, kh * (block + kw - 1) * cin], times one banded matrix
    that slides the kernel along the block, [kh * (block + kw - 1) * cin, block * cout],
    gives the block: (block + kw - 1) / kw times the convolution's multiply-adds, in a shape
    the CPU's matrix product runs near its peak. padding: ((low, high), (low, high))."""
    return on_batch_slices(lambda xi: _conv_banded(xi, kernel, padding, block), x,
                           band_parts(x.shape[0]))


def _conv_banded(x, kernel, padding, block):
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


# The largest whole-row band (elements, kh * Wp * cin * Wo * cout) that `conv_banded` takes:
# LeNet-5's layers (27k and 67k) are well inside; CIFAR-sized layers (millions), where XLA's
# convolution is the better choice, are not.
BANDED_MAX = 1 << 18


def banded_fits(x_shape, kernel_shape, strides, padding) -> bool:
    """Whether `conv_banded` takes this convolution: stride 1 and a whole-row band of at
    most BANDED_MAX elements. padding: explicit ((lo, hi), (lo, hi))."""
    kh, kw, cin, cout = kernel_shape
    if tuple(strides) != (1, 1):
        return False
    wp = x_shape[2] + sum(padding[1])
    return kh * wp * cin * (wp - kw + 1) * cout <= BANDED_MAX


# `conv_k4_s2` computes the forward and kernel gradient as this many independent
# convolutions over slices of the batch: XLA:CPU's XNNPACK convolution keeps to one thread,
# and independent operations run side by side on the cores.
BATCH_PARTS = 4
_PAD_1 = ((1, 1), (1, 1))


def conv_batch_parts(x, kernel, strides, padding, parts: int = BATCH_PARTS):
    """XLA's NHWC / HWIO convolution computed as `parts` convolutions over equal slices of
    the batch, concatenated (`on_batch_slices`)."""
    conv = lambda xi: jax.lax.conv_general_dilated(xi, kernel, strides, padding,
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return on_batch_slices(conv, x, parts)


def is_k4_s2_p1(x_shape, kernel_shape, strides, padding) -> bool:
    """Whether this is a 4x4 stride-2 convolution padded by 1 on every side of an input of
    even height and width (explicit padding), whose input gradient is exactly a k4 s2 'SAME'
    transposed convolution (`conv_k4_s2`)."""
    h, w = x_shape[1:3]
    return (tuple(kernel_shape[:2]) == (4, 4) and tuple(strides) == (2, 2) and not h % 2
            and not w % 2 and tuple(tuple(p) for p in padding) == _PAD_1)


@jax.custom_vjp
def conv_k4_s2(x, kernel):
    """A 4x4 stride-2 convolution padded by 1 (`is_k4_s2_p1`), NHWC / HWIO: forward and
    kernel gradient XLA's in BATCH_PARTS batch slices, the input gradient as
    `conv_transpose_scatter` with the kernel flipped and its channels swapped. Reverse mode
    to any order; no forward mode (a custom_vjp)."""
    return conv_batch_parts(x, kernel, (2, 2), _PAD_1)


def _conv_k4_s2_fwd(x, kernel):
    return conv_k4_s2(x, kernel), (x, kernel)


def _conv_k4_s2_bwd(res, g):
    x, kernel = res
    dk, = jax.linear_transpose(lambda k: conv_batch_parts(x, k, (2, 2), _PAD_1), kernel)(g)
    dx = conv_transpose_scatter(g, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
    return dx.astype(x.dtype), dk


conv_k4_s2.defvjp(_conv_k4_s2_fwd, _conv_k4_s2_bwd)


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
    """flax `ConvTranspose(k 4x4, stride 2, 'SAME')` of NHWC x [B, H, W, Cin] with its kernel
    [4, 4, Cin, Cout] -> [B, 2H, 2W, Cout], as one matrix product [B * H * W, Cin] x
    [Cin, 16 * Cout] (every input pixel times every tap: the transposed convolution's own
    multiply-adds) and the 16 tap images overlap-added (rows, then columns). Its gradients
    are products of the same shape and slices, where XLA:CPU computes the kernel gradient
    of its own transposed convolution as a slow dilated convolution."""
    b, h, w, cin = x.shape
    cout = kernel.shape[-1]
    k = kernel.transpose(2, 0, 1, 3).reshape(cin, 16 * cout)
    z = (x.reshape(-1, cin) @ k).reshape(b, h, w, 4, 4, cout)      # taps: row, column
    return _overlap_add_2x(_overlap_add_2x(z, 1, 3), 2, 3)
