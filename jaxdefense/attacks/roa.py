"""The rectangular occlusion attack (ROA; Wu, Tong and Vorobeychik, ICLR 2020), as their code
`tongwu2020/phattacks` runs it (`ROA.py`: gradient-based search, then PGD inside).

A physically realizable attack: one `height` x `width` rectangle per image whose pixels the
attacker sets freely in [0, 1]; the rest of the image is untouched (no eps).
  1. Position: the input gradient of the cross-entropy at x ranks every window of the image
     (stride `stride`) by the sum of its squared entries over the window and the channels;
     each of the `candidates` best windows is filled with grey 0.5 and the one with the
     highest cross-entropy is kept.
  2. Content: from grey 0.5 (or uniform noise, `random_start`), `steps` signed-gradient
     ascent steps of `step_size` on the cross-entropy inside the window, clipped to [0, 1].
With `restarts` > 1 each restart draws a uniform start inside the window and, per example,
the first point that fools the model is kept (else the highest-loss one), as the reference
evaluates (10 restarts, 150 steps of 0.01, 50 candidates). A single run returns its last
iterate, as the reference's training attack (30 steps of 0.05, 20 candidates).
Difference from the reference code: every window position is considered (its loop stops
one position short of the right and bottom edges).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jaxdefense.attacks.common import check_images, init_best, keep_best
from jaxdefense.attacks.losses import cross_entropy


def roa(logits_fn, x, y, key, *, width: int = 7, height: int = 7, stride: int = 1,
        candidates: int = 20, steps: int = 30, step_size: float = 0.05, restarts: int = 1,
        random_start: bool = False):
    """ROA with the reference's training settings (7 x 7, stride 1, 20 candidates, 30 steps
    of 0.05); returns x_adv [B, H, W, C] in [0, 1], equal to x outside one rectangle."""
    check_images(x, y)
    h, w = x.shape[1:3]
    if not (1 <= height <= h and 1 <= width <= w and stride >= 1):
        raise ValueError(f"the {height} x {width} rectangle (stride {stride}) must fit the "
                         f"{h} x {w} image")
    n_windows = ((h - height) // stride + 1) * ((w - width) // stride + 1)
    if not (1 <= candidates <= n_windows) or steps < 0 or restarts < 1 or step_size < 0:
        raise ValueError(f"candidates must be in 1..{n_windows}, steps and step_size >= 0, "
                         f"restarts >= 1; got {candidates}, {steps}, {step_size}, {restarts}")
    return _roa(logits_fn, x, y, key, width, height, stride,
                candidates, steps, jnp.float32(step_size), restarts, random_start)


def window_mask(rows, cols, shape, height: int, width: int):
    """[B, H, W, 1] float: 1 inside each sample's rectangle with top-left (rows, cols)."""
    r = jnp.arange(shape[1])[None, :, None]
    c = jnp.arange(shape[2])[None, None, :]
    inside = ((r >= rows[:, None, None]) & (r < rows[:, None, None] + height) &
              (c >= cols[:, None, None]) & (c < cols[:, None, None] + width))
    return inside[..., None].astype(jnp.float32)


def best_windows(logits_fn, x, y, width: int, height: int, stride: int, candidates: int):
    """(rows, cols) [B]: the top-left corner of each sample's occlusion window (step 1)."""
    def total(xa):
        return jnp.sum(cross_entropy(logits_fn(xa), y))
    g2 = jnp.sum(jax.grad(total)(x) ** 2, axis=-1, keepdims=True)        # [B, H, W, 1]
    scores = jax.lax.reduce_window(g2, 0.0, jax.lax.add, (1, height, width, 1),
                                   (1, stride, stride, 1), "VALID")[..., 0]  # [B, nh, nw]
    nw = scores.shape[2]
    _, top = jax.lax.top_k(scores.reshape(len(x), -1), candidates)       # [B, C]
    rows, cols = (top // nw) * stride, (top % nw) * stride

    def loss_at(r, c):
        m = window_mask(r, c, x.shape, height, width)
        return cross_entropy(logits_fn(x * (1 - m) + 0.5 * m), y)
    losses = jax.lax.map(lambda rc: loss_at(*rc), (rows.T, cols.T))      # [C, B]
    pick = jnp.argmax(losses, axis=0)
    take = lambda a: jnp.take_along_axis(a, pick[:, None], axis=1)[:, 0]  # noqa: E731
    return take(rows), take(cols)


@partial(jax.jit, static_argnames=("logits_fn", "width", "height", "stride", "candidates",
                                   "steps", "restarts", "random_start"))
def _roa(logits_fn, x, y, key, width, height, stride, candidates, steps, step_size, restarts,
         random_start):
    rows, cols = best_windows(logits_fn, x, y, width, height, stride, candidates)
    m = window_mask(rows, cols, x.shape, height, width)

    def total(xa):
        losses = cross_entropy(logits_fn(xa), y)
        return jnp.sum(losses), losses

    def run(k, uniform: bool):
        start = jax.random.uniform(k, x.shape) if uniform else jnp.full_like(x, 0.5)
        xa = x * (1 - m) + start * m

        def body(_, xa):
            g, _ = jax.grad(total, has_aux=True)(xa)
            return jnp.clip(xa + step_size * jnp.sign(g) * m, 0.0, 1.0)
        return jax.lax.fori_loop(0, steps, body, xa)

    if restarts == 1:
        return run(key, random_start)

    def one(best, k):
        xa = run(k, True)
        logits = logits_fn(xa)
        return keep_best(xa, cross_entropy(logits, y), jnp.argmax(logits, 1) != y, best), None
    (best_x, _, _), _ = jax.lax.scan(one, init_best(x), jax.random.split(key, restarts))
    return best_x
