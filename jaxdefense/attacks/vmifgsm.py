"""VMI-FGSM (Wang & He 2021): momentum iterative FGSM with variance tuning.

As torchattacks 3.5.1: g = (g_adv + v) / mean|g_adv + v| (per sample), m = g + decay * m,
v = mean of N neighbour gradients at x_adv + U(-beta*eps, beta*eps) minus g_adv (the
neighbours are not clipped), x_adv = P(x_adv + step_size * sign(m)). Returns the last
iterate, as the reference does. On a randomized model (stochastic=True, `logits_fn(x, key)`)
g_adv is the mean over `eot_samples` draws (EOT) and each neighbour gradient takes a draw
of its own.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jaxdefense.attacks.common import check_budget, check_images, loss_and_grad, project_linf
from jaxdefense.attacks.losses import get_loss


def vmifgsm(logits_fn, x, y, key, *, eps: float = 8 / 255, step_size: float = 2 / 255,
            steps: int = 10, decay: float = 1.0, neighbours: int = 5, beta: float = 1.5,
            loss: str = "ce", eot_samples: int = 1, stochastic: bool = False):
    check_budget(eps, step_size, steps)
    check_images(x, y)
    get_loss(loss)
    if neighbours < 1 or eot_samples < 1:
        raise ValueError(f"neighbours and eot_samples must be >= 1, got {neighbours}, "
                         f"{eot_samples}")
    return _vmifgsm(logits_fn, x, y, key, jnp.float32(eps),
                    jnp.float32(step_size), steps, jnp.float32(decay), neighbours, jnp.float32(beta), loss, eot_samples,
                    stochastic)


@partial(jax.jit, static_argnames=("logits_fn", "steps", "neighbours", "loss", "eot_samples",
                                   "stochastic"))
def _vmifgsm(logits_fn, x, y, key, eps, step_size, steps, decay, neighbours, beta, loss,
             eot_samples, stochastic):
    loss_fn = get_loss(loss)
    grad = lambda xa, k, n=1: loss_and_grad(logits_fn, loss_fn, xa, y, k, n, stochastic)[2]
    mean_abs = lambda g: jnp.mean(jnp.abs(g), axis=(1, 2, 3), keepdims=True)

    def body(i, state):
        xa, momentum, v = state
        k_eot = jax.random.fold_in(key, steps + i)       # the neighbours use fold_in(key, i)
        g_adv = grad(xa, jax.random.fold_in(k_eot, 0), eot_samples)
        g = (g_adv + v) / (mean_abs(g_adv + v) + 1e-12)
        g = g + decay * momentum
        noise = jax.random.uniform(jax.random.fold_in(key, i), (neighbours, *x.shape),
                                   minval=-beta * eps, maxval=beta * eps)
        draws = jax.random.split(jax.random.fold_in(k_eot, 1), neighbours)
        v = jnp.mean(jax.vmap(lambda n, k: grad(xa + n, k))(noise, draws), axis=0) - g_adv
        return project_linf(xa + step_size * jnp.sign(g), x, eps), g, v

    zeros = jnp.zeros_like(x)
    xa, _, _ = jax.lax.fori_loop(0, steps, body, (x, zeros, zeros))
    return xa
