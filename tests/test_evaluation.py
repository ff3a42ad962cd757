"""Batched evaluation: padded fixed shapes, and a periodic evaluation that compiles once."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdefense import evaluation


TRACES = []


class Counted(nn.Module):
    """A linear classifier that records each time its Python runs (under jit: each trace)."""

    @nn.compact
    def __call__(self, x):
        TRACES.append(1)
        return nn.Dense(3)(x.reshape(len(x), -1))


def test_new_parameters_each_epoch_compile_once():
    model = Counted()
    x = np.asarray(jax.random.uniform(jax.random.key(0), (50, 2, 2, 1)))
    y = np.arange(50) % 3
    apply = model.apply
    accs, traced = [], []
    for epoch in range(3):                     # as `fit` calls eval_fn after each epoch
        v = model.init(jax.random.key(epoch), x[:1])
        before = len(TRACES)
        accs.append(evaluation.accuracy(apply, x, y, batch_size=32, variables=v))
        traced.append(len(TRACES) - before)
        expected = np.mean(np.argmax(np.asarray(model.apply(v, x)), 1) == y)
        assert accs[-1] == expected            # the padded last batch is dropped right
    assert traced == [1, 0, 0]                 # new parameters: no new trace, no compile
    # without variables: a plain logits function, same results
    v = model.init(jax.random.key(2), x[:1])
    assert evaluation.accuracy(lambda xb: model.apply(v, xb), x, y, 32) == accs[-1]


def test_map_batches_keeps_row_order_over_padded_batches():
    x = np.arange(70, dtype=np.float32).reshape(70, 1, 1, 1)
    out = evaluation.map_batches(lambda xb: xb.reshape(len(xb)) * 2, x, batch_size=32)
    np.testing.assert_array_equal(out, np.arange(70) * 2)


def test_grfd_disentangle_dataset_compiles_once_across_epochs():
    """Phase I evaluates x_r every epoch with new VAE parameters: one trace in all."""
    from jaxdefense.defenses import grfd
    cfg = grfd.preset("digits", smoke=True)
    x = np.asarray(jax.random.uniform(jax.random.key(0), (40, 8, 8, 1)))
    vae = grfd.make_vae(cfg)
    calls = []

    def count(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, type(vae)):
            calls.append(1)
        return next_fun(*args, **kwargs)

    traced = []
    for epoch in range(2):
        v = vae.init(jax.random.key(epoch), x[:1])
        before = len(calls)
        with nn.intercept_methods(count):
            x_r = grfd.disentangle_dataset(cfg, v, x, batch_size=16)
        traced.append(len(calls) - before)
        x_u = np.asarray(vae.apply(v, x, train=False)["x_u"])
        np.testing.assert_allclose(x_r, x - x_u, atol=1e-5)
    assert traced == [1, 0]


def test_report_predictor_compiles_once_across_attacks():
    """One predictor per report: scoring a second attack's examples traces nothing new."""
    from jaxdefense import robustness
    model = Counted()
    x = np.asarray(jax.random.uniform(jax.random.key(0), (40, 2, 2, 1)))
    y = np.arange(40) % 3
    v = model.init(jax.random.key(1), x[:1])
    served = lambda xb: model.apply(v, xb)               # noqa: E731
    predict = robustness.make_predict(served, False)
    identity = lambda f, xb, yb, k: xb                   # noqa: E731
    shifted = lambda f, xb, yb, k: jnp.clip(xb + 0.1, 0, 1)  # noqa: E731
    traced, results = [], []
    for craft in (identity, shifted, identity):
        before = len(TRACES)
        ok, _ = robustness.correct_under(served, False, served, craft, x, y,
                                         jax.random.key(2), batch_size=16, predict=predict)
        traced.append(len(TRACES) - before)
        results.append(ok)
    assert traced == [1, 0, 0]
    expected = np.argmax(np.asarray(served(jnp.asarray(x))), 1) == y
    np.testing.assert_array_equal(results[0], expected)
    np.testing.assert_array_equal(results[2], expected)
