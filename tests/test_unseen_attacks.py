"""ARN's unseen attacks: C&W-L2, DDN, JSMA, stAdv, FWA and targeted PGD, on small models.

Hand-checked cases use a two-class linear model, whose smallest L2 adversarial
perturbation is known in closed form: |margin| / |w_1 - w_0|_2.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdefense import attacks
from jaxdefense.attacks.fwa import _to_image, lmo, neighbourhood
from jaxdefense.attacks.jsma import _best_pair
from jaxdefense.attacks.roa import best_windows
from jaxdefense.attacks.stadv import flow_loss, identity_grid, warp

W = jax.random.normal(jax.random.key(0), (6 * 6 * 1, 10))


def net(x):
    """A small nonlinear 10-class model (tanh-bounded logits)."""
    return 3.0 * jnp.tanh(x.reshape(x.shape[0], -1) @ W)


def _data(n=16, seed=1):
    x = jax.random.uniform(jax.random.key(seed), (n, 6, 6, 1))
    return x, jnp.argmax(net(x), 1)


def pred(x, f=net):
    return np.asarray(jnp.argmax(f(x), 1))


def _changed(a, x):
    return np.asarray(jnp.any(jnp.abs(a - x) > 0, axis=(1, 2, 3)))


# A linear two-class model on 4x4 images centred in the box, whose boundary is near.
_V = jax.random.normal(jax.random.key(5), (16,))


def linear(x):
    s = x.reshape(x.shape[0], -1) @ _V
    return jnp.stack([jnp.zeros_like(s), s], axis=1)


def _linear_data(n=8, margin=0.05):
    x0 = 0.5 + 0.02 * jax.random.normal(jax.random.key(6), (n, 16))
    x0 = x0 - ((x0 @ _V - margin) / (_V @ _V))[:, None] * _V        # on class 1
    x = x0.reshape(n, 4, 4, 1)
    return x, pred(x, linear)


def _min_l2(x):
    return np.abs(np.asarray(x.reshape(x.shape[0], -1) @ _V)) / float(jnp.linalg.norm(_V))


def test_cw_l2_changes_only_points_it_fools_and_nears_the_exact_distance():
    x, y = _data()
    adv = attacks.cw_l2(net, x, y, max_iterations=200, binary_search_steps=4,
                        initial_const=1.0)
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    changed = _changed(adv, x)
    assert changed.any()
    assert np.all(pred(adv)[changed] != np.asarray(y)[changed])
    assert np.array_equal(np.asarray(adv)[~changed], np.asarray(x)[~changed])
    # targeted: every changed point is classified as its target
    t = (y + 3) % 10
    adv_t = attacks.cw_l2(net, x, y, target=t, max_iterations=200, binary_search_steps=4,
                          initial_const=1.0)
    ch = _changed(adv_t, x)
    assert ch.any() and np.all(pred(adv_t)[ch] == np.asarray(t)[ch])
    # a linear model: every point fooled, within 5% above the smallest L2 perturbation
    xl, yl = _linear_data()
    a = attacks.cw_l2(linear, xl, jnp.asarray(yl), max_iterations=1000,
                      binary_search_steps=9, initial_const=1.0)
    d = np.asarray(jnp.sqrt(jnp.sum((a - xl) ** 2, axis=(1, 2, 3))))
    assert np.all(pred(a, linear) != yl)
    assert np.all(d >= _min_l2(xl) * (1 - 1e-3)) and np.all(d <= _min_l2(xl) * 1.05)


def test_cw_l2_search_raises_the_constant_until_it_succeeds():
    """From c = 1e-3 the search multiplies c by ten while it fails: with too few rounds
    nothing is found (x comes back), with enough the points fall."""
    xl, yl = _linear_data(margin=1.0)
    few = attacks.cw_l2(linear, xl, jnp.asarray(yl), max_iterations=100, binary_search_steps=1)
    assert np.array_equal(np.asarray(few), np.asarray(xl))
    many = attacks.cw_l2(linear, xl, jnp.asarray(yl), max_iterations=300,
                         binary_search_steps=6)
    assert np.all(pred(many, linear) != yl)
    with pytest.raises(ValueError, match="binary_search_steps"):
        attacks.cw_l2(net, *_data(2), binary_search_steps=0)
    with pytest.raises(ValueError, match="target"):
        attacks.cw_l2(net, *_data(2), target=jnp.zeros((3,), jnp.int32))


def test_ddn_finds_near_minimal_l2_points_on_the_grey_level_grid():
    xl, yl = _linear_data()
    xq = jnp.round(xl * 255) / 255
    yq = pred(xq, linear)
    a = attacks.ddn(linear, xq, jnp.asarray(yq), jax.random.key(0), steps=300)
    assert np.all(pred(a, linear) != yq)
    d = np.asarray(jnp.sqrt(jnp.sum((a - xq) ** 2, axis=(1, 2, 3))))
    assert np.all(d >= _min_l2(xq) * (1 - 1e-3)) and np.all(d <= _min_l2(xq) * 1.25 + 2 / 255)
    np.testing.assert_allclose(np.asarray(a) * 255, np.round(np.asarray(a) * 255), atol=1e-3)
    # unquantized, targeted, on the nonlinear model: changed points reach their target
    x, y = _data()
    t = (y + 1) % 10
    a = attacks.ddn(net, x, y, jax.random.key(0), target=t, steps=60, quantize=False)
    ch = _changed(a, x)
    assert ch.any() and np.all(pred(a)[ch] == np.asarray(t)[ch])
    with pytest.raises(ValueError, match="gamma"):
        attacks.ddn(net, x, y, jax.random.key(0), gamma=1.5)


def test_jsma_raises_at_most_two_features_a_step_and_stops_at_the_target():
    x, y = _data()
    x = x * 0.5                                   # room to raise every pixel
    t = (y + 2) % 10
    a = attacks.jsma(net, x, y, target=t)
    diff = np.asarray(a - x).reshape(len(x), -1)
    assert np.all(diff >= -1e-7)                  # theta > 0 only raises features
    changed = (diff > 0).sum(1)
    reached = pred(a) == np.asarray(t)
    assert reached.mean() >= 0.5
    assert np.all(changed[reached] % 2 == 0)      # pairs move (the clip never hits 0 here)
    # gamma caps the features changed at 2 * int(36 * gamma / 2): 8 at gamma 0.25, fewer
    # than gamma 1 changes on some samples
    capped = attacks.jsma(net, x, y, target=t, gamma=0.25)
    changed_capped = (np.asarray(capped - x).reshape(len(x), -1) > 0).sum(1)
    assert changed.max() > 8 and np.all(changed_capped <= 8)
    # a sample already at its target is left as it is
    same = attacks.jsma(net, x, y, target=y)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(x))
    down = attacks.jsma(net, x + 0.5, y, target=t, theta=-1.0)
    assert np.all(np.asarray(down - (x + 0.5)) <= 1e-7)
    with pytest.raises(ValueError, match="targeted"):
        attacks.jsma(net, x, y)


def test_jsma_picks_the_pair_by_the_saliency_rule():
    """One step by hand: the pair maximizing -alpha * beta among alpha > 0, beta < 0."""
    g_t = jnp.array([0.5, -0.2, 0.3, 0.1])
    g_o = jnp.array([-0.4, 0.6, -0.1, -0.9])
    p, q, valid = _best_pair(g_t, g_o, jnp.ones(4, bool), True)
    scores = {}
    for i in range(4):
        for j in range(4):
            a, b = float(g_t[i] + g_t[j]), float(g_o[i] + g_o[j])
            if i != j and a > 0 and b < 0:
                scores[(i, j)] = -a * b
    assert bool(valid) and {int(p), int(q)} == set(max(scores, key=scores.get))
    _, _, none = _best_pair(g_t, g_o,
                                                        jnp.array([True, False, False, False]),
                                                        True)
    assert not bool(none)


def test_stadv_warp_is_grid_sample_and_changed_points_fool():
    x, y = _data(4)
    g0 = jnp.broadcast_to(identity_grid(6, 6), (4, 6, 6, 2))
    np.testing.assert_allclose(np.asarray(warp(x, g0)), np.asarray(x), atol=1e-6)
    # sampling one pixel to the right: the image shifted left, zeros entering at the border
    shifted = warp(x, g0.at[..., 0].add(2 / 6))
    np.testing.assert_allclose(np.asarray(shifted[:, :, :-1]), np.asarray(x[:, :, 1:]),
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(shifted[:, :, -1]), 0.0, atol=1e-6)
    # half a pixel: the mean of neighbours
    half = warp(x, g0.at[..., 1].add(1 / 6))
    np.testing.assert_allclose(np.asarray(half[:, :-1]), np.asarray((x[:, :-1] + x[:, 1:]) / 2),
                               atol=1e-6)
    assert float(jnp.max(flow_loss(jnp.zeros((2, 6, 6, 2))))) < 1e-8

    x, y = _data()
    for target in (None, (y + 1) % 10):
        a = attacks.stadv(net, x, y, target=target, tau=0.05, max_iterations=100)
        ch = _changed(a, x)
        assert ch.any() and float(a.min()) >= 0 and float(a.max()) <= 1
        want = np.asarray(y if target is None else target)
        assert np.all((pred(a)[ch] != want[ch]) if target is None else
                      (pred(a)[ch] == want[ch]))
    # a tiny budget of iterations on a smooth-flow-only objective fools nothing: zeros or x
    z = attacks.stadv(net, x, y, tau=1e3, max_iterations=2, failed="zeros")
    kept = ~_changed(z, jnp.zeros_like(x))
    assert kept.any()
    with pytest.raises(ValueError, match="failed"):
        attacks.stadv(net, x, y, failed="black")


def test_fwa_oracle_is_feasible_and_the_attack_moves_mass_within_its_radius():
    x, y = _data(8)
    b, h, w, c = x.shape
    src, cost = neighbourhood(h, w, 5)
    cost = jnp.asarray(cost)
    mass = jnp.moveaxis(x, -1, 1).reshape(b, c, h * w)
    g = jax.random.normal(jax.random.key(3), (b, c, h * w, 25))
    budget = 0.3 * jnp.sum(x, axis=(1, 2, 3))
    pi = lmo(g, mass, cost, budget, 1e-3, 50, 1e-6)
    assert float(pi.min()) >= 0
    np.testing.assert_allclose(np.asarray(pi.sum(-1)), np.asarray(mass), rtol=1e-5, atol=1e-6)
    spent = np.asarray(jnp.sum(pi * cost, axis=(1, 2, 3)))
    assert np.all(spent <= np.asarray(budget) * (1 + 1e-3))
    assert np.all(spent >= np.asarray(budget) * 0.95)            # the budget binds
    # the identity plan gives back the image; a plan's image keeps the mass
    pi0 = jnp.zeros_like(pi).at[..., 12].set(mass)
    np.testing.assert_allclose(np.asarray(_to_image(pi0, jnp.asarray(src), x.shape)),
                               np.asarray(x), atol=1e-7)
    moved = _to_image(pi, jnp.asarray(src), x.shape)
    np.testing.assert_allclose(np.asarray(moved.sum((1, 2, 3))), np.asarray(x.sum((1, 2, 3))),
                               rtol=1e-5)
    # eps 0 leaves the image
    np.testing.assert_allclose(np.asarray(attacks.fwa(net, x, y, eps=0.0, steps=5)),
                               np.asarray(x), atol=1e-5)
    # the returned plan gives the image and spends eps times each image's mass (one image
    # dimmed to a mass below 1, where a budget of plain eps would be larger); a larger radius
    # fools at least as many points
    x = x.at[0].multiply(0.02)
    y, mass = pred(x), np.asarray(x.sum((1, 2, 3)))
    fooled = []
    for e in (0.05, 0.5):
        a, plan = attacks.fwa(net, x, y, eps=e, steps=30, return_plan=True)
        np.testing.assert_allclose(np.asarray(a), np.asarray(jnp.clip(
            _to_image(plan, jnp.asarray(src), x.shape), 0.0, 1.0)), atol=1e-6)
        spent = np.asarray(jnp.sum(plan * cost, axis=(1, 2, 3)))
        assert np.all(spent <= e * mass * (1 + 1e-3)) and np.all(spent >= 0.95 * e * mass)
        fooled.append(float(np.mean(pred(a) != y)))
    assert fooled[1] >= fooled[0] and fooled[1] > 0
    with pytest.raises(ValueError, match="kernel"):
        attacks.fwa(net, x, y, eps=0.1, kernel=4)


def lin10(x):
    return x.reshape(x.shape[0], -1) @ W


def test_targeted_pgd_stays_in_the_ball_and_reaches_the_target():
    x, _ = _data()
    y = jnp.argmax(lin10(x), 1)
    t = (y + 4) % 10
    a = attacks.pgd(lin10, x, y, jax.random.key(0), eps=0.3, steps=30, target=t)
    assert float(jnp.max(jnp.abs(a - x))) <= 0.3 + 1e-6
    reached = pred(a, lin10) == np.asarray(t)
    assert reached.mean() >= 0.5
    # the best point is judged by the target: wherever the last iterate reaches the target,
    # so does the returned point
    last = attacks.pgd(lin10, x, y, jax.random.key(0), eps=0.3, steps=30, target=t,
                       return_last=True)
    last_reached = pred(last, lin10) == np.asarray(t)
    assert last_reached.any() and np.all(reached[last_reached])
    with pytest.raises(ValueError, match="target"):
        attacks.pgd(lin10, x, y, jax.random.key(0), eps=0.3, target=t[:3])


def test_roa_changes_one_rectangle_found_by_the_gradient_search():
    x, y = _data(8)
    a = attacks.roa(net, x, y, jax.random.key(0), width=3, height=2, candidates=5, steps=10,
                    step_size=0.1)
    changed = np.asarray(jnp.abs(a - x) > 0)[..., 0]
    for c in changed:                      # inside one 2 x 3 box (grey fill moves every pixel)
        r, k = np.nonzero(c)
        assert len(r) and r.max() - r.min() < 2 and k.max() - k.min() < 3
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    # with one candidate the window is the one with the largest squared gradient
    g = jax.grad(lambda xa: jnp.sum(attacks.cross_entropy(net(xa), y)))(x)
    g2 = np.asarray(g[..., 0] ** 2)
    rows, cols = best_windows(net, x, y, 3, 2, 1, 1)
    for i in range(len(x)):
        sums = {(r, c): g2[i, r:r + 2, c:c + 3].sum() for r in range(5) for c in range(4)}
        assert (int(rows[i]), int(cols[i])) == max(sums, key=sums.get)
    # more steps and restarts never fool fewer points than the grey fill alone
    grey = attacks.roa(net, x, y, jax.random.key(0), width=3, height=2, steps=0)
    strong = attacks.roa(net, x, y, jax.random.key(0), width=3, height=2, steps=20,
                         step_size=0.1, restarts=3)
    assert (pred(strong) != np.asarray(y)).sum() >= (pred(grey) != np.asarray(y)).sum()
    with pytest.raises(ValueError, match="must fit"):
        attacks.roa(net, x, y, jax.random.key(0), width=7)


def test_doa_trains_on_occluded_images():
    """One real DOA step: the parameters move, and the step's inputs are ROA examples (the
    loss it reports is the loss on them, above the clean loss)."""
    from jaxdefense.defenses import doa
    from jaxdefense.training import init_classifier_state, make_optimizer
    from jaxdefense import config
    cfg = doa.preset("digits", smoke=True, roa_steps=3, roa_candidates=3, lenet_width=0.25)
    x, y = _data(16)
    x28 = jax.image.resize(x, (16, 28, 28, 1), "linear")
    state = init_classifier_state(config.make_classifier(cfg), (28, 28, 1),
                                  make_optimizer(cfg, 1), jax.random.key(0))
    new, metrics = jax.jit(doa.make_step(cfg))(state, (x28, y), jax.random.key(1), {})
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                                         state.params, new.params))
    assert max(moved) > 0
    model = config.make_classifier(cfg)
    v = {"params": state.params, "batch_stats": state.batch_stats}
    clean = float(jnp.mean(attacks.cross_entropy(model.apply(v, x28, train=True), y)))
    assert float(metrics["loss"]) > clean
