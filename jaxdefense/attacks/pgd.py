"""Linf PGD (Madry et al. 2018) as one compiled `lax` loop; returns the best point per sample.

"Best" means: an iterate that fools the model beats one that does not; among equals the
higher loss wins. Restarts draw new uniform starts and keep the per-sample best.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jaxdefense.attacks.common import check_budget, check_images, loss_and_grad, project_linf
from jaxdefense.attacks.losses import get_loss


def pgd(logits_fn, x, y, key, *, eps: float, step_size: float | None = None, steps: int = 10,
        random_start: bool = True, restarts: int = 1, loss: str = "ce"):
    """Untargeted Linf PGD. step_size defaults to 2.5 * eps / steps (Madry et al.)."""
    check_budget(eps, steps=steps)
    step_size = 2.5 * eps / steps if step_size is None else step_size
    check_budget(eps, step_size, steps)
    check_images(x, y)
    get_loss(loss)
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    return _pgd(logits_fn, x, y, key, jnp.float32(eps), jnp.float32(step_size), steps,
                random_start, restarts, loss)


@partial(jax.jit, static_argnames=("logits_fn", "steps", "random_start", "restarts", "loss"))
def _pgd(logits_fn, x, y, key, eps, step_size, steps, random_start, restarts, loss):
    loss_fn = get_loss(loss)
    b = x.shape[0]
    bcast = lambda v: v.reshape((b,) + (1,) * (x.ndim - 1))

    def keep_best(xa, losses, logits, best):
        """Per sample, replace the best point by xa if xa fools the model and the best does
        not, or if both agree on fooling and xa has the higher loss."""
        bx, bl, bf = best
        fooled = jnp.argmax(logits, axis=1) != y
        upd = (fooled & ~bf) | ((fooled == bf) & (losses > bl))
        return (jnp.where(bcast(upd), xa, bx), jnp.where(upd, losses, bl),
                jnp.where(upd, fooled, bf))

    def one_run(carry, run_key):
        x0 = x
        if random_start:
            x0 = project_linf(x + jax.random.uniform(run_key, x.shape, minval=-eps, maxval=eps),
                              x, eps)

        def body(_, state):
            xa, best = state
            losses, logits, g = loss_and_grad(logits_fn, loss_fn, xa, y)
            best = keep_best(xa, losses, logits, best)
            return project_linf(xa + step_size * jnp.sign(g), x, eps), best

        xa, best = jax.lax.fori_loop(0, steps, body, (x0, carry))
        logits = logits_fn(xa)   # the last iterate is a candidate too
        return keep_best(xa, loss_fn(logits, y), logits, best), None

    init = (x, jnp.full((b,), -jnp.inf), jnp.zeros((b,), bool))
    (best_x, _, _), _ = jax.lax.scan(one_run, init, jax.random.split(key, restarts))
    return best_x
