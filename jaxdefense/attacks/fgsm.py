"""FGSM (Goodfellow et al. 2015): one signed-gradient step of size eps."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jaxdefense.attacks.common import check_budget, check_images, loss_and_grad, project_linf
from jaxdefense.attacks.losses import get_loss


def fgsm(logits_fn, x, y, key=None, *, eps: float, loss: str = "ce", eot_samples: int = 1,
         stochastic: bool = False):
    """x + eps * sign(grad loss), clipped to [0, 1]. stochastic=True: a randomized
    `logits_fn(x, key)`, its gradient the mean over `eot_samples` draws split from `key`
    (EOT); otherwise `key` is unused."""
    check_budget(eps)
    check_images(x, y)
    get_loss(loss)
    if eot_samples < 1:
        raise ValueError(f"eot_samples must be >= 1, got {eot_samples}")
    if stochastic and key is None:
        raise ValueError("a stochastic model needs a key")
    return _fgsm(logits_fn, x, y, key, jnp.float32(eps), loss, eot_samples, stochastic)


@partial(jax.jit, static_argnames=("logits_fn", "loss", "eot_samples", "stochastic"))
def _fgsm(logits_fn, x, y, key, eps, loss, eot_samples, stochastic):
    _, _, g = loss_and_grad(logits_fn, get_loss(loss), x, y, key, eot_samples, stochastic)
    return project_linf(x + eps * jnp.sign(g), x, eps)
