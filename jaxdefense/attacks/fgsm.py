"""FGSM (Goodfellow et al. 2015): one signed-gradient step of size eps."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jaxdefense.attacks.common import check_budget, check_images, loss_and_grad, project_linf
from jaxdefense.attacks.losses import get_loss
from jaxdefense.models.fast import fast


def fgsm(logits_fn, x, y, key=None, *, eps: float, loss: str = "ce"):
    """x + eps * sign(grad loss), clipped to [0, 1]. `key` is unused (FGSM is deterministic)."""
    check_budget(eps)
    check_images(x, y)
    get_loss(loss)
    return _fgsm(fast(logits_fn), x, y, jnp.float32(eps), loss)


@partial(jax.jit, static_argnames=("logits_fn", "loss"))
def _fgsm(logits_fn, x, y, eps, loss):
    _, _, g = loss_and_grad(logits_fn, get_loss(loss), x, y)
    return project_linf(x + eps * jnp.sign(g), x, eps)
