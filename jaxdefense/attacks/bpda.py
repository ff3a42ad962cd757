"""BPDA (Athalye et al. 2018): differentiate through a stage with a surrogate.

    quantize = bpda(lambda x: jnp.round(x * 7) / 7)         # identity in the backward pass
    logits_fn = lambda x: model(quantize(x))                 # now attackable end to end
"""
from __future__ import annotations

import jax


def bpda(forward, backward=None):
    """A function computing `forward(x)` whose gradient is that of `backward` (a smooth
    approximation of forward), or the identity when backward is None. Use it for stages
    that are not differentiable or that obfuscate gradients."""
    @jax.custom_vjp
    def stage(x):
        return forward(x)

    def fwd(x):
        return forward(x), x

    def bwd(x, g):
        if backward is None:
            return (g,)
        _, vjp = jax.vjp(backward, x)
        return vjp(g)

    stage.defvjp(fwd, bwd)
    return stage
