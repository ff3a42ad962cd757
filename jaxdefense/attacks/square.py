"""Square attack, Linf (Andriushchenko et al. 2020): score-based, no gradients.

Catches gradient masking: a defense that only breaks gradients falls to it. As the
reference: vertical-stripe start, margin loss, per-iteration square side from the p schedule
(p_init 0.8), window values +-2 eps per channel, accepted when the margin decreases, only for
points still classified correctly. Windows are drawn per sample (the `autoattack` code draws
one window per batch). One forward pass per query, in one `lax.fori_loop`.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jaxdefense.attacks.common import check_budget, check_images, project_linf
from jaxdefense.attacks.losses import margin


def p_schedule(i, n_queries: int, p_init: float):
    """Fraction of pixels changed at query i (the reference's piecewise halving)."""
    it = jnp.floor(i / n_queries * 10000)
    bounds = jnp.array([10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000])
    return p_init / 2.0 ** jnp.sum(it > bounds)


def square(logits_fn, x, y, key, *, eps: float = 8 / 255, n_queries: int = 5000,
           p_init: float = 0.8):
    check_budget(eps, steps=n_queries)
    check_images(x, y)
    if not 0 < p_init <= 1:
        raise ValueError(f"p_init must be in (0, 1], got {p_init}")
    return _square(logits_fn, x, y, key, jnp.float32(eps), n_queries, jnp.float32(p_init))


@partial(jax.jit, static_argnames=("logits_fn", "n_queries"))
def _square(logits_fn, x, y, key, eps, n_queries, p_init):
    b, h, w, c = x.shape
    bshape = (b, 1, 1, 1)
    # margin loss to minimize: z_y - max_{i != y} z_i (negative once misclassified)
    score = lambda xa: -margin(logits_fn(xa), y)
    k0, k_loop = jax.random.split(key)
    stripes = jax.random.choice(k0, jnp.array([-1.0, 1.0]), (b, 1, w, c))
    x_best = project_linf(x + eps * stripes, x, eps)
    loss_best = score(x_best)
    rows = jnp.arange(h)[None, :, None, None]
    cols = jnp.arange(w)[None, None, :, None]

    def body(i, state):
        x_best, loss_best = state
        kh, kw, kv = jax.random.split(jax.random.fold_in(k_loop, i), 3)
        p = p_schedule(i, n_queries, p_init)
        s = jnp.clip(jnp.round(jnp.sqrt(p * h * w)).astype(jnp.int32), 1, min(h, w) - 1)
        vh = jax.random.randint(kh, bshape, 0, h - s)
        vw = jax.random.randint(kw, bshape, 0, w - s)
        window = (rows >= vh) & (rows < vh + s) & (cols >= vw) & (cols < vw + s)
        values = 2.0 * eps * jax.random.choice(kv, jnp.array([-1.0, 1.0]), (b, 1, 1, c))
        x_new = project_linf(jnp.where(window, x_best + values, x_best), x, eps)
        loss_new = score(x_new)
        accept = (loss_best > 0) & (loss_new < loss_best)
        return (jnp.where(accept.reshape(bshape), x_new, x_best),
                jnp.where(accept, loss_new, loss_best))

    x_best, _ = jax.lax.fori_loop(1, n_queries, body, (x_best, loss_best))
    return x_best
