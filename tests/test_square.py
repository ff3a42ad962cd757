"""Square attack: the L2 version against the reference (auto-attack's square.py), its
pattern and schedule, pruning, and the Linf window side."""
import importlib
import os
import pathlib
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdefense.attacks.losses import margin
from tests.conftest import square_segments

sq = importlib.import_module("jaxdefense.attacks.square")
MIRROR = pathlib.Path(os.environ.get("AUTOATTACK_REPO", "/work/.mirror/fra31+auto-attack/repo"))

W = jax.random.normal(jax.random.key(0), (8 * 8 * 3, 10))


def net(x):
    """A linear 10-class model on 8x8x3 images."""
    return (x.reshape(x.shape[0], -1) - 0.5) @ W


def _data(n=32, seed=1):
    x = jax.random.uniform(jax.random.key(seed), (n, 8, 8, 3))
    return x, jnp.argmax(net(x), 1)


def _margin(xa, y):
    """z_y - max_{i != y} z_i (> 0: still correct)."""
    return -np.asarray(margin(net(xa), y))


def _l2(d):
    return np.sqrt(np.sum(np.asarray(d, np.float64) ** 2, axis=(1, 2, 3)))


# ---- the pattern and the schedule, against transcriptions of the reference ----

def _ref_eta_rectangles(x, y):
    """The reference's L2 eta_rectangles, transcribed to numpy."""
    delta = np.zeros([x, y])
    x_c, y_c = x // 2 + 1, y // 2 + 1
    counter2 = [x_c - 1, y_c - 1]
    for counter in range(0, max(x_c, y_c)):
        delta[max(counter2[0], 0):min(counter2[0] + (2 * counter + 1), x),
              max(0, counter2[1]):min(counter2[1] + (2 * counter + 1), y)
              ] += 1.0 / (counter + 1) ** 2
        counter2[0] -= 1
        counter2[1] -= 1
    return delta / np.sqrt((delta ** 2).sum())


