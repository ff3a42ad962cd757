"""Input-transformation baselines from the GRFD paper's comparison: bit-depth reduction and
feature squeezing (Xu et al. 2018: bit depth plus median smoothing), used as preprocessors.

Both are piecewise constant (zero or undefined gradients), so an honest white-box attack
goes through `attacks.bpda` with the identity as the backward pass. Specs on the command
line: 'bits:4', 'median:2', 'squeeze:5,2' (bits 5 then a 2x2 median), several joined by '+'.
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from jaxdefense.attacks.bpda import bpda


def bit_depth(x, bits: int):
    """Quantize [0, 1] images to 2**bits levels per channel (bits in 1..8)."""
    levels = 2 ** bits - 1
    return jnp.round(x * levels) / levels


def median_filter(x, size: int):
    """Median over each size x size window, per channel (NHWC, same shape; edges reflect).
    An even size takes the window down and to the right, as Xu et al.'s 2x2 filter."""
    lo, hi = (size - 1) // 2, size // 2
    p = jnp.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)), mode="reflect")
    h, w = x.shape[1], x.shape[2]
    windows = jnp.stack([p[:, i:i + h, j:j + w] for i in range(size) for j in range(size)], -1)
    return jnp.median(windows, axis=-1)


def parse(spec: str) -> Callable:
    """'bits:4' | 'median:2' | 'squeeze:BITS,SIZE', joined by '+' -> x -> x' (not BPDA'd)."""
    stages = []
    for part in spec.split("+"):
        name, _, arg = part.strip().partition(":")
        try:
            vals = [int(a) for a in arg.split(",")] if arg else []
        except ValueError:
            vals = None
        if name == "bits" and vals and len(vals) == 1 and 1 <= vals[0] <= 8:
            stages.append(lambda x, b=vals[0]: bit_depth(x, b))
        elif name == "median" and vals and len(vals) == 1 and vals[0] >= 1:
            stages.append(lambda x, s=vals[0]: median_filter(x, s))
        elif name == "squeeze" and vals and len(vals) == 2 and 1 <= vals[0] <= 8 and vals[1] >= 1:
            stages.append(lambda x, b=vals[0], s=vals[1]: median_filter(bit_depth(x, b), s))
        else:
            raise ValueError(f"bad preprocessing {part!r}; use bits:B (1..8), median:S, "
                             f"squeeze:B,S, joined by '+'")

    def forward(x):
        for stage in stages:
            x = stage(x)
        return x
    return forward


def preprocessed(logits_fn: Callable, spec: str, use_bpda: bool = True) -> Callable:
    """logits_fn(preprocess(x)); with use_bpda the preprocessing is the identity in the
    backward pass (the adaptive attack); without it gradients are those of the (flat)
    transform, the obfuscated-gradient setting that overstates robustness."""
    forward = parse(spec)
    stage = bpda(forward) if use_bpda else forward
    return lambda x: logits_fn(stage(x))
