"""The threat models (norms.py) and the L2 versions of PGD and APGD(-T)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxdefense import attacks
from jaxdefense.attacks.norms import get_norm

W = jax.random.normal(jax.random.key(0), (4 * 4 * 1, 10))


def linear(x):
    return x.reshape(x.shape[0], -1) @ W


def net(x):
    return 3.0 * jnp.tanh(linear(x))


def _data(n=32, seed=1):
    x = jax.random.uniform(jax.random.key(seed), (n, 4, 4, 1))
    return x, jnp.argmax(net(x), 1)


def l2(d):
    return np.sqrt(np.sum(np.asarray(d).reshape(len(d), -1) ** 2, axis=1))


@settings(max_examples=10, deadline=None)
@given(eps=st.floats(0.0, 3.0), scale=st.floats(0.0, 5.0), seed=st.integers(0, 100))
def test_l2_projection_lands_in_ball_and_box_and_is_idempotent(eps, scale, seed):
    x, _ = _data(8, seed)
    v = x + scale * jax.random.normal(jax.random.key(seed + 1), x.shape)
    norm = get_norm("L2")
    p = norm.project(v, x, eps)
    assert np.all(l2(p - x) <= eps * (1 + 1e-5) + 1e-6)
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    np.testing.assert_allclose(norm.project(p, x, eps), p, atol=1e-5)
    inside = l2(v - x) <= eps          # points already in the ball only get clipped to [0, 1]
    np.testing.assert_allclose(np.asarray(p)[inside], np.clip(np.asarray(v), 0, 1)[inside],
                               atol=1e-6)


def test_norm_parts():
    g = jax.random.normal(jax.random.key(2), (5, 3, 3, 2))
    linf, l2n = get_norm("linf"), get_norm("L2")
    np.testing.assert_array_equal(linf.ascent(g), jnp.sign(g))
    np.testing.assert_allclose(l2(l2n.ascent(g)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(linf.size(g), np.abs(np.asarray(g)).reshape(5, -1).max(1))
    x = jnp.full((5, 3, 3, 2), 0.5)
    np.testing.assert_allclose(l2(l2n.sphere_start(jax.random.key(0), x, 0.3) - x), 0.3,
                               rtol=1e-5)
    np.testing.assert_allclose(linf.size(linf.sphere_start(jax.random.key(0), x, 0.3) - x),
                               0.3, rtol=1e-5)
    r = l2(l2n.uniform_start(jax.random.key(0), jnp.full((200, 3, 3, 2), 0.5), 0.3) - 0.5)
    assert r.max() <= 0.3 + 1e-6 and 0.1 < r.mean() < 0.2      # radius ~ U(0, 1) * eps
    with pytest.raises(ValueError, match="unknown norm"):
        get_norm("L1")
    with pytest.raises(ValueError, match="unknown norm"):
        attacks.pgd(net, x, jnp.zeros(5, jnp.int32), jax.random.key(0), eps=0.1, norm="l3")


def test_pgd_l2_step_is_the_normalized_gradient_step():
    """One PGD-L2 step from x (no random start) = clip(x + a g / |g|_2, projected), as
    torchattacks' PGDL2, on a linear model where the CE gradient has a closed form."""
    x, y = _data(6)
    eps, a = 0.7, 0.3
    adv = attacks.pgd(linear, x, y, jax.random.key(0), eps=eps, step_size=a, steps=1,
                      random_start=False, return_last=True, norm="L2")
    p = jax.nn.softmax(linear(x))
    g = ((p - jax.nn.one_hot(y, 10)) @ W.T).reshape(x.shape)
    step = np.asarray(x) + a * np.asarray(g) / l2(g).reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(adv, np.clip(step, 0, 1), atol=1e-5)


def test_pgd_l2_reaches_the_linear_optimum():
    """Margin loss toward the easiest class of a linear model, away from the box edges:
    the L2 optimum moves eps along (w_t - w_y) / |w_t - w_y|_2."""
    x = jnp.full((1, 4, 4, 1), 0.5)
    y = jnp.argmax(linear(x), 1)
    eps = 0.05
    adv = attacks.pgd(linear, x, y, jax.random.key(0), eps=eps, step_size=0.01, steps=100,
                      loss="margin", norm="L2")
    w = np.asarray(W)
    z = np.asarray(linear(x))[0]
    gaps = [(z[t] - z[y[0]]) + eps * np.linalg.norm(w[:, t] - w[:, y[0]])
            for t in range(10) if t != y[0]]
    best = float(attacks.margin(linear(adv), y)[0])
    assert best == pytest.approx(max(gaps), rel=1e-3)
    assert l2(adv - x)[0] <= eps * (1 + 1e-5)


def test_l2_attacks_stay_in_ball_and_apgd_beats_pgd():
    x, y = _data(64)
    key, eps = jax.random.key(3), 0.6
    runs = {
        "pgd": attacks.pgd(net, x, y, key, eps=eps, steps=50, norm="L2"),
        "apgd": attacks.apgd(net, x, y, key, eps=eps, steps=50, norm="L2"),
        "apgd_t": attacks.apgd_targeted(net, x, y, key, eps=eps, steps=20, norm="L2",
                                        n_target_classes=3),
    }
    acc = {k: float(jnp.mean(jnp.argmax(net(v), 1) == y)) for k, v in runs.items()}
    for v in runs.values():
        assert np.all(l2(v - x) <= eps * (1 + 1e-5))
        assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0
    assert acc["apgd"] <= acc["pgd"] + 1 / 64
    assert acc["apgd"] < 0.9                       # the budget is large enough to matter
    # a larger L2 budget never helps the model
    wide = attacks.apgd(net, x, y, key, eps=2 * eps, steps=50, norm="L2")
    assert float(jnp.mean(jnp.argmax(net(wide), 1) == y)) <= acc["apgd"]


def test_autoattack_l2_runs_the_standard_stages_within_the_ball():
    """AutoAttack 'standard' under L2: APGD-CE, APGD-T, FAB-T, Square; cumulative robust
    accuracy never rises and every output is inside the L2 ball and the box."""
    w8 = jax.random.normal(jax.random.key(7), (8 * 8 * 1, 10))
    net8 = lambda v: 3.0 * jnp.tanh(v.reshape(v.shape[0], -1) @ w8)  # L2 Square: >= 5 pixels
    x = jax.random.uniform(jax.random.key(1), (32, 8, 8, 1))
    y = jnp.argmax(net8(x), 1)
    eps = 0.5
    adv, log = attacks.autoattack(net8, x, y, jax.random.key(2), eps=eps, norm="L2", steps=10,
                                  n_target_classes=2, square_queries=30, return_log=True)
    assert list(log) == ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]
    values = list(log.values())
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert float(jnp.mean(jnp.argmax(net8(adv), 1) == y)) == pytest.approx(log["square"])
    assert np.all(l2(adv - x) <= eps * (1 + 1e-5))
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert log["square"] < log["clean"]
