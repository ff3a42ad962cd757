"""APGD, APGD-T, Square, VMI-FGSM, EOT-PGD, AutoAttack and BPDA on small models."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxdefense import attacks
from jaxdefense.attacks.apgd import checkpoint_schedule
from jaxdefense.attacks.common import bucket_size
from tests.conftest import square_segments

W = jax.random.normal(jax.random.key(0), (4 * 4 * 1, 10))


def net(x):
    """A small nonlinear 10-class model whose CE saturates (tanh-bounded logits)."""
    return 3.0 * jnp.tanh(x.reshape(x.shape[0], -1) @ W)


def noisy_net(x, key):
    return net(x + 0.02 * jax.random.normal(key, x.shape))


def _data(n=32, seed=1):
    x = jax.random.uniform(jax.random.key(seed), (n, 4, 4, 1))
    return x, jnp.argmax(net(x), 1)


def acc(x, y):
    return float(jnp.mean(jnp.argmax(net(x), 1) == y))


ALL = {
    "fgsm": lambda x, y, k, e: attacks.fgsm(net, x, y, k, eps=e),
    "pgd": lambda x, y, k, e: attacks.pgd(net, x, y, k, eps=e, steps=3),
    "eotpgd": lambda x, y, k, e: attacks.eotpgd(noisy_net, x, y, k, eps=e, steps=3, eot_samples=2),
    "vmifgsm": lambda x, y, k, e: attacks.vmifgsm(net, x, y, k, eps=e, step_size=e / 2, steps=3),
    "apgd": lambda x, y, k, e: attacks.apgd(net, x, y, k, eps=e, steps=5, loss="dlr"),
    "apgd_targeted": lambda x, y, k, e: attacks.apgd_targeted(net, x, y, k, eps=e, steps=5,
                                                              n_target_classes=2),
    "square": lambda x, y, k, e: attacks.square(net, x, y, k, eps=e, n_queries=20),
    "autoattack": lambda x, y, k, e: attacks.autoattack(net, x, y, k, eps=e, steps=5,
                                                        n_target_classes=2, square_queries=20),
}


@settings(max_examples=4, deadline=None)
@given(eps=st.floats(0.0, 0.4), seed=st.integers(0, 50))
@pytest.mark.parametrize("name", sorted(ALL))
def test_every_attack_respects_eps_ball_and_box(name, eps, seed):
    x, y = _data(8, seed)
    adv = ALL[name](x, y, jax.random.key(seed), eps)
    assert adv.shape == x.shape
    assert float(jnp.max(jnp.abs(adv - x))) <= eps + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0


def test_apgd_checkpoints_match_reference_schedule():
    is_check, length = checkpoint_schedule(100)
    assert list(np.nonzero(is_check)[0]) == [21, 40, 56, 69, 79, 86, 92, 98]
    assert list(length[is_check]) == [22, 19, 16, 13, 10, 7, 6, 6]


@pytest.mark.slow   # about 30 s each (AutoAttack with FAB-T at 100 steps)
def test_apgd_at_most_pgd_on_same_budget_and_ensemble_is_worst_case():
    x, y = _data(64)
    key = jax.random.key(3)
    eps = 0.08
    a_pgd = acc(attacks.pgd(net, x, y, key, eps=eps, steps=100, step_size=eps / 10), y)
    a_apgd = acc(attacks.apgd(net, x, y, key, eps=eps, steps=100), y)
    assert a_apgd <= a_pgd + 1 / 64
    adv, log = attacks.autoattack(net, x, y, key, eps=eps, square_queries=300, return_log=True)
    assert acc(adv, y) == pytest.approx(log["square"])
    assert log["clean"] >= log["apgd-ce"] >= log["apgd-t"] >= log["square"]
    single = [acc(attacks.apgd_targeted(net, x, y, key, eps=eps), y),
              acc(attacks.square(net, x, y, key, eps=eps, n_queries=300), y)]
    assert acc(adv, y) <= min(single) + 1 / 64


def test_robust_accuracy_falls_as_eps_grows():
    x, y = _data(64)
    accs = [acc(attacks.apgd(net, x, y, jax.random.key(0), eps=e, steps=50, loss="dlr"), y)
            for e in (0.0, 0.05, 0.1, 0.5)]
    assert accs[0] == 1.0 and accs == sorted(accs, reverse=True) and accs[-1] < 0.3


def test_square_breaks_a_gradient_masking_model():
    """Quantized inputs give zero gradients: PGD does nothing, Square still succeeds, and
    PGD through BPDA (identity backward) recovers the attack."""
    quantize = lambda x: jnp.round(x * 3) / 3
    masked = lambda x: net(quantize(x))
    x, y = _data(64)
    y = jnp.argmax(masked(x), 1)
    key = jax.random.key(0)
    acc_m = lambda xa: float(jnp.mean(jnp.argmax(masked(xa), 1) == y))
    g = jax.grad(lambda xi: masked(xi)[:, 0].sum())(x)
    assert float(jnp.abs(g).max()) == 0.0
    assert acc_m(attacks.pgd(masked, x, y, key, eps=0.2, steps=10, random_start=False)) == 1.0
    assert acc_m(attacks.square(masked, x, y, key, eps=0.2, n_queries=300)) < 0.7
    bpda_model = lambda xi: net(attacks.bpda(quantize)(xi))
    np.testing.assert_array_equal(bpda_model(x), masked(x))
    assert acc_m(attacks.pgd(bpda_model, x, y, key, eps=0.2, steps=20)) < 0.7


def test_bpda_with_smooth_surrogate_uses_its_gradient():
    f = attacks.bpda(jnp.round, backward=lambda x: 2.0 * x)
    assert float(f(1.3)) == 1.0
    assert float(jax.grad(f)(1.3)) == 2.0


def linear(x):
    return x.reshape(x.shape[0], -1) @ W


def gradient_noise(x, key, scale=3.0):
    """linear(x) in the forward pass; its input gradient plus a zero-mean random term of
    `scale` times its size: one draw's gradient is a poor guide, their mean a good one."""
    g = scale * x.reshape(x.shape[0], -1) @ jax.random.normal(key, W.shape)
    return linear(x) + g - jax.lax.stop_gradient(g)


