"""APGD and APGD-T (Croce & Hein 2020), Linf and L2, as in the reference `autoattack` code.

Start x + eps * t / |t| with t ~ U[-1, 1]^d (Linf) or N(0, I) (L2); step eta = 2 eps;
momentum 0.75 (1 on the first step): z = P(x_k + eta s(g)),
x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1})), with s(g) = sign(g) (Linf) or
g / |g|_2 (L2) and P the projection onto the eps-ball and [0, 1] (`norms.py`).
Checkpoints after 0.22 N iterations, then intervals shrinking by 0.03 N down to 0.06 N. At a
checkpoint a sample halves its step and restarts from its best point if its loss rose on at
most rho = 0.75 of the steps since the last checkpoint, or if its step was not halved last
time and its best loss did not improve. All state is per sample, in arrays, in one
`lax.fori_loop`; the checkpoint schedule is fixed by N at trace time.

Returns, per sample, the first point found that is misclassified, else the highest-loss
point (the reference returns the clean x there; accuracy is the same).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxdefense.attacks.common import (call_logits, check_budget, check_buckets, check_images,
                                       init_best, jit_logits, keep_best, loss_and_grad,
                                       on_host, per_target_stages)
from jaxdefense.attacks.losses import dlr_targeted, get_loss
from jaxdefense.attacks.norms import get_norm


def checkpoint_schedule(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(is_check[i], k[i]): whether iteration i ends a checkpoint interval, and its length."""
    k, k_min, decr = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    is_check, length = np.zeros(steps, bool), np.zeros(steps, np.int32)
    i = k - 1
    while i < steps:
        is_check[i], length[i] = True, k
        k = max(k - decr, k_min)
        i += k
    return is_check, length


def _run(logits_fn, loss_fn, x, y, key, eps, steps, rho, eot_samples, stochastic, norm):
    """One APGD run; returns (best_x, best_loss, fooled) with the keep_best convention."""
    b = x.shape[0]
    bshape = (b,) + (1,) * (x.ndim - 1)
    k_start, k_loop = jax.random.split(key)
    evaluate = lambda xa, k: loss_and_grad(logits_fn, loss_fn, xa, y, k, eot_samples, stochastic)
    is_check, length = (jnp.asarray(a) for a in checkpoint_schedule(steps))

    x_adv = norm.sphere_start(k_start, x, eps)
    losses, logits, grad = evaluate(x_adv, jax.random.fold_in(k_loop, steps))
    fooled = jnp.argmax(logits, 1) != y
    state = dict(
        x_adv=x_adv, x_old=x_adv, grad=grad, grad_best=grad, x_best=x_adv, x_fool=x_adv,
        loss_best=losses, fooled=fooled, step=jnp.full(bshape, 2.0 * eps),
        loss_steps=jnp.zeros((steps, b)), loss_last_check=losses,
        reduced_last_check=jnp.ones((b,), bool))

    def checkpoint(s, i):
        k = length[i]
        c = jnp.arange(steps)
        rose = (s["loss_steps"][(i - c) % steps] > s["loss_steps"][(i - c - 1) % steps])
        count = jnp.sum(jnp.where((c < k)[:, None], rose, False), axis=0)
        oscillating = count <= k * rho
        no_improvement = ~s["reduced_last_check"] & (s["loss_last_check"] >= s["loss_best"])
        reduce = oscillating | no_improvement
        r = reduce.reshape(bshape)
        return dict(s, reduced_last_check=reduce, loss_last_check=s["loss_best"],
                    step=jnp.where(r, s["step"] / 2.0, s["step"]),
                    x_adv=jnp.where(r, s["x_best"], s["x_adv"]),
                    grad=jnp.where(r, s["grad_best"], s["grad"]))

    def body(i, s):
        a = jnp.where(i > 0, 0.75, 1.0)
        xa, x_old = s["x_adv"], s["x_old"]
        z = norm.project(xa + s["step"] * norm.ascent(s["grad"]), x, eps)
        x_new = norm.project(xa + a * (z - xa) + (1.0 - a) * (xa - x_old), x, eps)
        losses, logits, grad = evaluate(x_new, jax.random.fold_in(k_loop, i))
        now_fooled = jnp.argmax(logits, 1) != y
        first = (now_fooled & ~s["fooled"]).reshape(bshape)
        better = losses > s["loss_best"]
        bb = better.reshape(bshape)
        s = dict(s, x_old=xa, x_adv=x_new, grad=grad,
                 x_fool=jnp.where(first, x_new, s["x_fool"]), fooled=s["fooled"] | now_fooled,
                 loss_steps=s["loss_steps"].at[i].set(losses),
                 x_best=jnp.where(bb, x_new, s["x_best"]),
                 grad_best=jnp.where(bb, grad, s["grad_best"]),
                 loss_best=jnp.where(better, losses, s["loss_best"]))
        return jax.lax.cond(is_check[i], checkpoint, lambda s, i: s, s, i)

    s = jax.lax.fori_loop(0, steps, body, state)
    out = jnp.where(s["fooled"].reshape(bshape), s["x_fool"], s["x_best"])
    return out, s["loss_best"], s["fooled"]


