"""The Frank-Wolfe Wasserstein attack (FWA; Wu, Wang and Yu, ICML 2020), as the authors'
code `watml/fast-wasserstein-adversarial` runs it (`frank_wolfe.py`, `lmo.py`).

The perturbation moves pixel mass: a transport plan pi [B, C, H*W, k*k] sends mass from each
pixel i to its k x k neighbours j (cost |i - j|_2 in pixel units; neighbours that fall off
the image cost 1e6, so they receive next to no mass), with the row marginal fixed to the
image (sum_j pi[i, j] = x_i, channels separate) and the transport cost bounded by eps times
the image's total mass (one budget per image over its channels). The adversarial image is
x_adv[j] = sum_i pi[i, j]. Starting from the identity plan, each of `steps` iterations:
  1. G = the gradient of the cross-entropy at clip(x_adv, 0, 1) with respect to pi, divided
     by its largest absolute entry per sample;
  2. the linear maximization oracle, entropy-regularized: pi* = argmax <pi, G> + gamma H(pi)
     over the constraint set, pi*(lam)[i, :] = x_i softmax((G[i, :] - lam C[i, :]) / gamma)
     with the dual lam >= 0 found by bisection on sum C pi*(lam) - budget (at most
     `dual_steps` halvings, stopping when every sample's constraint gap is below `dual_tol`
     or every bracket is narrower than `dual_tol`; the feasible end is kept);
  3. pi += 2 / (t + 2) (pi* - pi).
Returns the last iterate's image (no best-point tracking, as the reference), clipped to
[0, 1]. The reference evaluates its MNIST examples unclipped (its `postprocess` projection
is off there) while its loss sees them clipped; here the model only ever sees [0, 1] images,
and the capacity-constrained projection (`postprocess`, the reference's CIFAR setting) is
not implemented.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxdefense.attacks.common import check_budget, check_images
from jaxdefense.attacks.losses import cross_entropy

_INF = 1e6


def neighbourhood(h: int, w: int, kernel: int):
    """(src [H*W, k*k] int, cost [H*W, k*k]): for destination pixel j and offset m, the
    source pixel i with i + offset_m = j (wrapping at the border, as the reference) and the
    cost of sending mass from pixel j to its m-th neighbour (1e6 off the image)."""
    r = kernel // 2
    offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
    rows, cols = np.divmod(np.arange(h * w), w)
    src = np.stack([((rows - dy) % h) * w + (cols - dx) % w for dy, dx in offsets], axis=1)
    inside = np.stack([(rows + dy >= 0) & (rows + dy < h) & (cols + dx >= 0) & (cols + dx < w)
                       for dy, dx in offsets], axis=1)
    dist = np.array([np.hypot(dy, dx) for dy, dx in offsets])
    cost = np.where(inside, dist[None, :], _INF).astype(np.float32)
    return src, cost


def fwa(logits_fn, x, y, key=None, *, eps: float, steps: int = 300, kernel: int = 5,
        gamma: float = 1e-3, dual_steps: int = 50, dual_tol: float = 1e-4,
        return_plan: bool = False):
    """FWA at Wasserstein radius eps (transport cost per unit of image mass, pixel units);
    defaults are the authors' MNIST test script (300 steps, 5 x 5 neighbourhood, entropy
    1e-3, 50 dual bisection steps, tolerance 1e-4). Untargeted; returns x_adv in [0, 1], or
    with return_plan (x_adv, pi): pi the last transport plan [B, C, H*W, k*k], whose costs
    are `neighbourhood`'s. key is unused (deterministic)."""
    check_images(x, y)
    check_budget(eps, steps=steps)
    if dual_steps < 1 or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"dual_steps must be >= 1 and kernel odd, got {dual_steps}, {kernel}")
    if not (gamma > 0 and dual_tol > 0):
        raise ValueError(f"gamma and dual_tol must be > 0, got {gamma}, {dual_tol}")
    src, cost = neighbourhood(x.shape[1], x.shape[2], kernel)
    adv, pi = _fwa(logits_fn, x, y, jnp.float32(eps), steps,
                   jnp.asarray(src), jnp.asarray(cost), jnp.float32(gamma), dual_steps,
                   jnp.float32(dual_tol), return_plan)
    return (adv, pi) if return_plan else adv


def _to_image(pi, src, shape):
    """x_adv [B, H, W, C] from pi [B, C, HW, K]: x_adv[j] = sum_m pi[src[j, m], m]."""
    gathered = pi[:, :, src, jnp.arange(src.shape[1])[None, :]]
    b, h, w, c = shape
    return jnp.moveaxis(gathered.sum(-1).reshape(b, c, h, w), 1, -1)


def lmo(g, mass, cost, budget, gamma, dual_steps, dual_tol):
    """The entropy-regularized oracle: pi* [B, C, HW, K] for the normalized gradient g
    [B, C, HW, K], row masses [B, C, HW], costs [HW, K] and per-image budgets [B]."""
    def recover(lam):
        return mass[..., None] * jax.nn.softmax((g - lam[:, None, None, None] * cost) / gamma,
                                                axis=-1)

    def gap(lam):
        return jnp.sum(recover(lam) * cost, axis=(1, 2, 3)) - budget

    finite = jnp.sum(mass[..., None] * cost * (cost < _INF), axis=(1, 2, 3))
    right = 2 * jnp.max(jnp.abs(g), axis=(1, 2, 3)) + gamma * jnp.log(finite / budget)
    right = jnp.maximum(right, 0.0)

    def cond(s):
        i, a, b, done = s
        return (i < dual_steps) & ~done

    def body(s):
        i, a, b, _ = s
        mid = (a + b) / 2
        d = gap(mid)
        a = jnp.where(d > 0, mid, a)
        b = jnp.where(d > 0, b, mid)
        done = jnp.all(jnp.abs(d) < dual_tol) | (jnp.max(b - a) < dual_tol)
        return i + 1, a, b, done

    _, _, lam, _ = jax.lax.while_loop(cond, body, (0, jnp.zeros_like(right), right,
                                                   jnp.bool_(False)))
    return recover(lam)


@partial(jax.jit, static_argnames=("logits_fn", "steps", "dual_steps", "return_plan"))
def _fwa(logits_fn, x, y, eps, steps, src, cost, gamma, dual_steps, dual_tol, return_plan):
    b, h, w, c = x.shape
    k2 = cost.shape[1]
    mass = jnp.moveaxis(x, -1, 1).reshape(b, c, h * w)
    centre = k2 // 2
    pi0 = jnp.zeros((b, c, h * w, k2), x.dtype).at[..., centre].set(mass)
    budget = jnp.maximum(eps * jnp.sum(x, axis=(1, 2, 3)), 1e-12)

    def loss(pi):
        adv = jnp.clip(_to_image(pi, src, x.shape), 0.0, 1.0)
        return jnp.sum(cross_entropy(logits_fn(adv), y))

    def body(t, pi):
        g = jax.grad(loss)(pi)
        g = g / (jnp.max(jnp.abs(g), axis=(1, 2, 3), keepdims=True) + 1e-35)
        target = lmo(g, mass, cost, budget, gamma, dual_steps, dual_tol)
        return pi + 2.0 / (t + 2) * (target - pi)

    pi = jax.lax.fori_loop(0, steps, body, pi0)
    return jnp.clip(_to_image(pi, src, x.shape), 0.0, 1.0), (pi if return_plan else None)
