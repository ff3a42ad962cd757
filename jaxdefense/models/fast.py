"""Fast CPU execution of a user's plain Flax convolutions and pooling, without touching
their code.

XLA:CPU runs a small `lax.conv_general_dilated` and the gradient of `reduce_window` max
(`nn.max_pool`'s select-and-scatter) slowly; the same math as one matrix product
(`layers.conv_cpu`: banded for small stride-1 layers, im2col otherwise) and as pairwise
maxima runs well (`layers.py`). `fast_layers()` is a context
in which, while a function is traced:
- every `flax.linen.Conv` (2-D, no dilation, no feature groups, no mask; any strides, 'SAME',
  'VALID' or explicit padding) computes with `layers.conv_cpu` from its own parameters, through
  `nn.intercept_methods`, so parameters, names and checkpoints are unchanged;
- `flax.linen.max_pool` with non-overlapping windows (window == strides, 'VALID') is
  `layers.max_pool_2x2` for 2x2 windows (the gradient goes to the first maximum of a
  window, as nn.max_pool's), a reshape-max for other sizes (its gradient splits ties
  evenly) (the attribute is swapped for the duration of the context, so calls written
  `nn.max_pool(...)` are covered; a name imported before with `from flax.linen import
  max_pool` is not);
- the project's `layers.Conv(impl='auto')` computes with `conv_cpu` (outside: the banded
  form where it applies on CPU, else XLA's convolution; `layers.resolve_impl`).
Everything else runs as written. Results equal the original up to float summation order.

The attacks trace a model through `fast(logits_fn)` when the default backend is the CPU
(set JAXDEFENSE_FAST_LAYERS=0 to turn it off); on GPU / TPU the wrapped function is the
original (cuDNN / TPU convolutions are faster there).
"""
from __future__ import annotations

import contextlib
import os

import flax.linen as nn
import jax
from flax.linen import dtypes as flax_dtypes

from jaxdefense.models import layers

_original_max_pool = nn.max_pool


def _pair(v, default):
    if v is None:
        return default
    if isinstance(v, int):
        return (v, v)
    return tuple(v)


def _conv_padding(padding, ndim=2):
    """nn.Conv's padding as 'SAME' / 'VALID' / ((lo, hi), (lo, hi)), or None if unsupported."""
    if isinstance(padding, str):
        return padding if padding in ("SAME", "VALID") else None
    if isinstance(padding, int):
        return ((padding, padding),) * ndim
    padding = tuple(padding)
    if len(padding) != ndim:
        return None
    return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)


def _fast_conv(mod, x):
    """nn.Conv.__call__ by im2col, or None when this layer or input is not covered."""
    if (x.ndim != 4 or len(mod.kernel_size) != 2 or mod.feature_group_count != 1
            or getattr(mod, "mask", None) is not None
            or _pair(mod.input_dilation, (1, 1)) != (1, 1)
            or _pair(mod.kernel_dilation, (1, 1)) != (1, 1)
            or not mod.has_variable("params", "kernel")):
        return None
    padding = _conv_padding(mod.padding)
    if padding is None:
        return None
    kernel = mod.get_variable("params", "kernel")
    bias = mod.get_variable("params", "bias") if mod.use_bias else None
    x, kernel, bias = flax_dtypes.promote_dtype(x, kernel, bias, dtype=mod.dtype)
    y = layers.conv_cpu(x, kernel, _pair(mod.strides, (1, 1)), padding)
    return y if bias is None else y + bias


def _interceptor(next_fun, args, kwargs, context):
    if (context.method_name == "__call__" and isinstance(context.module, nn.Conv)
            and type(context.module).__call__ is nn.Conv.__call__ and len(args) == 1
            and not kwargs):
        y = _fast_conv(context.module, args[0])
        if y is not None:
            return y
    return next_fun(*args, **kwargs)


def max_pool(inputs, window_shape, strides=None, padding="VALID"):
    """`nn.max_pool`, as `layers.max_pool_2x2` or a reshape-max when the windows tile the
    image (window == strides, 'VALID', 4-D input); otherwise the original."""
    window_shape = tuple(window_shape)
    if (inputs.ndim == 4 and len(window_shape) == 2 and padding == "VALID"
            and (strides is None and window_shape == (1, 1)
                 or strides is not None and tuple(strides) == window_shape)):
        if window_shape == (2, 2):
            return layers.max_pool_2x2(inputs)
        b, h, w, c = inputs.shape
        kh, kw = window_shape
        x = inputs[:, :h - h % kh, :w - w % kw]
        return x.reshape(b, h // kh, kh, w // kw, kw, c).max(axis=(2, 4))
    return _original_max_pool(inputs, window_shape, strides, padding)


@contextlib.contextmanager
def fast_layers():
    """While active, plain `nn.Conv` and `nn.max_pool` compute as described above, the
    project's own `layers.Conv(impl='auto')` (LeNet-5) uses `layers.conv_cpu`, and
    `layers.max_pool_2x2` counts values within `layers.TIE_RTOL` as tied."""
    token = layers._im2col_auto.set(True)
    with nn.intercept_methods(_interceptor):
        nn.max_pool = max_pool
        try:
            yield
        finally:
            nn.max_pool = _original_max_pool
            layers._im2col_auto.reset(token)


def enabled() -> bool:
    """Whether attacks trace models with `fast_layers` (CPU backend, not turned off)."""
    return (os.environ.get("JAXDEFENSE_FAST_LAYERS", "1") != "0"
            and jax.default_backend() == "cpu")


class _Fast:
    """`fn` called inside `fast_layers()`; equal (and hashing equal) to another wrapper of an
    equal function, so jit caches keyed on the function still hit."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        with fast_layers():
            return self.fn(*args, **kwargs)

    def __hash__(self):
        return hash((_Fast, self.fn))

    def __eq__(self, other):
        return isinstance(other, _Fast) and other.fn == self.fn


def fast(logits_fn):
    """logits_fn traced with `fast_layers()` where `enabled()`, else logits_fn itself."""
    if isinstance(logits_fn, _Fast) or not enabled():
        return logits_fn
    return _Fast(logits_fn)
