"""The spatial transformation attack (stAdv, Xiao et al. 2018) as advertorch's
`SpatialTransformAttack` runs it (the library the ARN paper attacked with).

The variable is the sampling grid g [B, H, W, 2] (x then y, in [-1, 1] image coordinates,
pixel centres at (2 i + 1) / n - 1 as torch's `affine_grid` / `grid_sample` with
align_corners=False); the adversarial image is the input resampled at g, bilinearly, reading
0 outside the image (torch's zeros padding). With f the flow g_0 - g, the objective of the
whole batch is
    sum_b max(z_y - max_{i != y} z_i + confidence, 0)                  (untargeted; targeted:
          max(max_{i != t} z_i - z_t + confidence, 0))
  + tau * sum_b ( |f[:, :, 1:] - f[:, :, :-1] + 1e-10|_2 + |f[:, 1:] - f[:, :-1] + 1e-10|_2 ),
the flow term being, per image, the L2 norm of the horizontal differences plus that of the
vertical ones (advertorch's form; Xiao et al.'s paper sums per-pixel neighbour norms).
It is minimized by L-BFGS (memory 10) with the grid kept in [-1, 1]; `search_steps` runs of
`max_iterations` iterations each, each starting where the last stopped; after each run a
sample keeps the grid with the smallest squared flow among those that fool the model
(targeted: reach the target).

Differences from advertorch: the optimizer is optax's L-BFGS with a zoom line search (at most
100 steps) in one compiled loop, the bounds enforced by clipping the grid after each step,
where the reference calls scipy's L-BFGS-B (bounds inside the method) in float64; it stops
when the projected gradient's largest entry falls below `pgtol` or the objective's relative
decrease below `ftol` (scipy's pgtol 1e-5 and factr 1e7 * machine epsilon). A sample never
fooled comes back as x (`failed='input'`); advertorch returns an all-zero image there,
which `failed='zeros'` reproduces (a black image the target misclassifies then counts as an
error for the attack).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import optax

from jaxdefense.attacks.common import check_images
from jaxdefense.attacks.cw import cw_margin

FAILED = ("input", "zeros")


def identity_grid(h: int, w: int):
    """[H, W, 2]: the (x, y) centre of every pixel in [-1, 1] coordinates."""
    xs = (2 * jnp.arange(w) + 1) / w - 1
    ys = (2 * jnp.arange(h) + 1) / h - 1
    gx, gy = jnp.meshgrid(xs, ys)
    return jnp.stack([gx, gy], axis=-1).astype(jnp.float32)


def warp(x, grid):
    """x [B, H, W, C] sampled at grid [B, H, W, 2] ((x, y) in [-1, 1]): bilinear, zeros
    outside the image (torch's grid_sample, align_corners=False)."""
    h, w = x.shape[1:3]
    col = ((grid[..., 0] + 1) * w - 1) / 2
    row = ((grid[..., 1] + 1) * h - 1) / 2

    def one(img, r, c):
        return jax.vmap(lambda ch: jax.scipy.ndimage.map_coordinates(
            ch, [r, c], order=1, mode="constant", cval=0.0), in_axes=2, out_axes=2)(img)
    return jax.vmap(one)(x, row, col)


def flow_loss(flow):
    """Per image [B]: |horizontal differences|_2 + |vertical differences|_2 of flow
    [B, H, W, 2], each difference shifted by 1e-10 (advertorch's smoothness term)."""
    dw = flow[:, :, 1:] - flow[:, :, :-1] + 1e-10
    dh = flow[:, 1:] - flow[:, :-1] + 1e-10
    return (jnp.sqrt(jnp.sum(dw ** 2, axis=(1, 2, 3)))
            + jnp.sqrt(jnp.sum(dh ** 2, axis=(1, 2, 3))))


def stadv(logits_fn, x, y, key=None, *, target=None, confidence: float = 0.0,
          tau: float = 1.0, max_iterations: int = 1000, search_steps: int = 1,
          pgtol: float = 1e-5, ftol: float = 1e7 * 2.220446049250313e-16,
          failed: str = "input"):
    """stAdv with advertorch's defaults (tau = initial_const 1, 1000 iterations, one search
    step); returns x_adv [B, H, W, C] in [0, 1]. target: [B] classes (None: untargeted).
    key is unused (deterministic)."""
    check_images(x, y)
    if max_iterations < 1 or search_steps < 1:
        raise ValueError(f"max_iterations and search_steps must be >= 1, got "
                         f"{max_iterations}, {search_steps}")
    if not (tau >= 0 and confidence >= 0):
        raise ValueError(f"tau and confidence must be >= 0, got {tau}, {confidence}")
    if failed not in FAILED:
        raise ValueError(f"failed must be one of {FAILED}, got {failed!r}")
    if target is not None and target.shape != y.shape:
        raise ValueError(f"target must have shape {y.shape}, got {target.shape}")
    label = y if target is None else target
    return _stadv(logits_fn, x, label, target is not None,
                  jnp.float32(confidence), jnp.float32(tau), max_iterations, search_steps,
                  jnp.float32(pgtol), jnp.float32(ftol), failed)


@partial(jax.jit, static_argnames=("logits_fn", "targeted", "max_iterations", "search_steps",
                                   "failed"))
def _stadv(logits_fn, x, label, targeted, confidence, tau, max_iterations, search_steps,
           pgtol, ftol, failed):
    b, h, w = x.shape[:3]
    g0 = jnp.broadcast_to(identity_grid(h, w), (b, h, w, 2))

    def objective(grid):
        logits = logits_fn(warp(x, grid))
        return (jnp.sum(cw_margin(logits, label, confidence, targeted))
                + tau * jnp.sum(flow_loss(g0 - grid)))

    value_and_grad = jax.value_and_grad(objective)
    opt = optax.lbfgs(memory_size=10,
                      linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=100))

    def run(grid):
        def cond(s):
            i, done = s[0], s[1]
            return (i < max_iterations) & ~done

        def body(s):
            i, _, grid, state, value, grad = s
            updates, state = opt.update(grad, state, grid, value=value, grad=grad,
                                        value_fn=objective)
            new = jnp.clip(optax.apply_updates(grid, updates), -1.0, 1.0)
            new_value, new_grad = value_and_grad(new)
            projected = jnp.clip(new - new_grad, -1.0, 1.0) - new
            small_step = (value - new_value) <= ftol * jnp.maximum(
                jnp.maximum(jnp.abs(value), jnp.abs(new_value)), 1.0)
            done = (jnp.max(jnp.abs(projected)) <= pgtol) | small_step
            return i + 1, done, new, state, new_value, new_grad

        value, grad = value_and_grad(grid)
        s = (0, jnp.bool_(False), grid, opt.init(grid), value, grad)
        return jax.lax.while_loop(cond, body, s)[2]

    def one_search(carry, _):
        grid, best_dist, best_adv = carry
        grid = run(grid)
        adv = warp(x, grid)
        pred = jnp.argmax(logits_fn(adv), 1)
        ok = pred == label if targeted else pred != label
        dist = jnp.sum((grid - g0) ** 2, axis=(1, 2, 3))
        better = ok & (dist < best_dist)
        best_adv = jnp.where(better[:, None, None, None], adv, best_adv)
        return (grid, jnp.where(better, dist, best_dist), best_adv), None

    start = x if failed == "input" else jnp.zeros_like(x)
    init = (g0, jnp.full((b,), jnp.inf), start)
    (_, _, best_adv), _ = jax.lax.scan(one_search, init, None, length=search_steps)
    return jnp.clip(best_adv, 0.0, 1.0)
