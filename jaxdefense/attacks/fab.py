"""FAB-T, the targeted Fast Adaptive Boundary attack (Croce & Hein 2020), Linf and L2, as in
the reference `autoattack` code (`fab_base.py`, `fab_pt.py`, `fab_projections.py`) and as
AutoAttack's 'standard' version runs it (1 restart, 100 iterations, 9 target classes,
alpha_max 0.1, eta 1.05, beta 0.9).

A minimum-norm attack: each iteration linearizes g(x) = z_t(x) - z_y(x) (target minus true
logit; one gradient of its batch sum) at the current point x_k, projects both x_k and the
clean x onto the hyperplane {g = 0} intersected with the box [0, 1]^d (minimal Linf / L2
displacement: `projection_linf`, `projection_l2`), and moves to
    x_{k+1} = clip((1 - a)(x_k + eta d_k) + a (x + eta d_0), 0, 1),
    a = min(max(|d_k| / (|d_k| + |d_0|), 0), alpha_max)   (|.| clamped below at 1e-8).
A point that is misclassified is kept if it is closer to x than the best one so far, and is
pulled back to x + beta (x_{k+1} - x). A stage targets the j-th most likely class at the
clean point (j = 2 .. n_target_classes + 1) and succeeds where the best point found is
misclassified and within eps of x; points already fooled keep their first success, points
never fooled (or misclassified from the start) keep x. Restart r > 0 starts from
clip(x + eps / 2 * t / |t|, 0, 1), t ~ U[-1, 1]^d (Linf) or N(0, I) (L2).

The math is the reference's, step for step (checked against it by
tests/test_reference_agreement.py). Differences are only in how it runs: a stage (one target class)
is one `lax.fori_loop` over a batch with all state per sample, selected by `jnp.where`
(points fooled within the stage are computed on and their results discarded, so the output
is the same). Between target classes, as the reference, only the still-robust points go on:
outside jit they are gathered on the host into a bucketed batch (`common.per_target_stages`;
the reference indexes boolean-mask subsets); inside jit (or buckets=None) the (target,
restart) stages are one `lax.scan` over the whole batch and a stage is skipped
(`lax.cond`) once no point is left. The projections find the same displacement as the
reference's without its sort (a bisection on the step length; see `projection_linf`), within
float32 rounding (tests/test_reference_agreement.py: 1.2e-7 Linf, 5.4e-7 L2 at d = 3072).
Random starts (restarts > 1 only) use jax.random, not torch's generator; classes with tied
logits may be ranked in another order (stable argsort). Cost per stage: `steps` gradient
evaluations plus `steps + 1` forward passes, and per step one projection of 2B rows (x_k
and x; 32 bisection passes over d values per row).
"""
from __future__ import annotations

import numbers
from functools import partial

import jax
import jax.numpy as jnp

from jaxdefense.attacks.apgd import ranked_targets
from jaxdefense.attacks.common import (check_budget, check_buckets, check_images, jit_logits,
                                       on_host, per_target_stages)
from jaxdefense.attacks.norms import get_norm


def _take(a, idx):
    """a[i, idx[i]] for a [N, d] and idx [N] (ints) -> [N]."""
    return jnp.take_along_axis(a, idx[:, None], axis=1)[:, 0]


def _largest_level_below(value, c, hi, steps: int = 32):
    """Per row the largest float32 lam in [0, hi] with value(lam) <= c, for `value` [N] ->
    [N] nondecreasing in lam and value(0) <= c: a bisection over the bit patterns of the
    non-negative float32 numbers (ordered as the numbers), so 32 steps reach neighbouring
    floats from any range [0, hi]. A `fori_loop`, not unrolled (XLA's compile time grows
    steeply with unrolled steps)."""
    as_float = lambda bits: jax.lax.bitcast_convert_type(bits, jnp.float32)

    def body(_, lh):
        lo, up = lh
        mid = lo + (up - lo) // 2
        ok = value(as_float(mid)) <= c
        return jnp.where(ok, mid, lo), jnp.where(ok, up, mid)
    init = (jnp.zeros(hi.shape, jnp.int32),
            jax.lax.bitcast_convert_type(hi.astype(jnp.float32), jnp.int32))
    return as_float(jax.lax.fori_loop(0, steps, body, init)[0])