def test_eot_averages_gradients_over_draws():
    x = jax.random.uniform(jax.random.key(1), (64, 4, 4, 1))
    y = jnp.argmax(linear(x), 1)
    lin_acc = lambda a: float(jnp.mean(jnp.argmax(linear(a), 1) == y))
    key = jax.random.key(0)
    a = attacks.eotpgd(gradient_noise, x, y, key, eps=0.1, steps=10, eot_samples=32)
    b = attacks.eotpgd(gradient_noise, x, y, key, eps=0.1, steps=10, eot_samples=32)
    np.testing.assert_array_equal(a, b)                  # randomness only through the key
    one = attacks.eotpgd(gradient_noise, x, y, key, eps=0.1, steps=10, eot_samples=1)
    # 32 draws per step find the true gradient; one draw wanders (measured 0.34 vs 0.64)
    assert lin_acc(a) <= lin_acc(one) - 0.2
    f = [attacks.fgsm(gradient_noise, x, y, key, eps=0.1, eot_samples=n, stochastic=True)
         for n in (32, 1)]
    assert lin_acc(f[0]) <= lin_acc(f[1]) - 0.2          # FGSM's EOT (0.33 vs 0.59)
    v = attacks.vmifgsm(gradient_noise, x, y, key, eps=0.1, step_size=0.025, steps=10,
                        eot_samples=4, stochastic=True)
    assert lin_acc(v) < 0.5
    with pytest.raises(ValueError, match="needs a key"):
        attacks.fgsm(gradient_noise, x, y, None, eps=0.1, stochastic=True)


def test_vmifgsm_defaults_and_targeted_apgd_reaches_targets():
    x, y = _data(32)
    adv = attacks.vmifgsm(net, x, y, jax.random.key(0), eps=0.2, step_size=0.05, steps=10)
    assert acc(adv, y) < acc(x, y)
    targets = (y + 1) % 10
    adv_t = attacks.apgd_targeted(net, x, y, jax.random.key(0), eps=0.5, targets=targets)
    assert float(jnp.mean(jnp.argmax(net(adv_t), 1) != y)) > 0.5


