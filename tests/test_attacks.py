import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxdefense.attacks import fgsm, pgd

W = jax.random.normal(jax.random.key(0), (4 * 4 * 1, 3))


def linear(x):
    return x.reshape(x.shape[0], -1) @ W


def _data(n=6, seed=1):
    x = jax.random.uniform(jax.random.key(seed), (n, 4, 4, 1))
    y = jnp.argmax(linear(x), 1)       # start from correctly classified points
    return x, y


def test_fgsm_closed_form_on_linear_model():
    x, y = _data()
    eps = 0.05
    adv = fgsm(linear, x, y, eps=eps)
    p = jax.nn.softmax(linear(x))
    grad = (p - jax.nn.one_hot(y, 3)) @ W.T           # d CE / d x for logits = x W
    expected = jnp.clip(x + eps * jnp.sign(grad.reshape(x.shape)), 0, 1)
    np.testing.assert_allclose(adv, expected, atol=1e-6)


def test_pgd_margin_finds_linear_optimum():
    """For a linear model and margin loss toward a fixed class, the optimum is a box corner."""
    x, y = _data(n=1, seed=3)
    x = jnp.full_like(x, 0.5)                          # far from the [0, 1] box edges
    y = jnp.argmax(linear(x), 1)
    eps = 0.1
    adv = pgd(linear, x, y, jax.random.key(0), eps=eps, step_size=0.02, steps=50, loss="margin")
    margin = lambda xa: jnp.max(jnp.where(jnp.arange(3) == y[0], -jnp.inf, linear(xa)[0])) \
        - linear(xa)[0, y[0]]
    best = max(float(margin(x + eps * jnp.sign(W[:, j] - W[:, y[0]]).reshape(x.shape)))
               for j in range(3) if j != int(y[0]))
    assert float(margin(adv)) == pytest.approx(best, abs=1e-4)


@settings(max_examples=15, deadline=None)
@given(eps=st.floats(0.0, 0.5), steps=st.integers(1, 5), seed=st.integers(0, 100),
       loss=st.sampled_from(["ce", "margin", "dlr"]))
def test_attacks_stay_in_eps_ball_and_box(eps, steps, seed, loss):
    x, y = _data(seed=seed)
    for adv in (fgsm(linear, x, y, eps=eps, loss=loss),
                pgd(linear, x, y, jax.random.key(seed), eps=eps, steps=steps, loss=loss)):
        assert float(jnp.max(jnp.abs(adv - x))) <= eps + 1e-6
        assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0


def test_robust_accuracy_falls_with_eps_and_pgd_beats_fgsm():
    x, y = _data(n=64, seed=5)
    acc = lambda adv: float(jnp.mean(jnp.argmax(linear(adv), 1) == y))
    accs = [acc(pgd(linear, x, y, jax.random.key(0), eps=e, steps=20)) for e in (0.0, 0.1, 0.3, 1.0)]
    assert accs[0] == 1.0 and accs == sorted(accs, reverse=True) and accs[-1] < 0.5
    assert acc(pgd(linear, x, y, jax.random.key(0), eps=0.1, steps=20)) <= acc(fgsm(linear, x, y, eps=0.1))


def test_pgd_restarts_never_hurt_and_is_deterministic_given_key():
    x, y = _data(n=32, seed=7)
    a = pgd(linear, x, y, jax.random.key(1), eps=0.08, steps=5)
    b = pgd(linear, x, y, jax.random.key(1), eps=0.08, steps=5)
    np.testing.assert_array_equal(a, b)
    fooled = lambda adv: int(jnp.sum(jnp.argmax(linear(adv), 1) != y))
    assert fooled(pgd(linear, x, y, jax.random.key(1), eps=0.08, steps=5, restarts=4)) >= fooled(a)


def test_attack_argument_errors():
    x, y = _data()
    with pytest.raises(ValueError, match="eps"):
        fgsm(linear, x, y, eps=-0.1)
    with pytest.raises(ValueError, match="steps"):
        pgd(linear, x, y, jax.random.key(0), eps=0.1, steps=0)
    with pytest.raises(ValueError, match="NHWC"):
        pgd(linear, x[0], y, jax.random.key(0), eps=0.1)
    with pytest.raises(ValueError, match="unknown attack loss"):
        fgsm(linear, x, y, eps=0.1, loss="hinge")
    with pytest.raises(ValueError, match="divide by 255"):
        pgd(linear, 255.0 * x, y, jax.random.key(0), eps=0.1)
    with pytest.raises(ValueError, match="divide by 255"):
        fgsm(linear, (255 * x).astype(jnp.uint8), y, eps=0.1)
    with pytest.raises(ValueError, match="1 non-finite"):
        fgsm(linear, x.at[0, 0, 0, 0].set(jnp.nan), y, eps=0.1)
    # inside a traced function (adversarial training) the values are not checked
    jax.jit(lambda xb: fgsm(linear, xb, y, eps=0.1))(x)
