"""Square attack, Linf (Andriushchenko et al. 2020): score-based, no gradients.

Catches gradient masking: a defense that only breaks gradients falls to it. As the
reference: vertical-stripe start, margin loss, per-iteration square side from the p schedule
(p_init 0.8), window values +-2 eps per channel, accepted when the margin decreases, only for
points still classified correctly. Windows are drawn per sample (the `autoattack` code draws
one window per batch), keyed by the sample's index. One forward pass per query, in
`lax.fori_loop` segments between which fooled points are dropped.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxdefense.attacks.common import check_budget, check_images, gather_bucket, project_linf
from jaxdefense.attacks.losses import margin


def p_schedule(i, n_queries: int, p_init: float):
    """Fraction of pixels changed at query i (the reference's piecewise halving)."""
    it = jnp.floor(i / n_queries * 10000)
    bounds = jnp.array([10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000])
    return p_init / 2.0 ** jnp.sum(it > bounds)


def square(logits_fn, x, y, key, *, eps: float = 8 / 255, n_queries: int = 5000,
           p_init: float = 0.8, prune_every: int | None = 100):
    """Linf Square attack; x_adv [B, H, W, C] within eps of x in [0, 1].

    prune_every: every so many queries the points already misclassified are dropped and the
    rest gathered into a power-of-two batch (as torchattacks / auto-attack skip fooled
    points); None runs every point to the end. Random draws are made per sample from its
    index in x, so the result does not depend on the pruning."""
    check_budget(eps, steps=n_queries)
    check_images(x, y)
    if not 0 < p_init <= 1:
        raise ValueError(f"p_init must be in (0, 1], got {p_init}")
    if prune_every is not None and prune_every < 1:
        raise ValueError(f"prune_every must be >= 1 or None, got {prune_every}")
    eps, p_init = jnp.float32(eps), jnp.float32(p_init)
    ids = jnp.arange(len(x))
    x_best, loss_best = _square_init(logits_fn, x, y, key, eps, ids)
    if prune_every is None:
        return _square_queries(logits_fn, x, y, key, eps, ids, x_best, loss_best, 1,
                               n_queries, n_queries, p_init)[0]
    for start in range(1, n_queries, prune_every):
        stop = min(start + prune_every, n_queries)
        active = np.nonzero(np.asarray(loss_best > 0))[0]
        if len(active) == 0:
            break
        sub = gather_bucket(active, len(x))
        xb, lb = _square_queries(logits_fn, x[sub], y[sub], key, eps, ids[sub], x_best[sub],
                                 loss_best[sub], start, stop, n_queries, p_init)
        x_best = x_best.at[active].set(xb[:len(active)])
        loss_best = loss_best.at[active].set(lb[:len(active)])
    return x_best


def _per_sample(key, ids, fn):
    """fn(key_of_sample) for each sample, keyed by its index in the whole batch."""
    return jax.vmap(lambda i: fn(jax.random.fold_in(key, i)))(ids)


@partial(jax.jit, static_argnames=("logits_fn",))
def _square_init(logits_fn, x, y, key, eps, ids):
    """The vertical-stripe start and its margin loss (to minimize; < 0 once fooled)."""
    w, c = x.shape[2], x.shape[3]
    stripes = _per_sample(jax.random.fold_in(key, 0), ids,
                          lambda k: jax.random.choice(k, jnp.array([-1.0, 1.0]), (1, w, c)))
    x_best = project_linf(x + eps * stripes, x, eps)
    return x_best, -margin(logits_fn(x_best), y)


@partial(jax.jit, static_argnames=("logits_fn", "n_queries"))
def _square_queries(logits_fn, x, y, key, eps, ids, x_best, loss_best, start, stop,
                    n_queries, p_init):
    """Queries start .. stop - 1 of the attack on these points (one forward pass each)."""
    b, h, w, c = x.shape
    bshape = (b, 1, 1, 1)
    score = lambda xa: -margin(logits_fn(xa), y)
    k_loop = jax.random.fold_in(key, 1)
    rows = jnp.arange(h)[None, :, None, None]
    cols = jnp.arange(w)[None, None, :, None]

    def body(i, state):
        x_best, loss_best = state
        p = p_schedule(i, n_queries, p_init)
        s = jnp.clip(jnp.round(jnp.sqrt(p * h * w)).astype(jnp.int32), 1, min(h, w) - 1)

        def draw(k):
            kh, kw, kv = jax.random.split(k, 3)
            return (jax.random.randint(kh, (1, 1, 1), 0, h - s),
                    jax.random.randint(kw, (1, 1, 1), 0, w - s),
                    jax.random.choice(kv, jnp.array([-1.0, 1.0]), (1, 1, c)))
        vh, vw, sign = _per_sample(jax.random.fold_in(k_loop, i), ids, draw)
        window = (rows >= vh) & (rows < vh + s) & (cols >= vw) & (cols < vw + s)
        x_new = project_linf(jnp.where(window, x_best + 2.0 * eps * sign, x_best), x, eps)
        loss_new = score(x_new)
        accept = (loss_best > 0) & (loss_new < loss_best)
        return (jnp.where(accept.reshape(bshape), x_new, x_best),
                jnp.where(accept, loss_new, loss_best))

    return jax.lax.fori_loop(start, stop, body, (x_best, loss_best))