def _check(eps, steps, x, y, restarts, rho):
    check_budget(eps, steps=steps)
    check_images(x, y)
    if restarts < 1 or not 0 < rho <= 1:
        raise ValueError(f"need restarts >= 1 and 0 < rho <= 1, got {restarts}, {rho}")


def apgd(logits_fn, x, y, key, *, eps: float = 8 / 255, steps: int = 100, restarts: int = 1,
         loss: str = "ce", rho: float = 0.75, eot_samples: int = 1, stochastic: bool = False,
         norm: str = "Linf"):
    """Untargeted APGD with loss 'ce' or 'dlr' ('margin' also accepted), in the Linf or L2
    (`norm`) eps-ball (RobustBench's budgets: Linf 8/255, L2 0.5).

    stochastic=True calls logits_fn(x, key) and averages over eot_samples draws (rand AA).
    """
    _check(eps, steps, x, y, restarts, rho)
    get_loss(loss)
    return _apgd(logits_fn, x, y, key, jnp.float32(eps), steps, restarts, loss, rho, eot_samples,
                 stochastic, get_norm(norm))


@partial(jax.jit, static_argnames=("logits_fn", "steps", "restarts", "loss", "rho",
                                   "eot_samples", "stochastic", "norm"))
def _apgd(logits_fn, x, y, key, eps, steps, restarts, loss, rho, eot_samples, stochastic,
          norm):
    loss_fn = get_loss(loss)

    def one(best, k):
        out, loss_best, fooled = _run(logits_fn, loss_fn, x, y, k, eps, steps, rho,
                                      eot_samples, stochastic, norm)
        return keep_best(out, loss_best, fooled, best), None
    (best_x, _, _), _ = jax.lax.scan(one, init_best(x), jax.random.split(key, restarts))
    return best_x


def ranked_targets(logits, n_target_classes: int):
    """[n, B]: the 2nd .. (n+1)-th most likely classes of each point (APGD-T's targets)."""
    n_classes = logits.shape[1]
    if n_classes < 2:
        raise ValueError(f"a targeted attack needs at least 2 classes, got {n_classes}")
    order = jnp.argsort(logits, axis=1)
    n = min(n_target_classes, n_classes - 1)
    return jnp.stack([order[:, -(j + 2)] for j in range(n)])


def apgd_targeted(logits_fn, x, y, key, *, eps: float = 8 / 255, steps: int = 100,
                  n_target_classes: int = 9, targets=None, restarts: int = 1,
                  rho: float = 0.75, eot_samples: int = 1, stochastic: bool = False,
                  norm: str = "Linf", buckets: str | None = "fine"):
    """APGD-T: targeted DLR toward each of the 2nd..(n+1)-th most likely classes at the
    clean point (or toward the given `targets` [B]); success means misclassified.

    Called outside jit, the target classes run one at a time on the points still robust
    (those misclassified at x or fooled by an earlier target are dropped, as the reference
    does), gathered into batches of a few sizes (`buckets`, see `common.bucket_size`);
    buckets=None, or a call inside jit, runs every point for every target in one compiled
    loop (same robust accuracy, more work)."""
    _check(eps, steps, x, y, restarts, rho)
    if targets is not None and targets.shape != y.shape:
        raise ValueError(f"targets must have shape {y.shape}, got {targets.shape}")
    if buckets is not None:
        check_buckets(buckets)
    f, norm, eps = logits_fn, get_norm(norm), jnp.float32(eps)
    run = lambda x, y, k, t, n: _apgd_t(f, x, y, k, eps, steps, n, t, restarts, rho,
                                        eot_samples, stochastic, norm)
    if targets is not None or buckets is None or not on_host(x, y, key, eps):
        return run(x, y, key, targets, n_target_classes)[0]
    logits = jit_logits(f, x, key, stochastic)
    return per_target_stages(lambda xr, yr, tr, k: run(xr, yr, k, tr, 1), x, y, logits,
                             ranked_targets(logits, n_target_classes), key, buckets)


@partial(jax.jit, static_argnames=("logits_fn", "steps", "n_target_classes", "restarts", "rho",
                                   "eot_samples", "stochastic", "norm"))
def _apgd_t(logits_fn, x, y, key, eps, steps, n_target_classes, targets, restarts, rho,
            eot_samples, stochastic, norm):
    """(best_x, best_loss, fooled) over the targets (the keep_best convention)."""
    if targets is None:
        target_list = ranked_targets(call_logits(logits_fn, x, key, stochastic),
                                     n_target_classes)
    else:
        target_list = targets[None]

    def one(best, tk):
        target, k = tk
        loss_fn = lambda logits, yy: dlr_targeted(logits, yy, target)
        for r, kr in enumerate(jax.random.split(k, restarts)):
            out, loss_best, fooled = _run(logits_fn, loss_fn, x, y, kr, eps, steps, rho,
                                          eot_samples, stochastic, norm)
            best = keep_best(out, loss_best, fooled, best)
        return best, None
    keys = jax.random.split(key, target_list.shape[0])
    best, _ = jax.lax.scan(one, init_best(x), (target_list, keys))
    return best
