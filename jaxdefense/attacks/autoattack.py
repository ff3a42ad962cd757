"""AutoAttack (Croce & Hein 2020): the per-sample worst case of several attacks, each run
only where the model is still right, under the Linf or the L2 threat model (`norm`).

'standard' (the reference's, as RobustBench runs it): APGD-CE, APGD-T (9 targets), FAB-T
(9 targets), Square (5000 queries, the reference's unrescaled p schedule), 100 iterations.
'rand' (randomized defenses, logits_fn(x, key)): APGD-CE and APGD-DLR with 20 EOT draws.
Points already fooled are dropped before the next attack, and, as in the reference, before
each target class of APGD-T and FAB-T (the j-th most likely wrong class at the clean point): the
robust ones are gathered into a batch of one of a few sizes (`buckets`: 'fine', the next of
1, 2, 3, 4, 6, 8, 12, ... so at most 2 log2(B) shapes ever compile and padding costs at most
1.5x; 'pow2', the next power of two, log2(B) shapes and up to 2x; `common.bucket_size`),
padded by repeating a robust point. compact=False keeps the whole batch with masks instead
(so does a batch spread over several processes, which no one host can index).
An attack is skipped once no point is left.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdefense.attacks.apgd import apgd, apgd_targeted, ranked_targets
from jaxdefense.attacks.common import (check_budget, check_buckets, check_images, jit_logits,
                                       on_host, on_robust_bucket)
from jaxdefense.attacks.fab import fab_targeted
from jaxdefense.attacks.norms import get_norm
from jaxdefense.attacks.square import square


def components(version: str, eps: float, steps: int, n_target_classes: int,
               square_queries: int, eot_samples: int, target_list=None, norm: str = "Linf",
               buckets: str = "fine"):
    """The (name, attack) stages of a version; each attack is `fn(logits_fn, x, y, key, rows)`
    with `rows` the indices of x in the whole batch. APGD-T and FAB-T are one stage per
    target class (target_list [n, B]: the classes, ranked at the clean point), named 'apgd-t'
    and 'fab-t'."""
    if version == "standard":
        apgd_t = [("apgd-t", lambda f, x, y, k, rows, t=t: apgd_targeted(
            f, x, y, k, eps=eps, steps=steps, targets=t[rows], norm=norm)) for t in target_list]
        fab_t = [("fab-t", lambda f, x, y, k, rows, t=t: fab_targeted(
            f, x, y, k, eps=eps, steps=steps, targets=t[rows], norm=norm)) for t in target_list]
        return [
            ("apgd-ce", lambda f, x, y, k, rows: apgd(f, x, y, k, eps=eps, steps=steps,
                                                       loss="ce", norm=norm)),
            *apgd_t, *fab_t,
            ("square", lambda f, x, y, k, rows: square(f, x, y, k, eps=eps, norm=norm,
                                                        n_queries=square_queries,
                                                        rescale_schedule=False,
                                                        buckets=buckets)),
        ]
    if version == "rand":
        return [(f"apgd-{loss}", lambda f, x, y, k, rows, loss=loss: apgd(
            f, x, y, k, eps=eps, steps=steps, loss=loss, eot_samples=eot_samples,
            stochastic=True, norm=norm)) for loss in ("ce", "dlr")]
    raise ValueError(f"unknown AutoAttack version {version!r}; choose 'standard' or 'rand'")


def autoattack(logits_fn, x, y, key, *, eps: float = 8 / 255, norm: str = "Linf",
               version: str = "standard", steps: int = 100, n_target_classes: int = 9,
               square_queries: int = 5000, eot_samples: int = 20, compact: bool = True,
               buckets: str = "fine", return_log: bool = False):
    """x_adv where some attack fooled the model, else x. eps: the budget in `norm` ('Linf'
    or 'L2'; RobustBench: Linf 8/255, L2 0.5). With return_log, also {attack: robust
    accuracy after it} (cumulative, over this batch)."""
    check_budget(eps, steps=steps)
    check_images(x, y)
    get_norm(norm)
    check_buckets(buckets)
    stochastic = version == "rand"
    compact = compact and on_host(x, y)      # a batch spread over processes: masks
    predict = lambda xa, k: jnp.argmax(jit_logits(logits_fn, xa, k, stochastic), 1)
    robust = predict(x, key) == y
    x_adv = x
    log = {"clean": float(jnp.mean(robust))}
    targets = (ranked_targets(jit_logits(logits_fn, x), n_target_classes)
               if version == "standard" else None)
    stages = components(version, eps, steps, n_target_classes, square_queries, eot_samples,
                        targets, norm, buckets)
    for i, (name, attack) in enumerate(stages):
        if not bool(jnp.any(robust)):
            log[name] = 0.0
            continue
        k = jax.random.fold_in(key, i)
        if compact:
            def run(sub):
                cand = attack(logits_fn, x[sub], y[sub], k, sub)
                return cand, predict(cand, jax.random.fold_in(k, 1)) != y[sub]
            idx, (cand, hit) = on_robust_bucket(run, np.asarray(robust), buckets)
            hit = np.asarray(hit)
            fooled_idx = idx[hit]
            x_adv = x_adv.at[fooled_idx].set(cand[hit])
            robust = robust.at[fooled_idx].set(False)
        else:
            cand = attack(logits_fn, x, y, k, np.arange(len(x)))
            fooled = robust & (predict(cand, jax.random.fold_in(k, 1)) != y)
            x_adv = jnp.where(fooled.reshape(-1, 1, 1, 1), cand, x_adv)
            robust = robust & ~fooled
        log[name] = float(jnp.mean(robust))
    return (x_adv, log) if return_log else x_adv