def _ref_eta(s):
    delta = np.zeros([s, s])
    delta[:s // 2] = _ref_eta_rectangles(s // 2, s)
    delta[s // 2:] = -1.0 * _ref_eta_rectangles(s - s // 2, s)
    return delta / np.sqrt((delta ** 2).sum())


def _ref_p_selection(it, n_queries, p_init, rescale):
    if rescale:
        it = int(it / n_queries * 10000)
    for k, b in enumerate((10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)):
        if it <= b:
            return p_init / 2 ** k
    return p_init / 512


@pytest.mark.parametrize("s", [1, 2, 3, 4, 5, 8, 9, 15, 28])
def test_eta_is_the_reference_pattern(s):
    e = sq.eta(s)
    assert e.shape == (s, s)
    np.testing.assert_allclose(e, _ref_eta(s), rtol=1e-12, atol=1e-15)
    assert np.sum(e ** 2) == pytest.approx(1.0)
    assert np.all(e[:s // 2] > 0) and np.all(e[s // 2:] < 0)      # top half +, bottom half -
    if s >= 3:                                                   # peaks at the halves' centres
        assert e[s // 4, s // 2] == e[:s // 2].max()
        assert e[s // 2 + (s - s // 2) // 2, s // 2] == e[s // 2:].min()


def test_l2_window_side_as_the_reference():
    """At least 3, odd, at most min(h, w) (then even if that is)."""
    assert [sq.l2_side(0.8 / 2 ** k, 32, 32, 3) for k in range(10)] == \
        [29, 21, 15, 11, 7, 5, 5, 3, 3, 3]
    assert sq.l2_side(0.8, 8, 8, 3) == 7 and sq.l2_side(1.0, 10, 8, 2) == 8
    sides, etas = sq._l2_table(0.8, 16, 12, 1)
    assert sides.shape == (10,) and etas.shape == (10, 2, 16, 12)
    for s, (e, et) in zip(sides, etas):
        np.testing.assert_allclose(e[:s, :s], sq.eta(s), rtol=1e-6)
        np.testing.assert_allclose(et[:s, :s], sq.eta(s).T, rtol=1e-6)
        assert not e[s:].any() and not e[:, s:].any()


@pytest.mark.parametrize("n_queries", [100, 1000, 5000])
@pytest.mark.parametrize("rescale", [True, False])
def test_p_schedule_as_the_reference(n_queries, rescale):
    its = [0, 1, 2, 10, 11, 20, 21, 50, 51, 99, 200, 201, 500, 501, 999, 1000, 1001, 4999,
           8000, 8001, 12000]
    ours = np.asarray(sq.p_schedule(jnp.array(its), n_queries, jnp.float32(0.8), rescale))
    ref = [_ref_p_selection(i, n_queries, 0.8, rescale) for i in its]
    np.testing.assert_allclose(ours, ref, rtol=1e-6)
    if not rescale:                           # raw query numbers: 10, 50, 200, ...
            assert list(ours[:5]) == pytest.approx([0.8, 0.8, 0.8, 0.8, 0.4])


# ---- the L2 attack ----

def _run(n_queries, prune_every=None, key=6, eps=1.0):
    """The L2 attack on _data(16) (without rescaling: a run's first queries do not depend
    on n_queries, so a shorter run is a prefix of a longer one)."""
    x, y = _data(16)
    return sq.square(net, x, y, jax.random.key(key), eps=eps, n_queries=n_queries, norm="L2",
                     prune_every=prune_every, rescale_schedule=False)


def test_l2_in_ball_and_box_deterministic_and_pruning_changes_nothing():
    """Inside the L2 ball and [0, 1]; the same key gives the same points; dropping fooled
    points every 20 queries gives exactly the unpruned result, on fewer points later."""
    x, y = _data(16)
    full = _run(60)
    np.testing.assert_array_equal(np.asarray(_run(60)), np.asarray(full))
    assert _l2(full - x).max() <= 1.0 * (1 + 1e-6)
    assert float(full.min()) >= 0.0 and float(full.max()) <= 1.0
    assert not np.array_equal(np.asarray(_run(60, key=7)), np.asarray(full))
    with square_segments() as sizes:
        pruned = _run(60, prune_every=20)
    np.testing.assert_array_equal(np.asarray(pruned), np.asarray(full))
    assert len(sizes) >= 2 and sizes[-1] < sizes[0], sizes
    assert float(jnp.mean(jnp.argmax(net(pruned), 1) == y)) < 0.5


def test_l2_margin_never_increases_with_more_queries():
    """Each point's loss (margin z_y - max_{i != y} z_i) never increases from one segment
    of queries to the next, nor from the start to the end; the robust accuracy falls."""
    x, y = _data(16)
    seen = []
    real = sq._square_queries

    def spy(f, xs, ys, key, eps, ids, xb, lb, *args):
        out = real(f, xs, ys, key, eps, ids, xb, lb, *args)
        seen.append((np.asarray(lb), np.asarray(out[1])))
        return out
    sq._square_queries = spy
    try:
        adv = _run(60, prune_every=20)
    finally:
        sq._square_queries = real
    assert len(seen) >= 2
    for before, after in seen:
        assert np.all(after <= before)
    start, end = _margin(_run(1, prune_every=20), y), _margin(adv, y)
    assert np.all(end <= start) and np.sum(end < start) > len(x) // 2
    assert np.mean(end > 0) < np.mean(start > 0)


def test_l2_fools_a_linear_model_where_the_boundary_is_near():
    """An image moved toward the nearest boundary of a linear model until it is 0.05 away
    (L2) is fooled with eps 0.5 (RobustBench's L2 budget; random search on a dense linear
    model needs several times the distance), and cannot be with eps below the distance."""
    x, y = _data(16)
    x0 = 0.5 + 0.2 * (x[:1] - 0.5)
    y0 = int(jnp.argmax(net(x0)[0]))
    dists = lambda xa: {k: float(net(xa)[0, y0] - net(xa)[0, k])
                        / float(jnp.linalg.norm(W[:, y0] - W[:, k])) for k in range(10) if k != y0}
    j = min(dists(x0), key=dists(x0).get)
    d = (W[:, j] - W[:, y0]).reshape(x0.shape) / jnp.linalg.norm(W[:, j] - W[:, y0])
    x0 = x0 + (dists(x0)[j] - 0.05) * d
    near = min(dists(x0).values())
    assert 0.01 < near <= 0.05 + 1e-4 and 0 < float(x0.min()) and float(x0.max()) < 1
    x, y = x.at[0].set(x0[0]), y.at[0].set(y0)            # in the batch _run compiled for
    for eps, fooled in ((0.5, True), (0.9 * near, False)):
        adv = sq.square(net, x, y, jax.random.key(0), eps=eps, n_queries=60, norm="L2",
                        prune_every=None, rescale_schedule=False)
        assert (int(jnp.argmax(net(adv[:1])[0])) != y0) == fooled
        assert _l2(adv[:1] - x0)[0] <= eps * (1 + 1e-6)


def test_l2_start_tiles_cut_at_the_border():
    """h = 12: tiles of 2 from row 1, six down and across: the reference's last tiles run
    over the border (it raises); ours are cut to one row / column."""
    tile, pat, n = sq._l2_start_tiles(12, 12)
    assert n == 36
    assert (tile[0] == -1).all() and (tile[:, 0] == -1).all()
    assert (tile[11, 1:] >= 0).all() and len(np.unique(tile[11, 1:])) == 6
    np.testing.assert_allclose(pat[0, 1:3, 1:3], sq.eta(2), rtol=1e-6)
    np.testing.assert_allclose(pat[1, 11, 1:3], sq.eta(2).T[0], rtol=1e-6)
    x = jnp.full((2, 12, 12, 1), 0.5)
    signs = jnp.ones((2, n, 1)).at[1].set(-1.0)
    start = jax.jit(sq._l2_start)(x, 0.5, signs, jnp.zeros((2, n), bool))
    assert _l2(start - x) == pytest.approx([0.5, 0.5], rel=1e-6)
    np.testing.assert_allclose(np.asarray(start[0] - x[0]), -np.asarray(start[1] - x[1]),
                               atol=1e-7)
    assert np.all(np.asarray(start[0, 1:, 1:] != 0.5)) and np.all(np.asarray(start[0, 0] == 0.5))


def test_bad_arguments_raise():
    x, y = _data(2)
    with pytest.raises(ValueError, match="norm"):
        sq.square(net, x, y, jax.random.key(0), norm="L1")
    with pytest.raises(ValueError, match="5 pixels"):
        sq.square(lambda a: a.reshape(len(a), -1), x[:, :4], y, jax.random.key(0), norm="L2")
    with pytest.raises(ValueError, match="prune_every"):
        sq.square(net, x, y, jax.random.key(0), norm="L2", prune_every=0)


# ---- the Linf window side ----

def test_linf_window_can_cover_the_whole_image():
    """As the reference, the side is capped at min(h, w), not below: with p_init 1 on 4x4
    images the first window is the whole image, so an accepted first query leaves one sign
    per channel (the stripes' start has mixed signs)."""
    x = 0.25 + 0.5 * jax.random.uniform(jax.random.key(0), (64, 4, 4, 2))
    Wl = jax.random.normal(jax.random.key(1), (32, 10))
    f = lambda xa: xa.reshape(len(xa), -1) @ Wl
    y = jnp.argmax(f(x), 1)
    eps = 0.1
    kw = dict(eps=eps, p_init=1.0, rescale_schedule=False)
    start, _ = sq._square_init(f, x, y, jax.random.key(2), jnp.float32(eps),
                               jnp.arange(len(x)), "Linf")                # the start only
    one = sq.square(f, x, y, jax.random.key(2), n_queries=1, **kw)      # and one query
    moved = np.any(np.asarray(one != start), axis=(1, 2, 3))
    assert moved.sum() > 0
    signs = np.sign(np.asarray(one - x))[moved]
    assert np.all(signs == signs[:, :1, :1, :])                   # one sign per channel
    assert not np.all(np.sign(np.asarray(start - x)) == np.sign(np.asarray(start - x))[:, :1, :1])


# ---- against the reference code itself (torch and the auto-attack mirror) ----

def _reference_namespace():
    torch = pytest.importorskip("torch")
    if not MIRROR.exists():
        pytest.skip(f"auto-attack mirror not found at {MIRROR}")
    src = subprocess.run(["git", "-C", str(MIRROR), "show", "HEAD:autoattack/square.py"],
                         capture_output=True, text=True, check=True).stdout
    src = src.replace("from autoattack.autopgd_base import L1_projection", "L1_projection = None")
    ns = {}
    exec(compile(src, "autoattack/square.py", "exec"), ns)
    return torch, ns


@pytest.mark.parametrize("h, w, c, p_init", [(16, 16, 3, 0.1), (10, 8, 2, 1.0)])
def test_l2_start_and_step_match_the_reference_given_the_same_draws(h, w, c, p_init):
    """The reference (one L2 query, its random draws scripted) and our start and candidate
    fed the same draws agree to float rounding. (10, 8): the side is capped at 8, even."""
    torch, ns = _reference_namespace()
    rng = np.random.default_rng(h)
    b, eps = 3, 0.5
    x = rng.uniform(0.2, 0.8, (b, h, w, c)).astype(np.float32)
    n_tiles = sq._l2_start_tiles(h, w)[2]
    signs = rng.choice([-1.0, 1.0], (b, n_tiles, c)).astype(np.float32)
    flips = rng.random(n_tiles) > 0.5               # the reference: one per tile and batch
    s = sq.l2_side(p_init, h, w, c)
    vh, vh2 = rng.integers(0, h - s, 2) if h > s else (0, 0)
    vw, vw2 = rng.integers(0, w - s, 2) if w > s else (0, 0)
    sign = rng.choice([-1.0, 1.0], (b, c)).astype(np.float32)
    flip = True
    choices = [torch.tensor(signs[:, t]).reshape(b, c, 1, 1) for t in range(n_tiles)]
    choices.append(torch.tensor(sign).reshape(b, c, 1, 1))
    rands = [torch.tensor([0.9 if f else 0.1]) for f in flips] + [torch.tensor([0.9])]
    ints = [vh, vw, vh2, vw2]

    class ScriptedTorch:                            # torch.rand: eta's transposition
        def __getattr__(self, name):
            return getattr(torch, name)

        def rand(self, *a, **k):
            return rands.pop(0)
    seen = []

    def predict(xt):
        seen.append(xt.permute(0, 2, 3, 1).numpy().copy())
        z = torch.zeros(len(xt), 10)
        z[:, 0] = 100.0                             # never fooled: one query for all points
        return z
    ns["torch"] = ScriptedTorch()
    att = ns["SquareAttack"](predict, norm="L2", eps=eps, n_queries=1, p_init=p_init)
    att.random_choice = lambda shape: choices.pop(0)
    att.random_int = lambda low=0, high=1, shape=[1]: torch.tensor([int(ints.pop(0))])
    att.perturb(torch.tensor(x).permute(0, 3, 1, 2).contiguous(), torch.zeros(b, dtype=torch.long))
    assert not choices and not rands and not ints
    ref_start, ref_new = seen[1], seen[2]

    xj = jnp.asarray(x)
    start = jax.jit(sq._l2_start)(xj, eps, jnp.asarray(signs),
                                  jnp.broadcast_to(jnp.asarray(flips), (b, n_tiles)))
    np.testing.assert_allclose(np.asarray(start), ref_start, atol=2e-7)
    sides, etas = sq._l2_table(p_init, h, w, c)
    assert sides[0] == s
    full = lambda v: jnp.full((b,), int(v), jnp.int32)
    new = jax.jit(sq._l2_candidate, static_argnums=4)(
        xj, jnp.asarray(ref_start), eps, jnp.asarray(etas[0]), int(s), full(vh), full(vw),
        full(vh2), full(vw2), jnp.asarray(sign), jnp.full((b,), flip))
    np.testing.assert_allclose(np.asarray(new), ref_new, atol=2e-7)
    assert np.abs(ref_new - ref_start).max() > 1e-2                 # the step did something
