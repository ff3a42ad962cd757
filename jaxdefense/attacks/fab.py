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
bench/fab_vs_reference.py). Differences are only in how it runs: a stage (one target class)
is one `lax.fori_loop` over a batch with all state per sample, selected by `jnp.where`
(points fooled within the stage are computed on and their results discarded, so the output
is the same). Between target classes, as the reference, only the still-robust points go on:
outside jit they are gathered on the host into a bucketed batch (`common.per_target_stages`;
the reference indexes boolean-mask subsets); inside jit (or buckets=None) the (target,
restart) stages are one `lax.scan` over the whole batch and a stage is skipped
(`lax.cond`) once no point is left. The projections compute the reference's row cases and
its ceil(log2 d)-step binary search for all rows and select per row.
Random starts (restarts > 1 only) use jax.random, not torch's generator; classes with tied
logits may be ranked in another order (stable argsort). Cost per stage: `steps` gradient
evaluations plus `steps + 1` forward passes, and per step one projection of 2B rows (x_k
and x; a sort of d values per row).
"""
from __future__ import annotations

import math
import numbers
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxdefense.attacks.apgd import ranked_targets
from jaxdefense.attacks.common import (check_budget, check_buckets, check_images, is_traced,
                                       jit_logits, per_target_stages)
from jaxdefense.attacks.norms import get_norm
from jaxdefense.models.fast import fast


def _take(a, idx):
    """a[i, idx[i]] for a [N, d] and idx [N] (ints) -> [N]."""
    return jnp.take_along_axis(a, idx[:, None], axis=1)[:, 0]


def _binary_search(value, n_rows: int, n_dim: int):
    """The reference's bisection, for all rows: lb, ub = 0, n_dim - 1, then ceil(log2 n_dim)
    times mid = (lb + ub) // 2 and lb = mid where value(mid) > 0, else ub = mid; returns lb
    [n_rows]. A `fori_loop`: unrolled, XLA's compile time grows steeply with the steps."""
    def body(_, lu):
        lb, ub = lu
        mid = (lb + ub) // 2
        up = value(mid) > 0
        return jnp.where(up, mid, lb), jnp.where(up, ub, mid)
    init = (jnp.zeros(n_rows, jnp.int32), jnp.full(n_rows, n_dim - 1, jnp.int32))
    return jax.lax.fori_loop(0, math.ceil(math.log2(n_dim)), body, init)[0]


def projection_linf(t, w, b):
    """Minimal-Linf displacement from points onto a hyperplane inside the box [0, 1]^d.

    t [N, d] points in [0, 1]; w [N, d], b [N]: one hyperplane {z : w.z = b} per row.
    Returns d [N, d] with t + d in [0, 1]^d, w.(t + d) = b and |d|_inf minimal. Where the
    box does not reach the hyperplane, d moves every coordinate to the box face that goes
    furthest toward it (the reference's behaviour). Coordinates with w_i = 0 are not moved.
    The reference's `projection_linf`: the sorted breakpoints p_i (distance of t_i to the
    face it moves to), a binary search of ceil(log2 d) steps over them for every row, and
    its three row cases (no coordinate saturates / some do / infeasible) picked per row.
    """
    n_dim = w.shape[1]
    wt = jnp.sum(w * t, axis=1)
    sign = jnp.where(wt - b >= 0, 1.0, -1.0)
    w = w * sign[:, None]                      # now w.t >= b: w.z must decrease to b
    b = b * sign
    nonzero = (w != 0).astype(t.dtype)
    a = (w < 0).astype(t.dtype)                # the face each coordinate moves to
    d = (a - t) * nonzero                      # the largest move within the box
    p = a - t * (2 * a - 1)                    # its length |a - t|

    indp = jnp.argsort(p, axis=1)
    b = b - jnp.sum(w * t, axis=1)             # the change of w.z needed (<= 0)
    b0 = jnp.sum(w * d, axis=1)                # the largest change the box allows (<= 0)

    indp2 = indp[:, ::-1]                      # decreasing p
    ws = jnp.take_along_axis(w, indp2, axis=1)
    bs2 = -ws * jnp.take_along_axis(d, indp2, axis=1)
    s = jnp.cumsum(jnp.abs(ws), axis=1)
    sb = jnp.cumsum(bs2, axis=1) + b0[:, None]

    b2 = sb[:, -1] - s[:, -1] * _take(p, indp[:, 0])
    c_l = b - b2 > 0                           # reached before any coordinate saturates
    c2 = (b - b0 > 0) & ~c_l                   # reached with some coordinates saturated

    def bisect(mid):                           # w.d - b at lambda = the mid-th largest p
        return b - (_take(sb, mid) - _take(s, mid) * _take(p, _take(indp, n_dim - 1 - mid)))
    lb = _binary_search(bisect, t.shape[0], n_dim)

    lmbd_l = jnp.maximum((b - sb[:, -1]) / (-s[:, -1]), 0.0)[:, None]
    d_l = (2 * a - 1) * lmbd_l
    lmbd_2 = jnp.maximum((b - _take(sb, lb)) / (-_take(s, lb)), 0.0)[:, None]
    d_2 = jnp.minimum(lmbd_2, d) * a + jnp.maximum(-lmbd_2, d) * (1 - a)
    d = jnp.where(c_l[:, None], d_l, jnp.where(c2[:, None], d_2, d))
    return d * nonzero


