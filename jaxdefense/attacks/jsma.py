"""The Jacobian-based saliency map attack (Papernot et al. 2016), targeted, L0, as
advertorch's `JacobianSaliencyMapAttack` runs it (the library the ARN paper attacked with).

Each iteration, for every sample not yet classified as its target: the gradients of the
target logit (g_t) and of the sum of the other logits (g_o) with respect to the input
(logits, not probabilities); over pairs of distinct features p, q still in the search
domain, alpha = g_t[p] + g_t[q], beta = g_o[p] + g_o[q]; among pairs with alpha > 0 and
beta < 0 (theta > 0; alpha < 0 and beta > 0 for theta < 0) the pair maximizing -alpha * beta
moves both features by theta (then the image is clipped to [0, 1]) and leaves the search
domain. A sample with no such pair stays as it is. The loop ends when every sample is
classified as its target or after int(d * gamma / 2) iterations (d = H * W * C features).
There is no best-point tracking: a failed sample comes back with the features it changed.

Cost: each iteration one forward pass and two input gradients of the batch, and the pair
scores (d^2 per sample, about 2.5 MB on MNIST) of the samples not yet at their target, one
sample at a time (`lax.map` with `lax.cond`: a sample that is done costs nothing, and the
loop runs until the last one is).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jaxdefense.attacks.common import check_images


def jsma(logits_fn, x, y, key=None, *, target=None, theta: float = 1.0, gamma: float = 1.0):
    """Targeted JSMA with advertorch's defaults (theta 1, gamma 1); returns x_adv in [0, 1].
    target: [B] classes (required: the attack is targeted). y and key are unused (the
    common attack signature); the loop stops per sample on reaching its target."""
    check_images(x, y)
    if target is None or target.shape != y.shape:
        raise ValueError(f"jsma is targeted: target must be [B] classes of shape {y.shape}, "
                         f"got {None if target is None else target.shape}")
    if theta == 0 or not (0 < gamma <= 1):
        raise ValueError(f"theta must be non-zero and gamma in (0, 1], got {theta}, {gamma}")
    return _jsma(logits_fn, x, target, float(theta),
                 float(gamma))


def _best_pair(g_t, g_o, domain, increase: bool):
    """For one sample's flat g_t, g_o and search domain [d] (bool): (p, q, valid)."""
    alpha = g_t[:, None] + g_t[None, :]
    beta = g_o[:, None] + g_o[None, :]
    d = g_t.shape[0]
    ok = (alpha > 0) & (beta < 0) if increase else (alpha < 0) & (beta > 0)
    ok = ok & domain[:, None] & domain[None, :] & ~jnp.eye(d, dtype=bool)
    score = jnp.where(ok, -alpha * beta, 0.0).reshape(-1)
    best = jnp.argmax(score).astype(jnp.int32)
    return best % d, best // d, jnp.any(ok)


@partial(jax.jit, static_argnames=("logits_fn", "theta", "gamma"))
def _jsma(logits_fn, x, target, theta, gamma):
    b = x.shape[0]
    d = x[0].size
    max_iters = int(d * gamma / 2)
    onehot = jax.nn.one_hot(target, _classes(logits_fn, x), dtype=x.dtype)

    def cond(s):
        i, _, _, pred = s
        return (i < max_iters) & jnp.any(pred != target)

    def body(s):
        i, xa, domain, pred = s
        logits, vjp = jax.vjp(logits_fn, xa)
        (g_t,) = vjp(onehot)
        (g_all,) = vjp(jnp.ones_like(logits))
        g_t = g_t.reshape(b, d)
        g_o = g_all.reshape(b, d) - g_t
        def pair(a):
            *grads, active = a
            return jax.lax.cond(active, lambda: _best_pair(*grads, theta > 0),
                                lambda: (jnp.int32(0), jnp.int32(0), jnp.bool_(False)))
        p, q, valid = jax.lax.map(pair, (g_t, g_o, domain, pred != target))
        move = (pred != target) & valid
        rows = jnp.arange(b)
        step = jnp.zeros((b, d), x.dtype).at[rows, p].add(theta).at[rows, q].add(theta)
        flat = jnp.clip(xa.reshape(b, d) + jnp.where(move[:, None], step, 0.0), 0.0, 1.0)
        used = jnp.zeros((b, d), bool).at[rows, p].set(True).at[rows, q].set(True)
        domain = domain & ~(used & move[:, None])
        xa = flat.reshape(x.shape)
        return i + 1, xa, domain, jnp.argmax(logits_fn(xa), 1)

    init = (0, x, jnp.ones((b, d), bool), jnp.argmax(logits_fn(x), 1))
    return jax.lax.while_loop(cond, body, init)[1]


def _classes(logits_fn, x) -> int:
    return jax.eval_shape(logits_fn, x).shape[1]