def _piecewise_solve(gain, weight, breaks, c):
    """(lam [N, 1] >= 0, feasible [N, 1]): lam with sum_i (gain_i if breaks_i <= lam else
    lam * weight_i) = c, the sum being nondecreasing and continuous in lam (coordinate i
    saturates at breaks_i, where lam * weight_i = gain_i): the breakpoint segment that holds
    lam* is found by bisection (`_largest_level_below`), then lam solved exactly on it.
    feasible: c < sum_i gain_i, the sum's largest value; elsewhere lam is unused (callers
    take the box corner)."""
    def level(lam):
        lam = lam[:, None]
        return jnp.sum(jnp.where(breaks <= lam, gain, lam * weight), axis=1)
    lo = _largest_level_below(level, c, jnp.max(jnp.where(weight > 0, breaks, 0.0), axis=1))
    sat = breaks <= lo[:, None]
    free = jnp.sum(jnp.where(sat, 0.0, weight), axis=1)
    lam = (c - jnp.sum(jnp.where(sat, gain, 0.0), axis=1)) / jnp.where(free > 0, free, 1.0)
    return jnp.maximum(lam, 0.0)[:, None], (c < jnp.sum(gain, axis=1))[:, None]


def projection_linf(t, w, b):
    """Minimal-Linf displacement from points onto a hyperplane inside the box [0, 1]^d.

    t [N, d] points in [0, 1]; w [N, d], b [N]: one hyperplane {z : w.z = b} per row.
    Returns d [N, d] with t + d in [0, 1]^d, w.(t + d) = b and |d|_inf minimal. Where the
    box does not reach the hyperplane, d moves every coordinate to the box face that goes
    furthest toward it (the reference's behaviour). Coordinates with w_i = 0 are not moved.
    With w oriented so that w.t >= b, coordinate i moves lam toward the face a_i that lowers
    w.z, saturating at its distance p_i: w.z falls by sum_i |w_i| min(lam, p_i), piecewise
    linear in lam with breakpoints p_i. The reference's `projection_linf` sorts the p_i and
    binary-searches the segment holding lam*; here a bisection on lam finds it without a
    sort (XLA:CPU's sort was most of FAB's time) and lam* is solved on that segment: the
    same displacement up to float32 rounding (tests/test_reference_agreement.py).
    """
    c = jnp.sum(w * t, axis=1) - b
    sign = jnp.where(c >= 0, 1.0, -1.0)
    w = w * sign[:, None]                      # now w.t >= b: w.z must decrease to b
    c = c * sign                               # by c >= 0
    nonzero = (w != 0).astype(t.dtype)
    a = (w < 0).astype(t.dtype)                # the face each coordinate moves to
    d = (a - t) * nonzero                      # the largest move within the box
    p = a - t * (2 * a - 1)                    # its length |a - t|
    aw = jnp.abs(w)
    lam, feasible = _piecewise_solve(aw * p, aw, p, c)
    moved = jnp.where(p <= lam, d, (2 * a - 1) * lam)
    return jnp.where(feasible, moved, d) * nonzero


