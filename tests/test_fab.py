import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linprog, minimize

from jaxdefense.attacks.apgd import ranked_targets
from jaxdefense.attacks.fab import (fab_targeted, projection_l2, projection_linf,
                                    random_start)
from jaxdefense.attacks.norms import get_norm

K = 10
W = jax.random.normal(jax.random.key(0), (4 * 4 * 1, K))


def linear(x):
    return x.reshape(x.shape[0], -1) @ W


def _data(n=16, seed=1, lo=0.3, hi=0.7):
    """Points away from the box faces (the closed-form distances hold) and their labels."""
    x = jax.random.uniform(jax.random.key(seed), (n, 4, 4, 1), minval=lo, maxval=hi)
    return x, jnp.argmax(linear(x), 1)


def _size(v, norm):
    v = np.asarray(v).reshape(len(v), -1)
    return np.abs(v).max(1) if norm == "Linf" else np.sqrt((v * v).sum(1))


def _boundary_distance(x, y, t, norm):
    """Distance from x to the hyperplane z_y = z_t of the linear model (box not active):
    (z_y - z_t) / |w_y - w_t|_1 (Linf) or _2 (L2); [n]."""
    z = np.asarray(linear(x))
    rows = np.arange(len(y))
    dw = np.asarray(W).T[t] - np.asarray(W).T[y]
    dual = np.abs(dw).sum(1) if norm == "Linf" else np.sqrt((dw ** 2).sum(1))
    return (z[rows, y] - z[rows, t]) / dual