def test_second_call_does_not_recompile():
    x, y = _data(8)
    traces = []

    def counted(v):                      # Python runs only while JAX traces
        traces.append(1)
        return net(v)

    attacks.apgd(counted, x, y, jax.random.key(0), eps=0.1, steps=10)
    first = len(traces)
    assert first > 0
    attacks.apgd(counted, jnp.clip(x + 0.01, 0, 1), y, jax.random.key(1), eps=0.05, steps=10)
    assert len(traces) == first          # new eps, key and pixels: no new trace


def test_attack_errors():
    x, y = _data(8)
    with pytest.raises(ValueError, match="eps"):
        attacks.apgd(net, x, y, jax.random.key(0), eps=-1.0)
    with pytest.raises(ValueError, match="version"):
        attacks.autoattack(net, x, y, jax.random.key(0), version="plus")
    with pytest.raises(ValueError, match="targets"):
        attacks.apgd_targeted(net, x, y, jax.random.key(0), targets=y[:3])


@pytest.mark.slow   # about 30 s each (AutoAttack with FAB-T at 100 steps)
def test_autoattack_compaction_matches_masking():
    """Gathering robust points into buckets reaches the robust accuracy of masking them
    (random draws differ with the batch shape, so up to a few points)."""
    x, y = _data(64)
    key = jax.random.key(4)
    adv_c, log_c = attacks.autoattack(net, x, y, key, eps=0.1, steps=20, square_queries=100,
                                      return_log=True)
    adv_m, log_m = attacks.autoattack(net, x, y, key, eps=0.1, steps=20, square_queries=100,
                                      compact=False, return_log=True)
    assert float(jnp.max(jnp.abs(adv_c - x))) <= 0.1 + 1e-6
    assert acc(adv_c, y) == pytest.approx(log_c["square"])
    assert abs(log_c["square"] - log_m["square"]) <= 4 / 64


def test_bucket_sizes():
    from jaxdefense.attacks.common import gather_bucket
    ns = (1, 3, 5, 8, 9, 13, 25, 33, 48, 49, 64)
    assert [bucket_size(n, 64) for n in ns] == [1, 3, 6, 8, 12, 16, 32, 48, 48, 64, 64]
    assert [bucket_size(n, 64, "pow2") for n in ns] == [1, 4, 8, 8, 16, 16, 32, 64, 64, 64, 64]
    assert bucket_size(70, 100) == 96 and bucket_size(97, 100) == 100
    for kind, most in (("fine", 2 * 7), ("pow2", 7 + 1)):       # 2 log2(B) / log2(B) + 1
        sizes = [bucket_size(n, 128, kind) for n in range(1, 129)]
        assert len(set(sizes)) <= most
        assert all(n <= s for n, s in zip(range(1, 129), sizes))
        assert max(s / n for n, s in zip(range(1, 129), sizes) if n > 2) <= (
            1.5 if kind == "fine" else 2.0)
    np.testing.assert_array_equal(gather_bucket(np.array([5, 9, 2, 7, 1]), 64),
                                  [5, 9, 2, 7, 1, 5])
    with pytest.raises(ValueError, match="buckets"):
        bucket_size(3, 8, "exact")


