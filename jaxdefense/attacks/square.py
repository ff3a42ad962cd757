"""Square attack (Andriushchenko et al. 2020), Linf and L2: score-based, no gradients.

Catches gradient masking: a defense that only breaks gradients falls to it. As the reference
(`autoattack/square.py`): margin loss, one square window per query whose side follows the p
schedule (p_init 0.8, halved at fixed fractions of n_queries, or with rescale_schedule=False
at queries 10, 50, 200, ...), a candidate accepted when the margin decreases, only for points
still classified correctly.

- Linf: vertical-stripe start (+-eps per column and channel); the window is set to +-2 eps
  per channel, then projected back into the eps-ball and [0, 1].
- L2: start from a grid of h // 5 wide tiles of the pattern `eta` (unit L2 norm, opposite
  signs in its two halves) with random signs per channel, scaled to norm eps. Each query
  moves the mass of a second window into the first window, adds `eta` there with random
  signs per channel, and rescales the whole perturbation to norm eps (then clips to [0, 1]).

Differences from the reference: windows, signs and `eta`'s random transposition are drawn
per sample, keyed by the sample's index in x (the reference draws one per batch), so dropping
fooled points does not change the result. As the reference, n_queries queries follow the
start, the i-th using the schedule at i - 1. Where the
reference's L2 start tiles would run over the image border (e.g. h = 12: 6 tiles of 2 from
row 1) the reference raises; here they are cut at the border. One forward pass per query,
in `lax.fori_loop` segments between which fooled points are dropped.
"""
from __future__ import annotations

import functools
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxdefense.attacks.common import (check_budget, check_buckets, check_images,
                                       on_host, on_robust_bucket, project_linf)
from jaxdefense.attacks.losses import margin
from jaxdefense.attacks.norms import get_norm

_BOUNDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_L2 = get_norm("L2")


def schedule_level(i, n_queries: int, rescale: bool = True):
    """How many times p has been halved at query i (0 .. 9). With rescale (the reference's
    resc_schedule) i is first mapped to floor(i / n_queries * 10000), else used as is."""
    it = jnp.floor(i / n_queries * 10000) if rescale else jnp.asarray(i)
    return jnp.sum(it[..., None] > jnp.array(_BOUNDS), axis=-1)


def p_schedule(i, n_queries: int, p_init: float, rescale: bool = True):
    """Fraction of pixels changed at query i (the reference's piecewise halving)."""
    return p_init / 2.0 ** schedule_level(i, n_queries, rescale)


def square(logits_fn, x, y, key, *, eps: float = 8 / 255, n_queries: int = 5000,
           p_init: float = 0.8, prune_every: int | None = 100, norm: str = "Linf",
           rescale_schedule: bool = True, buckets: str = "fine"):
    """Square attack; x_adv [B, H, W, C] in [0, 1] within eps of x in the `norm` ('Linf' or
    'L2') ball (RobustBench's budgets: Linf 8/255, L2 0.5). n_queries queries after the
    start (n_queries + 1 forward passes, as the reference), query i using the p schedule at
    i - 1; p_init in (0, 1] is the fraction of pixels the first windows cover.

    rescale_schedule: the p schedule's breakpoints are fractions of n_queries (True, the
    reference's default) or fixed query numbers 10, 50, 200, ... (False, as AutoAttack's
    'standard' version runs Square). L2 needs images at least 5 pixels high.
    prune_every: every so many queries the points already misclassified are dropped and the
    rest gathered into a batch of one of a few sizes (`buckets`, see
    `common.bucket_size`; as torchattacks / auto-attack skip fooled points); None runs every
    point to the end (as does a call inside jit, or on a batch spread over several
    processes). Random draws are made per sample from its index in x, so the result does
    not depend on the pruning."""
    norm = get_norm(norm).name
    check_budget(eps, steps=n_queries)
    check_images(x, y)
    if not 0 < p_init <= 1:
        raise ValueError(f"p_init must be in (0, 1], got {p_init}")
    if prune_every is not None and prune_every < 1:
        raise ValueError(f"prune_every must be >= 1 or None, got {prune_every}")
    check_buckets(buckets)
    table = None
    if norm == "L2":
        if x.shape[1] < 5:
            raise ValueError(f"L2 Square needs images at least 5 pixels high (its start tiles "
                             f"are h // 5 wide), got shape {x.shape}")
        table = tuple(map(jnp.asarray, _l2_table(float(p_init), *x.shape[1:])))
    rescale = bool(rescale_schedule)
    eps, p_init = jnp.float32(eps), jnp.float32(p_init)
    ids = jnp.arange(len(x))
    x_best, loss_best = _square_init(logits_fn, x, y, key, eps, ids, norm)
    if prune_every is None or not on_host(x, y):
        return _square_queries(logits_fn, x, y, key, eps, ids, x_best, loss_best, 1,
                               n_queries + 1, n_queries, p_init, norm, rescale, table)[0]
    for start in range(1, n_queries + 1, prune_every):
        stop = min(start + prune_every, n_queries + 1)
        robust = np.asarray(loss_best > 0)
        if not robust.any():
            break
        active, (xb, lb) = on_robust_bucket(
            lambda sub: _square_queries(logits_fn, x[sub], y[sub], key, eps, ids[sub],
                                        x_best[sub], loss_best[sub], start, stop, n_queries,
                                        p_init, norm, rescale, table), robust, buckets)
        x_best = x_best.at[active].set(xb)
        loss_best = loss_best.at[active].set(lb)
    return x_best