def projection_l2(t, w, b):
    """Minimal-L2 displacement from points onto a hyperplane inside the box [0, 1]^d.

    t [N, d] points in [0, 1]; w [N, d], b [N]: one hyperplane {z : w.z = b} per row.
    Returns d [N, d] with t + d in [0, 1]^d, w.(t + d) = b and |d|_2 minimal, i.e.
    d_i = clip(-lambda w_i, -t_i, 1 - t_i) for the right lambda >= 0 (after orienting w so
    that w.t >= b). Where the box does not reach the hyperplane, d moves every coordinate to
    its face toward it (the reference's behaviour). Coordinates with |w_i| < 1e-8 are not
    moved. Coordinate i saturates at r_i = the lambda where it reaches its face; the
    reference's `projection_l2` sorts the r_i and binary-searches the segment holding
    lambda*; here a bisection on lambda finds it without a sort and lambda* is solved on
    that segment (the same displacement up to float32 rounding).
    """
    c = jnp.sum(w * t, axis=1) - b
    sign = jnp.where(c >= 0, 1.0, -1.0)
    w = w * sign[:, None]
    c = c * sign                               # >= 0: w.d must be -c

    small = jnp.abs(w) < 1e-8
    r = jnp.clip(jnp.maximum(t / w, (t - 1) / w), -1e12, 1e12)
    r = jnp.where(small | (r == -1e12), 1e12, r)
    d = -(r * w) * (~small).astype(t.dtype)    # every coordinate at its face
    gain = -w * d                              # how much each face lowers w.z (>= 0)
    lam, feasible = _piecewise_solve(gain, w * w, r, c)
    moved = jnp.where(r <= lam, d, -lam * w)
    return jnp.where(feasible, moved, d) * (~small).astype(t.dtype)


PROJECTIONS = {"Linf": projection_linf, "L2": projection_l2}


def _fab_run(logits_fn, x, y, target, x_start, norm, steps, alpha_max, eta, beta):
    """One FAB-T run from x_start toward `target` [B]; returns (adv, dist): per sample the
    closest misclassified point found and its distance to x (x and 1e10 if none)."""
    b = x.shape[0]
    bshape = (b,) + (1,) * (x.ndim - 1)
    x0 = x.reshape(b, -1)
    project = PROJECTIONS[norm.name]

    def diff(xa):
        z = logits_fn(xa)
        df = _take(z, target) - _take(z, y)    # z_t - z_y, per sample
        return df.sum(), df
    diff_and_grad = jax.value_and_grad(diff, has_aux=True)

    def body(_, state):
        x1, adv, res = state
        (_, df), dg = diff_and_grad(x1)
        w = dg.reshape(b, -1)
        x1f = x1.reshape(b, -1)
        off = -df + jnp.sum(w * x1f, axis=1)   # the linearization is zero on w.z = off
        d3 = project(jnp.concatenate([x1f, x0]), jnp.concatenate([w, w]),
                     jnp.concatenate([off, off]))
        a0 = jnp.maximum(norm.size(d3), 1e-8)
        a1, a2 = a0[:b], a0[b:]
        alpha = jnp.minimum(jnp.maximum(a1 / (a1 + a2), 0.0), alpha_max).reshape(bshape)
        d1, d2 = d3[:b].reshape(x.shape), d3[b:].reshape(x.shape)
        x1 = jnp.clip((x1 + eta * d1) * (1 - alpha) + (x + d2 * eta) * alpha, 0.0, 1.0)
        is_adv = jnp.argmax(logits_fn(x1), axis=1) != y
        dist = norm.size(x1 - x)
        closer = is_adv & (dist < res)
        adv = jnp.where(closer.reshape(bshape), x1, adv)
        res = jnp.where(closer, dist, res)
        x1 = jnp.where(is_adv.reshape(bshape), x + (x1 - x) * beta, x1)
        return x1, adv, res

    init = (x_start, x, jnp.full((b,), 1e10, x.dtype))
    _, adv, res = jax.lax.fori_loop(0, steps, body, init)
    return adv, res


def random_start(key, x, eps, norm):
    """The reference's restart point: clip(x + eps / 2 * t / |t|, 0, 1), t ~ U[-1, 1]^d
    (Linf) or N(0, I) (L2), |t| per sample: APGD's start at half the radius."""
    return norm.sphere_start(key, x, 0.5 * eps)


