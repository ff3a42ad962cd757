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