def _problems(n, dim, seed):
    """Random hyperplanes w.z = b and points t in [0, 1]^dim, with offsets from small (no
    coordinate reaches the box) to large (the box does not reach the hyperplane)."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(size=(n, dim))
    w = rng.normal(size=(n, dim))
    b = (w * t).sum(1) + rng.normal(size=n) * np.geomspace(0.01, 5.0, n)
    return t, w, b


def _box_range(t, w):
    """The smallest and largest w.d over t + d in the box; [n] each."""
    return (np.minimum(-w * t, w * (1 - t)).sum(1), np.maximum(-w * t, w * (1 - t)).sum(1))


JITTED = {fn: jax.jit(fn) for fn in (projection_linf, projection_l2)}


def _project(fn, t, w, b):
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    return np.asarray(JITTED[fn](f32(t), f32(w), f32(b)), np.float64)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_projection_closed_form_when_box_inactive(norm):
    """Far from the box faces: d = -(w.t - b) / |w|_1 sign(w) (Linf), -(w.t - b) / |w|_2^2 w
    (L2)."""
    rng = np.random.default_rng(0)
    t = rng.uniform(0.4, 0.6, size=(40, 5))
    w = rng.normal(size=(40, 5))
    b = (w * t).sum(1) + rng.uniform(-0.05, 0.05, size=40)     # both sides of the plane
    gap = ((w * t).sum(1) - b)[:, None]
    if norm == "Linf":
        d = _project(projection_linf, t, w, b)
        expected = -gap / np.abs(w).sum(1, keepdims=True) * np.sign(w)
    else:
        d = _project(projection_l2, t, w, b)
        expected = -gap / (w * w).sum(1, keepdims=True) * w
    np.testing.assert_allclose(d, expected, atol=1e-6)


@pytest.mark.parametrize("dim", [5, 48])
@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_projection_matches_convex_solver(norm, dim):
    """min |d| s.t. w.(t + d) = b, 0 <= t + d <= 1: linprog (Linf), SLSQP (L2); at d = 48
    the points sit on a grid of 1/8 (many equal breakpoints, many coordinates on a face)."""
    t, w, b = _problems(40, dim, seed=1)
    t[0, 2] = 1.0                                              # points on the box faces
    t[1, 0] = 0.0
    if dim > 5:
        t = np.round(t * 8) / 8
        b = (w * t).sum(1) + np.random.default_rng(2).normal(size=40) * np.geomspace(
            0.01, 20.0, 40)
    d = _project(projection_linf if norm == "Linf" else projection_l2, t, w, b)
    lo, hi = _box_range(t, w)
    need = b - (w * t).sum(1)
    feasible = (lo < need) & (need < hi)
    assert 5 < feasible.sum() < len(b)                          # both kinds occur
    for i in np.nonzero(feasible)[0]:
        bounds = list(zip(-t[i], 1 - t[i]))
        if norm == "Linf":                                     # variables (d, s)
            eye, ones = np.eye(dim), np.ones((dim, 1))
            a_ub = np.block([[eye, -ones], [-eye, -ones]])
            res = linprog(np.r_[np.zeros(dim), 1.0], A_ub=a_ub, b_ub=np.zeros(2 * dim),
                          A_eq=np.r_[w[i], 0.0][None], b_eq=[need[i]],
                          bounds=bounds + [(0, None)])
            assert res.status == 0
            assert np.abs(d[i]).max() == pytest.approx(res.fun, rel=1e-5, abs=1e-6)
        else:
            res = minimize(lambda v: v @ v, np.zeros(dim), jac=lambda v: 2 * v, method="SLSQP",
                           bounds=bounds, options={"ftol": 1e-14, "maxiter": 500},
                           constraints=[{"type": "eq", "fun": lambda v: w[i] @ v - need[i],
                                         "jac": lambda v: w[i]}])
            assert res.success
            np.testing.assert_allclose(d[i], res.x, atol=1e-5)
        assert w[i] @ d[i] == pytest.approx(need[i], rel=1e-4, abs=1e-5)
        assert np.all(t[i] + d[i] >= -1e-6) and np.all(t[i] + d[i] <= 1 + 1e-6)
    # Where the box cannot reach the hyperplane: every coordinate at its face toward it.
    side = np.sign((w * t).sum(1) - b)[:, None]
    corner = np.where(w * side > 0, -t, 1 - t)
    np.testing.assert_allclose(d[~feasible], corner[~feasible], atol=1e-6)


@pytest.mark.parametrize("fn", [projection_linf, projection_l2])
def test_projection_leaves_zero_weight_coordinates(fn):
    t, w, b = _problems(40, 5, seed=2)
    w[:, [1, 4]] = 0.0
    d = _project(fn, t, w, b)
    assert np.all(d[:, [1, 4]] == 0.0)
    lo, hi = _box_range(t, w)
    need = b - (w * t).sum(1)
    ok = (lo < need) & (need < hi)
    np.testing.assert_allclose((w * d).sum(1)[ok], need[ok], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_fab_t_finds_the_closest_boundary_point_of_a_linear_model(norm):
    x, y = _data()
    target = ranked_targets(linear(x), 1)[0]
    adv = fab_targeted(linear, x, y, jax.random.key(0), eps=10.0, norm=norm, targets=target)
    closed = _boundary_distance(x, np.asarray(y), np.asarray(target), norm)
    dist = _size(adv - x, norm)
    assert np.all(np.argmax(np.asarray(linear(adv)), 1) != np.asarray(y))
    # The closest point FAB visits overshoots the boundary by about 0.5 % (as the reference).
    np.testing.assert_array_less(closed, dist)
    np.testing.assert_array_less(dist, closed * 1.01)


EPS = {"Linf": 0.045, "L2": 0.15}      # between the nearest boundaries of _data()'s points


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_fab_t_fools_exactly_the_points_within_eps(norm):
    """9 targets: a point is fooled iff some boundary z_y = z_t is within eps (up to FAB's
    overshoot); fooled points lie within eps and in [0, 1], the others stay x; points
    misclassified from the start stay x; the same key gives the same result."""
    x, y = _data()
    eps = EPS[norm]
    adv = fab_targeted(linear, x, y, jax.random.key(0), eps=eps, norm=norm)
    y_np = np.asarray(y)
    others = np.array([[t for t in range(K) if t != yi] for yi in y_np])   # [n, K - 1]
    nearest = np.min([_boundary_distance(x, y_np, t, norm) for t in others.T], axis=0)
    fooled = np.argmax(np.asarray(linear(adv)), 1) != y_np
    dist = _size(adv - x, norm)
    assert 0 < fooled.sum() < len(y_np)
    assert np.all(fooled[nearest * 1.01 < eps]) and not np.any(fooled[nearest > eps])
    assert np.all(dist[fooled] <= eps * (1 + 1e-6)) and np.all(dist[fooled] >= nearest[fooled])
    assert np.all(np.asarray(adv)[~fooled] == np.asarray(x)[~fooled])
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    np.testing.assert_array_equal(
        fab_targeted(linear, x, y, jax.random.key(0), eps=eps, norm=norm), adv)
    np.testing.assert_array_equal(
        fab_targeted(linear, x, (y + 1) % K, jax.random.key(0), eps=eps, norm=norm), x)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_random_start_is_half_eps_away(norm):
    x, _ = _data()
    start = jax.jit(random_start, static_argnums=3)(jax.random.key(3), x, 0.1, get_norm(norm))
    np.testing.assert_allclose(_size(start - x, norm), 0.05, rtol=1e-5)   # no clipping here


def test_fab_t_random_restarts_only_add_successes():
    """Restart 0 starts at x (as restarts=1), later ones at random points eps / 2 away."""
    x, y = _data()
    norm, eps = "L2", EPS["L2"]
    fooled = lambda adv: np.asarray(jnp.argmax(linear(adv), 1) != y)
    one = fab_targeted(linear, x, y, jax.random.key(0), eps=eps, norm=norm)
    more = fab_targeted(linear, x, y, jax.random.key(0), eps=eps, norm=norm, restarts=2)
    assert np.all(fooled(more)[fooled(one)])
    assert np.all(_size(more - x, norm) <= eps * (1 + 1e-6))
    assert float(more.min()) >= 0.0 and float(more.max()) <= 1.0
    np.testing.assert_array_equal(
        fab_targeted(linear, x, y, jax.random.key(0), eps=eps, norm=norm, restarts=2), more)


def test_fab_t_argument_errors():
    x, y = _data(n=4)
    key = jax.random.key(0)
    for kwargs, match in ((dict(eps=-0.1), "eps"), (dict(eps=0.1, steps=0), "steps"),
                          (dict(eps=0.1, norm="L1"), "norm"),
                          (dict(eps=0.1, restarts=0), "restarts"),
                          (dict(eps=0.1, n_target_classes=0), "n_target_classes"),
                          (dict(eps=0.1, alpha_max=1.5), "alpha_max"),
                          (dict(eps=0.1, beta=0.0), "beta"),
                          (dict(eps=0.1, targets=y[:2]), "targets")):
        with pytest.raises(ValueError, match=match):
            fab_targeted(linear, x, y, key, **kwargs)
    with pytest.raises(ValueError, match="NHWC"):
        fab_targeted(linear, x[0], y, key, eps=0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fab_targeted(linear, 255.0 * x, y, key, eps=0.1)