def projection_l2(t, w, b):
    """Minimal-L2 displacement from points onto a hyperplane inside the box [0, 1]^d.

    t [N, d] points in [0, 1]; w [N, d], b [N]: one hyperplane {z : w.z = b} per row.
    Returns d [N, d] with t + d in [0, 1]^d, w.(t + d) = b and |d|_2 minimal, i.e.
    d_i = clip(-lambda w_i, -t_i, 1 - t_i) for the right lambda >= 0 (after orienting w so
    that w.t >= b). Where the box does not reach the hyperplane, d moves every coordinate to
    its face toward it (the reference's behaviour). Coordinates with |w_i| <= 1e-8 are not
    moved. The reference's `projection_l2`: the sorted breakpoints r_i = lambda at which
    coordinate i hits the box, a binary search of ceil(log2 d) steps for every row, and its
    three row cases (box inactive / some coordinates clipped / infeasible) picked per row.
    """
    n_dim = w.shape[1]
    c = jnp.sum(w * t, axis=1) - b
    sign = jnp.where(c >= 0, 1.0, -1.0)
    w = w * sign[:, None]
    c = c * sign                               # >= 0: w.d must be -c

    small = jnp.abs(w) < 1e-8
    r = jnp.clip(jnp.maximum(t / w, (t - 1) / w), -1e12, 1e12)
    r = jnp.where(small, 1e12, r)
    r = jnp.where(r == -1e12, 1e12, r)
    indr = jnp.argsort(r, axis=1)
    rs = jnp.take_along_axis(r, indr, axis=1)
    rs2 = jnp.pad(rs[:, 1:], ((0, 0), (0, 1)))
    rs = jnp.where(rs == 1e12, 0.0, rs)
    rs2 = jnp.where(rs2 == 1e12, 0.0, rs2)

    w3s = jnp.take_along_axis(w ** 2, indr, axis=1)
    w5 = jnp.sum(w3s, axis=1, keepdims=True)
    ws = w5 - jnp.cumsum(w3s, axis=1)          # sum of w_i^2 over unclipped coordinates
    d = -(r * w) * (~small).astype(t.dtype)    # every coordinate at its face
    s = jnp.concatenate([-w5 * rs[:, 0:1],
                         jnp.cumsum((-rs2 + rs) * ws, axis=1) - w5 * rs[:, 0:1]], axis=1)

    c4 = s[:, 0] + c < 0                       # box inactive: plain projection
    c3 = jnp.sum(d * w, axis=1) + c > 0        # infeasible: stay at the faces
    c2 = ~(c4 | c3)

    lb = _binary_search(lambda mid: _take(s, mid) + c, t.shape[0], n_dim)

    d4 = -(c / w5[:, 0])[:, None] * w
    ws_lb = _take(ws, lb)
    alpha = (_take(s, lb) + c) / ws_lb + _take(rs, lb)
    alpha = jnp.where(ws_lb == 0, 0.0, alpha)[:, None]
    c5 = (alpha > r).astype(t.dtype)
    d2 = d * c5 - alpha * w * (1 - c5)
    d = jnp.where(c4[:, None], d4, jnp.where(c2[:, None], d2, d))
    return d * (~small).astype(t.dtype)


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
    f, eps = fast(logits_fn), jnp.float32(eps)
    run = lambda x, y, k, t, n: _fab_t(f, x, y, k, eps, norm.name, steps, n, t, int(restarts),
                                       jnp.float32(alpha_max), jnp.float32(eta),
                                       jnp.float32(beta))
    if targets is not None or buckets is None or is_traced(x, y, key, eps):
        return run(x, y, key, targets, int(n_target_classes))[0]
    logits = jit_logits(f, x)
    target_list = ranked_targets(logits, n_target_classes)
    keys = jax.random.split(key, target_list.shape[0])

    def stage(t, rows):
        adv, fooled = run(x[rows], y[rows], keys[t], target_list[t][rows], 1)
        return adv, jnp.zeros(fooled.shape), fooled
    return per_target_stages(stage, x, np.asarray(jnp.argmax(logits, 1) == y),
                             target_list.shape[0], buckets)


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
