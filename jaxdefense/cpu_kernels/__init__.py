"""CPU kernels: faster XLA:CPU formulations of a plain Flax model's layers, switched on in
one place, without touching the model or its parameters.

The models (`jaxdefense.models`) are plain Flax: `nn.Conv`, `nn.ConvTranspose` and
`models.common.MaxPool` (a module around `nn.max_pool`). XLA:CPU runs some of these slowly
(a small convolution with few channels, the kernel gradient of a transposed convolution,
the gradient of max pooling), so while a function is traced inside `kernels()` (or wrapped
by `use`), a Flax method interceptor computes these layers instead as:

| layer | CPU formulation | forward mode (jvp) | reverse mode, any order |
|---|---|---|---|
| `nn.Conv`, stride 1, small (LeNet-5) | `conv.conv_banded`: one banded matrix product | yes | yes |
| `nn.Conv` 4x4 stride 2 padded 1 (LVCVAE encoders) | `conv.conv_k4_s2`: batch slices, scatter-form input gradient | no (custom_vjp) | yes |
| `nn.ConvTranspose` 4x4 stride 2 'SAME' (decoders) | `conv.conv_transpose_scatter`: one product and an overlap-add | yes | yes |
| `MaxPool` 2x2 | `pool.max_pool_2x2`: pairwise maxima, first-maximum derivative | no (custom_vjp) | yes |

Every other layer runs as written. The values equal the plain layers' up to float summation
order; parameters, names and checkpoints are the same either way. So `jax.jvp` / `jacfwd`
/ `linearize` go through every model with the kernels off (JAXDEFENSE_CPU_KERNELS=0), and
with them on through the models without a 2x2 max pool or a 4x4 stride-2 convolution
(WideResNet, ResNet-18, the DiffPure score network, IDFR's U-Net, APE-GAN's discriminator;
not LeNet-5, VGG16-BN, the LVCVAE, APE-GAN's generator, ARN's encoder).

The switch, read whenever a function is wrapped: `switched(choice)` (a context manager) or
`set_default(choice)`, else the environment variable JAXDEFENSE_CPU_KERNELS; `auto`
(default) on when JAX's default backend is the CPU, off on GPU / TPU; `1` always on; `0`
off. The attacks are plain JAX and never call this module: the harness applies it where it
compiles. `training.fit` (the step), the evaluation helpers and served models
(`jaxdefense.load`) wrap what they compile with `use`; whatever hands a logits function to
an attack (`robustness.craft_fn`, adversarial training's example makers) hands it over as
`attacked(fn)`, so training and attacks compute the same formulation.

Max-pool ties, the one setting (`use(fn, ties=...)`): the banded product rounds the equal
patches of a uniform background (MNIST's) a few ulps apart, so which element of a tied
window takes the derivative depends on that rounding. `ties="exact"` (the default; training)
sends it to the first of the exactly equal maxima, as flax does with the values computed:
parameter gradients do not depend on which of two equal patches takes it, and GRFD's L_rb,
whose noisy inputs have true near-ties, stays closest to a float64 reference.
`ties="rounding"` (the attacks) counts values within `pool.TIE_RTOL` = 2^-19 as tied, so
the input gradient goes where XLA's convolution would send it: within 1e-5 of torch's on
real MNIST (bench/attacks_vs_torchattacks.py) instead of up to 39% off. docs/attacks.md has
the measurements; the figures behind the kernels' speed are in BENCHMARKS.md.
"""
from __future__ import annotations

import contextlib
import contextvars
import os

import flax.linen as nn
import jax

from jaxdefense.cpu_kernels import conv, pool
from jaxdefense.models.common import MaxPool

ENV = "JAXDEFENSE_CPU_KERNELS"
CHOICES = ("auto", "1", "0")
TIES = {"exact": 0.0, "rounding": pool.TIE_RTOL}     # `use(fn, ties=...)`: the pool's rtol
_pool_rtol = contextvars.ContextVar("jaxdefense_cpu_kernels_pool_rtol", default=0.0)
_choice = contextvars.ContextVar("jaxdefense_cpu_kernels_choice", default=None)
_default = [None]       # set_default's choice; None: the environment variable's


def _checked(choice: str, where: str) -> str:
    if choice not in CHOICES:
        raise ValueError(f"{where}={choice!r}: expected one of {', '.join(CHOICES)}")
    return choice


def enabled() -> bool:
    """Whether `use` turns the kernels on: the innermost `switched`, else `set_default`'s
    choice, else JAXDEFENSE_CPU_KERNELS (module doc)."""
    choice = _choice.get() or _default[0] or _checked(os.environ.get(ENV, "auto"), ENV)
    return choice == "1" or (choice == "auto" and jax.default_backend() == "cpu")


@contextlib.contextmanager
def switched(choice: str):
    """Within the block, `use` (and `attacked`) follow `choice`: 'auto', '1' or '0'."""
    token = _choice.set(_checked(choice, "switched"))
    try:
        yield
    finally:
        _choice.reset(token)


def set_default(choice):
    """The process's choice ('auto', '1', '0') outside any `switched` block; None goes back
    to JAXDEFENSE_CPU_KERNELS."""
    _default[0] = None if choice is None else _checked(choice, "set_default")


