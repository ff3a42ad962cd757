"""Pieces shared by the models: input normalization inside the model; every classifier
sows its penultimate embedding ('intermediates'/'embedding') and names its last layer 'head',
so a defense can work on the embedding (IDFR's feature restorer)."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


def normalize(x, mean: Sequence[float], std: Sequence[float], dtype=jnp.float32):
    """(x - mean) / std per channel; x is NHWC in pixel units ([0, 1] for images)."""
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return ((x - mean) / std).astype(dtype)


def batch_norm(train: bool, dtype=jnp.float32):
    """The project's BatchNorm (momentum 0.9 = PyTorch's 0.1, eps 1e-5), with the batch
    variance computed in two passes, E[(x - mean)^2]. Flax's default one-pass E[x^2] - mean^2
    cancels catastrophically in float32 when |mean| >> std: the GRFD VAE's gradients then
    differed from a float64 reference by up to 3.4e-2 (PyTorch's by 3.5e-4; docs/grfd.md, BENCHMARKS.md)."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        use_fast_variance=False, dtype=dtype)


class MaxPool(nn.Module):
    """`nn.max_pool` with non-overlapping windows (window == strides, 'VALID'): a module, so
    that `jaxdefense.cpu_kernels` can compute it the CPU's way without touching the model."""
    window: tuple = (2, 2)

    @nn.compact
    def __call__(self, x):
        return nn.max_pool(x, tuple(self.window), strides=tuple(self.window))


def conv_dtype(dtype, stride: int):
    """Compute dtype of a stride-`stride` convolution in a model that computes in `dtype`:
    float32 for every strided convolution when `dtype` is bfloat16.

    A double backward (GRFD's L_rb, gradient regularization) differentiates a strided
    convolution's input gradient again. For that of the WRN-28-10's 1x1 stride-2 shortcuts
    cuDNN has only a slow generic kernel in bfloat16: on an H200 two such convolutions took
    47 ms of a 100-109 ms GRFD phase-I step, against 1.9 ms in float32 (an FFT),
    and with them in float32 the bfloat16 step fell to 68 ms (BENCHMARKS.md, "bfloat16 on
    a GPU"). Four layers in a WRN, six in ResNet-18, so float32 there costs little."""
    if jnp.dtype(dtype) == jnp.bfloat16 and stride > 1:
        return jnp.float32
    return dtype


def embedding_and_logits(model, variables, x):
    """(penultimate embedding [B, D], logits [B, K]) of a classifier in evaluation mode."""
    logits, state = model.apply(variables, x, mutable=["intermediates"])
    return state["intermediates"]["embedding"][0].astype(jnp.float32), logits


def apply_head(model, variables, embedding):
    """The classifier's last layer on an embedding [B, D] -> logits [B, K]."""
    head = nn.Dense(model.num_classes, dtype=model.dtype)
    return head.apply({"params": variables["params"]["head"]}, embedding).astype(jnp.float32)