def fab_targeted(logits_fn, x, y, key, *, eps: float, norm: str = "Linf", steps: int = 100,
                 n_target_classes: int = 9, targets=None, restarts: int = 1,
                 alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
                 buckets: str | None = "fine"):
    """FAB-T: per sample the smallest perturbation found (Linf or L2, in [0, 1] pixel units)
    that makes the model misclassify, searched toward each of the 2nd .. (n+1)-th most likely
    classes at the clean point in turn (or only toward `targets` [B] when given).

    Returns x_adv [B, H, W, C] in [0, 1]: the first stage's minimal-norm misclassified point
    when its distance to x is <= eps, else x (also for points misclassified at x).
    restarts > 1 adds runs from random starts (eps / 2 from x). alpha_max in [0, 1]: the
    largest weight of the step from x; eta > 0: the step's length relative to the projection
    (1.05 overshoots the linearized boundary by 5 %); beta in (0, 1]: a misclassified point
    is pulled back to x + beta (x_adv - x). Classes are ranked with `ranked_targets`.

    Called outside jit, the target classes run one at a time on the points still robust
    (as the reference), gathered into batches of a few sizes (`buckets`, see
    `common.bucket_size`); buckets=None, or a call inside jit, runs every point for every
    target in one compiled loop (same result, more work).
    """
    norm = get_norm(norm)
    check_budget(eps, steps=steps)
    check_images(x, y)
    for name, v in (("restarts", restarts), ("n_target_classes", n_target_classes)):
        if not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v}")
    if not (0 <= alpha_max <= 1 and eta > 0 and 0 < beta <= 1):
        raise ValueError(f"need 0 <= alpha_max <= 1, eta > 0 and 0 < beta <= 1, got "
                         f"{alpha_max}, {eta}, {beta}")
    if targets is not None and targets.shape != y.shape:
        raise ValueError(f"targets must have shape {y.shape}, got {targets.shape}")
    if buckets is not None:
        check_buckets(buckets)
    f, eps = logits_fn, jnp.float32(eps)
    run = lambda x, y, k, t, n: _fab_t(f, x, y, k, eps, norm.name, steps, n, t, int(restarts),
                                       jnp.float32(alpha_max), jnp.float32(eta),
                                       jnp.float32(beta))
    if targets is not None or buckets is None or not on_host(x, y, key, eps):
        return run(x, y, key, targets, int(n_target_classes))[0]
    def stage(xr, yr, tr, k):
        adv, fooled = run(xr, yr, k, tr, 1)
        return adv, jnp.zeros(fooled.shape), fooled
    logits = jit_logits(f, x)
    return per_target_stages(stage, x, y, logits, ranked_targets(logits, n_target_classes),
                             key, buckets)


@partial(jax.jit, static_argnames=("logits_fn", "norm_name", "steps", "n_target_classes",
                                   "restarts"))
def _fab_t(logits_fn, x, y, key, eps, norm_name, steps, n_target_classes, targets, restarts,
           alpha_max, eta, beta):
    norm = get_norm(norm_name)
    bshape = (x.shape[0],) + (1,) * (x.ndim - 1)
    logits = logits_fn(x)
    correct = jnp.argmax(logits, axis=1) == y
    target_list = (ranked_targets(logits, n_target_classes) if targets is None
                   else targets[None])

    def run(carry, target, r, k):
        x_out, done = carry
        x_start = jnp.where(r > 0, random_start(k, x, eps, norm), x)
        adv, res = _fab_run(logits_fn, x, y, target, x_start, norm, steps, alpha_max, eta,
                            beta)
        fooled = correct & (res <= eps) & (jnp.argmax(logits_fn(adv), axis=1) != y)
        return jnp.where((fooled & ~done).reshape(bshape), adv, x_out), done | fooled

    def stage(carry, trk):                     # skipped once no point is left to attack
        left = jnp.any(correct & ~carry[1])
        return jax.lax.cond(left, run, lambda c, *_: c, carry, *trk), None

    n_targets = target_list.shape[0]           # stages: (target, restart), restarts inner
    stages = (jnp.repeat(target_list, restarts, axis=0),
              jnp.tile(jnp.arange(restarts), n_targets),
              jax.random.split(key, n_targets * restarts))
    (x_out, done), _ = jax.lax.scan(stage, (x, jnp.zeros_like(correct)), stages)
    return x_out, done
