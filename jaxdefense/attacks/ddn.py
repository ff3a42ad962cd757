"""Decoupled Direction and Norm (Rony et al. 2019), an L2 minimum-norm attack, as
advertorch's `DDNL2Attack` runs it (the library the ARN paper attacked with).

Per iteration i = 0 .. steps - 1, at delta (0 at the start):
  1. record x + delta as the best point when it is adversarial and |delta|_2 is below the
     best so far (so a clean misclassification is kept at distance 0);
  2. step along the normalized gradient of the summed cross-entropy (ascent untargeted,
     descent toward a target), length alpha_i = 0.01 + 0.99 (1 + cos(pi (i + 1) / steps)) / 2
     (cosine annealing, advanced before the step as the reference's scheduler); a sample
     with a zero gradient steps along a Gaussian draw instead (not normalized, as the reference);
  3. shrink the norm budget by (1 - gamma) where the point was adversarial, grow it by
     (1 + gamma) where not, and rescale delta to that norm;
  4. quantize x + delta to `levels` grey levels (optional) and clip it to [0, 1].
Returns x + the best delta (x itself where no adversarial point was found). The point after
the last update is not evaluated, as in the reference.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jaxdefense.attacks.common import check_images
from jaxdefense.attacks.losses import cross_entropy
from jaxdefense.attacks.norms import get_norm


_l2 = get_norm("L2").size          # per-sample L2 norm [B]


def ddn(logits_fn, x, y, key, *, target=None, steps: int = 100, gamma: float = 0.05,
        init_norm: float = 1.0, quantize: bool = True, levels: int = 256):
    """DDN with advertorch's defaults (100 steps, gamma 0.05, initial norm 1, 256 levels);
    returns x_adv [B, H, W, C] in [0, 1]. target: [B] classes for the targeted attack
    (None: untargeted). key: the Gaussian directions of zero-gradient samples."""
    check_images(x, y)
    if steps < 1 or levels < 2:
        raise ValueError(f"steps must be >= 1 and levels >= 2, got {steps}, {levels}")
    if not (0 < gamma < 1 and init_norm > 0):
        raise ValueError(f"gamma must be in (0, 1) and init_norm > 0, got {gamma}, {init_norm}")
    if target is not None and target.shape != y.shape:
        raise ValueError(f"target must have shape {y.shape}, got {target.shape}")
    label = y if target is None else target
    return _ddn(logits_fn, x, label, key, target is not None,
                steps, jnp.float32(gamma), jnp.float32(init_norm), quantize, levels)


@partial(jax.jit, static_argnames=("logits_fn", "targeted", "steps", "quantize", "levels"))
def _ddn(logits_fn, x, label, key, targeted, steps, gamma, init_norm, quantize, levels):
    sign = 1.0 if targeted else -1.0          # the reference minimizes sign * CE
    shape = (-1,) + (1,) * (x.ndim - 1)
    worst = _l2(jnp.maximum(x, 1.0 - x))

    def loss(delta):
        logits = logits_fn(x + delta)
        return jnp.sum(sign * cross_entropy(logits, label)), logits

    def body(i, s):
        delta, norm, best_l2, best_delta = s
        alpha = 0.01 + 0.99 * (1 + jnp.cos(jnp.pi * (i + 1) / steps)) / 2
        l2 = _l2(delta)
        (_, logits), g = jax.value_and_grad(loss, has_aux=True)(delta)
        pred = jnp.argmax(logits, 1)
        is_adv = pred == label if targeted else pred != label
        better = is_adv & (l2 < best_l2)
        best_l2 = jnp.where(better, l2, best_l2)
        best_delta = jnp.where(better.reshape(shape), delta, best_delta)
        g_norm = _l2(g).reshape(shape)
        g = jnp.where(g_norm == 0, jax.random.normal(jax.random.fold_in(key, i), x.shape),
                      g / jnp.where(g_norm == 0, 1.0, g_norm))
        delta = delta - alpha * g
        norm = norm * (1 - (2 * is_adv.astype(jnp.float32) - 1) * gamma)
        d_norm = _l2(delta)
        delta = delta * (norm / jnp.where(d_norm == 0, 1.0, d_norm)).reshape(shape)
        z = x + delta
        if quantize:
            z = jnp.round(z * (levels - 1)) / (levels - 1)
        delta = jnp.clip(z, 0.0, 1.0) - x
        return delta, norm, best_l2, best_delta

    b = x.shape[0]
    init = (jnp.zeros_like(x), jnp.full((b,), init_norm), worst, jnp.zeros_like(x))
    _, _, _, best_delta = jax.lax.fori_loop(0, steps, body, init)
    return jnp.clip(x + best_delta, 0.0, 1.0)