# ---- the L2 patterns (numpy, built once per shape) ----

def eta_rectangles(a: int, b: int) -> np.ndarray:
    """[a, b]: concentric rectangles around the centre (a // 2, b // 2), the k-th (k = 0, 1,
    ..., half-sides k) adding 1 / (k + 1)^2, cut at the border; unit L2 norm."""
    d = np.zeros((a, b))
    for k in range(max(a, b) // 2 + 1):
        d[max(a // 2 - k, 0):a // 2 + k + 1,
          max(b // 2 - k, 0):b // 2 + k + 1] += 1.0 / (k + 1) ** 2
    return d / np.sqrt(np.sum(d * d)) if d.size else d


def eta(s: int) -> np.ndarray:
    """[s, s], unit L2 norm: rectangles (`eta_rectangles`) positive in the top s // 2 rows,
    negative in the other s - s // 2 (the reference's L2 window update, before its random
    transposition)."""
    d = np.concatenate([eta_rectangles(s // 2, s), -eta_rectangles(s - s // 2, s)])
    return d / np.sqrt(np.sum(d * d))


def l2_side(p: float, h: int, w: int, c: int) -> int:
    """The L2 window side for fraction p: round(sqrt(p * h * w)), at least 3, made odd, at
    most min(h, w) (so even only when that cap is even). Computed as the reference does."""
    s = max(int(round(math.sqrt(p * (c * h * w) / c))), 3)
    return min(s + 1 - s % 2, min(h, w))


@functools.lru_cache(maxsize=16)
def _l2_table(p_init: float, h: int, w: int, c: int):
    """Per schedule level k (0 .. 9): the window side (int32 [10]) and eta(side) and its
    transpose in the top-left corner of zeros (float32 [10, 2, H, W])."""
    sides = np.array([l2_side(p_init / 2 ** k, h, w, c) for k in range(len(_BOUNDS) + 1)],
                     np.int32)
    etas = np.zeros((len(sides), 2, h, w), np.float32)
    for k, s in enumerate(sides):
        etas[k, 0, :s, :s] = eta(s)
        etas[k, 1, :s, :s] = eta(s).T
    return sides, etas


@functools.lru_cache(maxsize=16)
def _l2_start_tiles(h: int, w: int):
    """The reference's L2 start grid: tiles of side s = h // 5 from (o, o), o = (h - 5 s) // 2,
    h // s down and w // s across, cut at the border. Returns the tile index of each pixel
    (-1: none) [H, W], eta(s) and its transpose tiled over the grid [H, W] (each), and the
    number of tiles."""
    s = h // 5
    o = (h - 5 * s) // 2
    tile = np.full((h, w), -1, np.int32)
    pat = np.zeros((2, h, w), np.float32)
    e = eta(s)
    n = 0
    for i in range(h // s):
        for j in range(w // s):
            r, q = o + i * s, o + j * s
            rr, qq = min(s, h - r), min(s, w - q)        # what lies inside the image
            if rr > 0 and qq > 0:
                tile[r:r + rr, q:q + qq] = n
                pat[0, r:r + rr, q:q + qq] = e[:rr, :qq]
                pat[1, r:r + rr, q:q + qq] = e.T[:rr, :qq]
            n += 1
    return tile, pat, n


# ---- the attack ----

def _per_sample(key, ids, fn):
    """fn(key_of_sample) for each sample, keyed by its index in the whole batch."""
    return jax.vmap(lambda i: fn(jax.random.fold_in(key, i)))(ids)


def _sign(key, shape):
    return jax.random.choice(key, jnp.array([-1.0, 1.0]), shape)


def _l2_start(x, eps, signs, flips):
    """The L2 start from its draws: signs [B, n_tiles, C] (+-1), flips [B, n_tiles] (bool:
    transpose eta in that tile)."""
    tile, pat, _ = _l2_start_tiles(x.shape[1], x.shape[2])
    t = np.maximum(tile, 0)
    e = jnp.where(flips[:, t], pat[1], pat[0])                          # [B, H, W]
    delta = e[..., None] * signs[jnp.arange(len(x))[:, None, None], t]  # [B, H, W, C]
    delta = jnp.where((tile >= 0)[None, :, :, None], delta, 0.0)
    return jnp.clip(x + eps * _L2.normalize(delta), 0.0, 1.0)


def _window(h, w, vh, vw, s):
    """[B, H, W, 1] mask of the s x s windows with top-left corners (vh, vw) [B]."""
    rows = jnp.arange(h)[None, :, None, None]
    cols = jnp.arange(w)[None, None, :, None]
    vh, vw = vh.reshape(-1, 1, 1, 1), vw.reshape(-1, 1, 1, 1)
    return (rows >= vh) & (rows < vh + s) & (cols >= vw) & (cols < vw + s)


def _sum(v, axes):
    """v summed over axes (kept as size 1) by halving: a fixed order of elementwise adds, so
    a sample's sum does not depend on the batch it is in (XLA may order a reduction
    differently for another batch size, and the pruned run would drift from the unpruned)."""
    keep = [a for a in range(v.ndim) if a not in axes]
    out = tuple(1 if a in axes else v.shape[a] for a in range(v.ndim))
    v = jnp.transpose(v, keep + list(axes)).reshape([v.shape[a] for a in keep] + [-1])
    n = v.shape[-1]
    v = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, (1 << (n - 1).bit_length()) - n)])
    while v.shape[-1] > 1:
        half = v.shape[-1] // 2
        v = v[..., :half] + v[..., half:]
    return v.reshape(out)


def _l2_candidate(x, x_best, eps, etas, s, vh, vw, vh2, vw2, sign, flip):
    """One L2 query's candidate from its draws. etas [2, H, W]: eta(s) and its transpose in
    the top-left corner; windows (vh, vw) and (vh2, vw2) [B]; sign [B, C]; flip [B] bool.

    Per channel: the perturbation in window 1 (normalized) plus eta(s) * sign, rescaled to
    carry the energy of both windows plus an equal share of what the budget has left; window
    2 is emptied; the whole perturbation is rescaled to norm eps and x + it clipped to
    [0, 1]."""
    _, h, w, c = x.shape
    per_channel = lambda d: jnp.sqrt(_sum(d * d, (1, 2)))                  # [B, 1, 1, C]
    size = lambda d: jnp.sqrt(_sum(d * d, (1, 2, 3)))                      # [B, 1, 1, 1]
    m1, m2 = _window(h, w, vh, vw, s), _window(h, w, vh2, vw2, s)
    delta = x_best - x
    # eta moved to (vh, vw): a roll of the top-left pattern (it is zero past side s)
    rows = (jnp.arange(h)[None, :, None] - vh[:, None, None]) % h
    cols = (jnp.arange(w)[None, None, :] - vw[:, None, None]) % w
    placed = etas[flip.astype(jnp.int32)[:, None, None], rows, cols][..., None]
    placed = placed * sign[:, None, None, :]                              # [B, H, W, C]
    old = jnp.where(m1, delta, 0.0)
    new = placed + old / (1e-12 + per_channel(old))
    left = jnp.maximum(eps ** 2 - size(delta) ** 2, 0.0)
    energy = jnp.sqrt(left / c + per_channel(jnp.where(m1 | m2, delta, 0.0)) ** 2)
    new = new / (1e-12 + per_channel(new)) * energy
    delta = jnp.where(m1, new, jnp.where(m2, 0.0, delta))
    return jnp.clip(x + eps * delta / (size(delta) + 1e-12), 0.0, 1.0)


@partial(jax.jit, static_argnames=("logits_fn", "norm"))
def _square_init(logits_fn, x, y, key, eps, ids, norm):
    """The start (Linf: vertical stripes; L2: tiles of eta) and its margin loss (to
    minimize; < 0 once fooled)."""
    w, c = x.shape[2], x.shape[3]
    k0 = jax.random.fold_in(key, 0)
    if norm == "Linf":
        stripes = _per_sample(k0, ids, lambda k: _sign(k, (1, w, c)))
        x_best = project_linf(x + eps * stripes, x, eps)
    else:
        n = _l2_start_tiles(x.shape[1], w)[2]

        def draw(k):
            ks, kt = jax.random.split(k)
            return _sign(ks, (n, c)), jax.random.bernoulli(kt, 0.5, (n,))
        x_best = _l2_start(x, eps, *_per_sample(k0, ids, draw))
    return x_best, -margin(logits_fn(x_best), y)


@partial(jax.jit, static_argnames=("logits_fn", "n_queries", "norm", "rescale"))
def _square_queries(logits_fn, x, y, key, eps, ids, x_best, loss_best, start, stop,
                    n_queries, p_init, norm, rescale, table):
    """Queries start .. stop - 1 (1-based; query i uses the schedule at i - 1, as the
    reference's iteration i - 1) of the attack on these points (one forward pass each).
    table: None (Linf), or (L2) `_l2_table`'s window sides and patterns per level."""
    b, h, w, c = x.shape
    bshape = (b, 1, 1, 1)
    score = lambda xa: -margin(logits_fn(xa), y)
    k_loop = jax.random.fold_in(key, 1)

    def linf(i, x_best):
        p = p_schedule(i - 1, n_queries, p_init, rescale)
        s = jnp.clip(jnp.round(jnp.sqrt(p * h * w)).astype(jnp.int32), 1, min(h, w))

        def draw(k):
            kh, kw, kv = jax.random.split(k, 3)
            return (jax.random.randint(kh, (1, 1, 1), 0, h - s),  # 0 when s == h
                    jax.random.randint(kw, (1, 1, 1), 0, w - s),
                    _sign(kv, (1, 1, c)))
        vh, vw, sign = _per_sample(jax.random.fold_in(k_loop, i), ids, draw)
        window = _window(h, w, vh, vw, s)
        return project_linf(jnp.where(window, x_best + 2.0 * eps * sign, x_best), x, eps)

    def l2(i, x_best):
        level = schedule_level(i - 1, n_queries, rescale)
        s = table[0][level]

        def draw(k):
            kv, ks, kt = jax.random.split(k, 3)      # corners (vh, vw, vh2, vw2), 0 if s == h
            v = jax.random.randint(kv, (4,), 0, jnp.stack([h - s, w - s, h - s, w - s]))
            return v, _sign(ks, (c,)), jax.random.bernoulli(kt)
        v, sign, flip = _per_sample(jax.random.fold_in(k_loop, i), ids, draw)
        return _l2_candidate(x, x_best, eps, table[1][level], s, *v.T, sign, flip)

    def body(i, state):
        x_best, loss_best = state
        x_new = (linf if norm == "Linf" else l2)(i, x_best)
        loss_new = score(x_new)
        accept = (loss_best > 0) & (loss_new < loss_best)
        return (jnp.where(accept.reshape(bshape), x_new, x_best),
                jnp.where(accept, loss_new, loss_best))

    return jax.lax.fori_loop(start, stop, body, (x_best, loss_best))
