"""PGD (Madry et al. 2018) and EOT-PGD under Linf or L2, as one compiled `lax` loop.

Composed from the norm's parts (`norms.py`: random start, steepest-ascent step, projection)
and a loss (`losses.py`): Linf steps by step_size * sign(g), L2 by step_size * g / |g|_2
(torchattacks' PGD / PGDL2).

Returns the best point per sample, not the last iterate: an iterate that fools the model
beats one that does not; among equals the higher loss wins. Restarts draw new uniform
starts and keep the per-sample best.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jaxdefense.attacks.common import (call_logits, check_budget, check_images, init_best,
                                       keep_best, loss_and_grad)
from jaxdefense.attacks.losses import get_loss
from jaxdefense.attacks.norms import get_norm


def pgd(logits_fn, x, y, key, *, eps: float, step_size: float | None = None, steps: int = 10,
        random_start: bool = True, restarts: int = 1, loss="ce",
        eot_samples: int = 1, stochastic: bool = False, start_std: float | None = None,
        return_last: bool = False, norm: str = "Linf", target=None):
    """Untargeted PGD in the Linf or L2 (`norm`) eps-ball. step_size (same units as eps)
    defaults to 2.5 * eps / steps (Madry et al.).

    loss: 'ce', 'margin' (C&W-Linf), 'dlr', or a callable `(logits, y) -> [B]` to maximize
    (adversarial training passes e.g. TRADES' KL to the clean prediction). stochastic=True
    calls logits_fn(x, key) and averages gradients over eot_samples draws per step (see
    `eotpgd`). start_std: a Gaussian random start with this std (TRADES: 0.001) instead of
    the uniform one. return_last: the last iterate instead of the best point (what
    adversarial-training references use; cheaper, no extra forward pass).

    target: [B] classes for targeted PGD (advertorch's `targeted=True`): the step descends
    `loss(logits, target)` and a point succeeds once it is classified as its target.
    """
    check_budget(eps, steps=steps)
    step_size = 2.5 * eps / steps if step_size is None else step_size
    check_budget(eps, step_size, steps)
    check_images(x, y)
    if not callable(loss):
        get_loss(loss)
    if target is not None and target.shape != y.shape:
        raise ValueError(f"target must have shape {y.shape}, got {target.shape}")
    if restarts < 1 or eot_samples < 1:
        raise ValueError(f"restarts and eot_samples must be >= 1, got {restarts}, {eot_samples}")
    return _pgd(logits_fn, x, y, key, jnp.float32(eps),
                jnp.float32(step_size), steps, random_start, restarts, loss, eot_samples,
                stochastic, start_std, return_last, get_norm(norm), target)


def eotpgd(logits_fn, x, y, key, *, eps: float, step_size: float | None = None,
           steps: int = 10, eot_samples: int = 10, random_start: bool = True,
           restarts: int = 1, loss: str = "ce", norm: str = "Linf"):
    """PGD on a randomized model `logits_fn(x, key)`: each step's gradient is the mean over
    `eot_samples` vmapped draws of the model's randomness (Athalye et al. 2018)."""
    return pgd(logits_fn, x, y, key, eps=eps, step_size=step_size, steps=steps,
               random_start=random_start, restarts=restarts, loss=loss,
               eot_samples=eot_samples, stochastic=True, norm=norm)


@partial(jax.jit, static_argnames=("logits_fn", "steps", "random_start", "restarts", "loss",
                                   "eot_samples", "stochastic", "start_std", "return_last",
                                   "norm"))
def _pgd(logits_fn, x, y, key, eps, step_size, steps, random_start, restarts, loss,
         eot_samples, stochastic, start_std, return_last, norm, target=None):
    base = loss if callable(loss) else get_loss(loss)
    if target is None:
        loss_fn, label = base, y

        def fooled(logits):
            return jnp.argmax(logits, 1) != y
    else:   # maximize -loss(., target); success is reaching the target
        def loss_fn(logits, t):
            return -base(logits, t)
        label = target

        def fooled(logits):
            return jnp.argmax(logits, 1) == target

    def evaluate(xa, k):
        return loss_and_grad(logits_fn, loss_fn, xa, label, k, eot_samples, stochastic)

    def start(k):
        if not random_start:
            return x
        if start_std is not None:
            return norm.project(x + start_std * jax.random.normal(k, x.shape), x, eps)
        return norm.uniform_start(k, x, eps)

    def step(xa, g):
        return norm.project(xa + step_size * norm.ascent(g), x, eps)

    def one_run(best, run_key):
        k_start, k_steps = jax.random.split(run_key)
        x0 = start(k_start)

        def body(i, state):
            xa, best = state
            losses, logits, g = evaluate(xa, jax.random.fold_in(k_steps, i))
            best = keep_best(xa, losses, fooled(logits), best)
            return step(xa, g), best

        xa, best = jax.lax.fori_loop(0, steps, body, (x0, best))
        # the last iterate is a candidate too
        logits = call_logits(logits_fn, xa, jax.random.fold_in(k_steps, steps), stochastic)
        return keep_best(xa, loss_fn(logits, label), fooled(logits), best), None

    if return_last:   # one run, the last iterate (restarts are ignored)
        def plain(i, xa):
            _, _, g = evaluate(xa, jax.random.fold_in(key, i))
            return step(xa, g)
        return jax.lax.fori_loop(0, steps, plain, start(jax.random.fold_in(key, steps)))
    (best_x, _, _), _ = jax.lax.scan(one_run, init_best(x), jax.random.split(key, restarts))
    return best_x