def test_targeted_attacks_drop_fooled_points_between_targets(monkeypatch):
    """Called outside jit, APGD-T and FAB-T attack one target class at a time, only the
    points still robust (misclassified or already fooled ones dropped, as the reference),
    and reach the robust accuracy of the one-loop version (buckets=None) within a point or
    two (random starts differ with the batch shape)."""
    import importlib
    calls = []
    for name, inner in (("apgd", "_apgd_t"), ("fab", "_fab_t")):
        mod = importlib.import_module(f"jaxdefense.attacks.{name}")
        real = getattr(mod, inner)

        def spy(*a, real=real, name=name):
            calls.append((name, a[1].shape[0], a[7] if name == "apgd" else a[8]))
            return real(*a)
        monkeypatch.setattr(mod, inner, spy)
    x, y = _data(48)
    key = jax.random.key(7)
    correct = np.asarray(jnp.argmax(net(x), 1) == y)
    kw = dict(eps=0.1, steps=5, n_target_classes=3)
    for name, fn in (("apgd", attacks.apgd_targeted), ("fab", attacks.fab_targeted)):
        calls.clear()
        staged = fn(net, x, y, key, **kw)
        sizes = [n for _, n, t in calls]
        assert len(calls) >= 2 and all(t is not None for _, _, t in calls)
        assert sizes[0] == bucket_size(int(correct.sum()), 48)
        assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]
        calls.clear()
        full = fn(net, x, y, key, buckets=None, **kw)
        assert [(n, t) for _, n, t in calls] == [(48, None)]
        assert float(jnp.max(jnp.abs(staged - x))) <= 0.1 + 1e-6
        assert abs(acc(staged, y) - acc(full, y)) <= 2 / 48
        assert acc(staged, y) < correct.mean()
        calls.clear()                      # inside jit: the one-loop version
        jax.make_jaxpr(lambda xx, fn=fn: fn(net, xx, y, key, **kw))(x)
        assert [(n, t) for _, n, t in calls] == [(48, None)]


def test_autoattack_runs_each_target_class_on_the_points_still_robust(monkeypatch):
    """As the reference: APGD-T and then FAB-T are one attack per target class, each on the
    points no earlier attack or target fooled, toward that point's j-th most likely wrong
    clean class."""
    import importlib
    aa = importlib.import_module("jaxdefense.attacks.autoattack")
    calls = []

    def spy(name, real):
        def run(f, x, y, k, **kw):
            out = real(f, x, y, k, **kw)
            calls.append(dict(name=name, n=len(x), targets=np.asarray(kw["targets"]),
                              x=np.asarray(x)))
            return out
        return run
    monkeypatch.setattr(aa, "apgd_targeted", spy("apgd-t", aa.apgd_targeted))
    monkeypatch.setattr(aa, "fab_targeted", spy("fab-t", aa.fab_targeted))
    x, y = _data(64)
    _, log = attacks.autoattack(net, x, y, jax.random.key(5), eps=0.06, steps=10,
                                n_target_classes=3, square_queries=10, return_log=True)
    names = [c["name"] for c in calls]
    assert names == sorted(names) and 2 <= len(calls) <= 6 and "fab-t" in names
    ranked = np.asarray(aa.ranked_targets(net(x), 3))
    earlier = None
    for i, c in enumerate(calls):
        j = sum(d["name"] == c["name"] for d in calls[:i])     # the j-th target of its attack
        rows = [int(np.nonzero(np.all(np.asarray(x) == xi, axis=(1, 2, 3)))[0][0])
                for xi in c["x"]]
        unique = set(rows)
        assert c["n"] == bucket_size(len(unique), 64)       # the robust points, bucketed
        np.testing.assert_array_equal(c["targets"], ranked[j][rows])
        if earlier is None:
            assert len(unique) == round(log["apgd-ce"] * 64)
        else:
            assert unique <= earlier                           # fooled points left out
        earlier = unique


def test_square_pruning_fooled_points_changes_nothing_but_the_work():
    """Dropping fooled points every 40 queries gives exactly the unpruned result (draws are
    keyed per sample), and later segments attack fewer points."""
    x, y = _data(64)
    key = jax.random.key(6)
    full = attacks.square(net, x, y, key, eps=0.15, n_queries=200, prune_every=None)
    with square_segments() as sizes:
        pruned = attacks.square(net, x, y, key, eps=0.15, n_queries=200, prune_every=40)
    np.testing.assert_array_equal(np.asarray(pruned), np.asarray(full))
    assert float(jnp.max(jnp.abs(pruned - x))) <= 0.15 + 1e-6
    assert len(sizes) >= 2 and sizes[0] <= 64 and sizes[-1] < sizes[0], sizes
    assert acc(pruned, y) < acc(x, y)
    with pytest.raises(ValueError, match="prune_every"):
        attacks.square(net, x, y, key, prune_every=0)