def _plain(mod, cls) -> bool:
    """The module is `cls` itself (not a subclass with its own __call__), 2-D, no mask."""
    return (type(mod).__call__ is cls.__call__ and len(mod.kernel_size) == 2
            and getattr(mod, "mask", None) is None
            and all(d in (None, 1, (1, 1)) for d in (mod.kernel_dilation,
                                                     getattr(mod, "input_dilation", None)))
            and mod.has_variable("params", "kernel"))


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v or (1, 1))


def _padding(padding):
    """nn.Conv's padding as 'SAME' / 'VALID' / ((lo, hi), (lo, hi)); None if unsupported."""
    if isinstance(padding, str):
        return padding if padding in ("SAME", "VALID") else None
    if isinstance(padding, int):
        return ((padding, padding),) * 2
    padding = tuple(padding)
    if len(padding) != 2:
        return None
    return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)


def _conv(mod, x):
    """nn.Conv.__call__ as a CPU kernel, or None where none applies."""
    if x.ndim != 4 or mod.feature_group_count != 1 or not _plain(mod, nn.Conv):
        return None
    padding = _padding(mod.padding)
    if padding is None:
        return None
    kernel = mod.get_variable("params", "kernel")
    strides = _pair(mod.strides)
    padding = conv.explicit_padding(x.shape, kernel.shape, strides, padding)
    bias = mod.get_variable("params", "bias") if mod.use_bias else None
    x, kernel, bias = mod.promote_dtype(x, kernel, bias, dtype=mod.dtype)
    if conv.banded_fits(x.shape, kernel.shape, strides, padding):
        y = conv.conv_banded(x, kernel, padding)
    elif conv.is_k4_s2_p1(x.shape, kernel.shape, strides, padding):
        y = conv.conv_k4_s2(x, kernel)
    else:
        return None
    return y if bias is None else y + bias


def _conv_transpose(mod, x):
    """nn.ConvTranspose.__call__ (4x4, stride 2, 'SAME') as `conv_transpose_scatter`."""
    if (x.ndim != 4 or not _plain(mod, nn.ConvTranspose) or mod.transpose_kernel
            or tuple(mod.kernel_size) != (4, 4) or _pair(mod.strides) != (2, 2)
            or mod.padding != "SAME"):
        return None
    kernel = mod.get_variable("params", "kernel")
    bias = mod.get_variable("params", "bias") if mod.use_bias else None
    x, kernel, bias = mod.promote_dtype(x, kernel, bias, dtype=mod.dtype)
    y = conv.conv_transpose_scatter(x, kernel)
    return y if bias is None else y + bias


def _max_pool(mod, x):
    """MaxPool.__call__ (2x2 windows) as `pool.max_pool_2x2` with the context's ties."""
    if type(mod).__call__ is not MaxPool.__call__ or x.ndim != 4 or tuple(mod.window) != (2, 2):
        return None
    return pool.max_pool_2x2(x, _pool_rtol.get())


_KERNELS = ((nn.Conv, _conv), (nn.ConvTranspose, _conv_transpose), (MaxPool, _max_pool))


def _interceptor(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and len(args) == 1 and not kwargs:
        for cls, kernel in _KERNELS:
            if isinstance(context.module, cls):
                y = kernel(context.module, args[0])
                if y is not None:
                    return y
                break
    return next_fun(*args, **kwargs)


def _check_ties(ties: str) -> float:
    if ties not in TIES:
        raise ValueError(f"ties must be one of {', '.join(TIES)}, got {ties!r}")
    return TIES[ties]


@contextlib.contextmanager
def kernels(ties: str = "exact"):
    """While active, functions traced compute the layers of the module doc's table with
    the CPU kernels (whatever the backend; `use` checks the switch); `ties`: the module
    doc's max-pool setting (innermost context wins)."""
    token = _pool_rtol.set(_check_ties(ties))
    try:
        with nn.intercept_methods(_interceptor):
            yield
    finally:
        _pool_rtol.reset(token)


class _Use:
    """`fn` called inside `kernels(ties)`; equal (and hashing equal) to another wrapper of
    an equal function and setting, so jit caches keyed on the function (attacks' static
    logits_fn) hit."""

    def __init__(self, fn, ties: str):
        self.fn, self.ties = fn, ties

    def __call__(self, *args, **kwargs):
        with kernels(self.ties):
            return self.fn(*args, **kwargs)

    def __hash__(self):
        return hash((_Use, self.fn, self.ties))

    def __eq__(self, other):
        return isinstance(other, _Use) and (other.fn, other.ties) == (self.fn, self.ties)


def use(fn, ties: str = "exact"):
    """fn traced with the CPU kernels where `enabled()`, else fn itself. ties: 'exact'
    (training, evaluation) or 'rounding' (input gradients: the attacks); module doc."""
    _check_ties(ties)
    if not enabled():
        return fn
    if isinstance(fn, _Use):
        return fn if fn.ties == ties else _Use(fn.fn, ties)
    return _Use(fn, ties)


def attacked(fn):
    """`fn` as an attack differentiates it: `use(fn, ties="rounding")` (module doc). Whatever
    hands a logits function to an attack wraps it with this; the attacks do not."""
    return use(fn, "rounding")


__all__ = ["CHOICES", "ENV", "TIES", "attacked", "conv", "enabled", "kernels", "pool",
           "set_default", "switched", "use"]
