"""Plain Flax convolutions and pooling computed the CPU-friendly way (models/fast.py)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdefense import attacks
from jaxdefense.models import fast as fast_mod
from jaxdefense.models.fast import fast, fast_layers


class UserNet(nn.Module):
    """Written the usual way: nn.Conv in several configurations and nn.max_pool."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), padding="SAME")(x))
        x = nn.relu(nn.Conv(5, (3, 3), strides=2, padding="SAME", use_bias=False)(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(6, (2, 3), padding=((1, 0), (2, 1)))(x))
        x = nn.relu(nn.Conv(6, (3, 3), padding="VALID", strides=(1, 2))(x))
        x = nn.avg_pool(x, (2, 2), strides=(1, 1))
        x = nn.Conv(6, (3, 3), feature_group_count=2)(x)        # not covered: runs as written
        x = nn.max_pool(x, (3, 3), strides=(1, 1), padding="SAME")   # overlapping: as written
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def _model(size=16):
    m = UserNet()
    x = jax.random.uniform(jax.random.key(0), (3, size, size, 2))
    return m, m.init(jax.random.key(1), x), x


@pytest.mark.parametrize("size", [16, 17])
def test_same_logits_and_gradients_with_and_without(size):
    m, params, x = _model(size)
    f = lambda xx: m.apply(params, xx)
    g = lambda xx: jnp.sum(jnp.sin(f(xx)))

    def fast_f(xx):
        with fast_layers():
            return f(xx)

    np.testing.assert_allclose(jax.jit(fast_f)(x), jax.jit(f)(x), rtol=1e-5, atol=1e-5)
    fast_g = lambda xx: jnp.sum(jnp.sin(fast_f(xx)))
    np.testing.assert_allclose(jax.jit(jax.grad(fast_g))(x), jax.jit(jax.grad(g))(x),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape, k, padding", [
    ((2, 28, 28, 1), (5, 5, 1, 6), "SAME"),            # LeNet-5's first layer
    ((2, 14, 14, 6), (5, 5, 6, 16), "VALID"),          # its second
    ((3, 9, 7, 2), (3, 2, 2, 5), ((1, 2), (0, 1))),    # uneven kernel and padding
    ((2, 8, 8, 3), (4, 4, 3, 2), "SAME"),              # even kernel: padding (1, 2)
])
def test_banded_convolution_matches_xla_values_and_gradients(shape, k, padding):
    from jaxdefense.models import layers
    x = jax.random.uniform(jax.random.key(0), shape)
    kernel = jax.random.normal(jax.random.key(1), k)
    xla = lambda xx, kk: jax.lax.conv_general_dilated(
        xx, kk, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    pads = padding if not isinstance(padding, str) else (
        layers._pads(shape[1], k[0], 1, padding), layers._pads(shape[2], k[1], 1, padding))
    width = shape[2] + sum(pads[1]) - k[1] + 1
    loss = lambda fn: lambda xx, kk: jnp.sum(jnp.sin(fn(xx, kk)))
    want = xla(x, kernel), jax.grad(loss(xla), (0, 1))(x, kernel)
    # the default block, im2col-like single columns, uneven blocks (the last one padded;
    # built from column offsets when blocks outnumber them), one band over the whole row
    for block in (None, 1, 3, width):
        banded = lambda xx, kk: layers.conv_banded(xx, kk, pads, block)
        np.testing.assert_allclose(banded(x, kernel), want[0], rtol=1e-5, atol=2e-5)
        for got, ref in zip(jax.grad(loss(banded), (0, 1))(x, kernel), want[1]):
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    banded = lambda xx, kk: layers.conv_banded(xx, kk, pads)
    # conv_cpu picks it for these small layers, im2col for strides or big bands
    count = lambda f: str(jax.make_jaxpr(f)(x, kernel)).count("dot_general")
    assert count(lambda xx, kk: layers.conv_cpu(xx, kk, (1, 1), padding)) == count(banded)
    jaxpr = str(jax.make_jaxpr(lambda xx, kk: layers.conv_cpu(xx, kk, (2, 2), padding))(
        x, kernel))
    assert "stack" in jaxpr                                    # the windows (im2col)
    big = jnp.zeros((1, 32, 32, 64))
    assert layers.conv_cpu(big, jnp.zeros((3, 3, 64, 64))).shape == (1, 32, 32, 64)


def test_banded_convolution_slices_large_batches_with_the_same_results(monkeypatch):
    """From BAND_SPLIT_BATCH images conv_banded computes on slices of at least BAND_SLICE
    images (as many as divide the batch: one product each); values and both gradients
    equal the whole-batch form."""
    from jaxdefense.models import layers
    assert [layers.band_parts(n) for n in (128, 255, 256, 384, 640, 257)] == [1, 1, 2, 3, 5, 1]
    monkeypatch.setattr(layers, "BAND_SPLIT_BATCH", 8)
    monkeypatch.setattr(layers, "BAND_SLICE", 4)
    x = jax.random.uniform(jax.random.key(0), (12, 10, 10, 1))
    kernel = jax.random.normal(jax.random.key(1), (5, 5, 1, 6))
    pads = ((2, 2), (2, 2))
    loss = lambda fn: lambda xx, kk: jnp.sum(jnp.sin(fn(xx, kk)))
    sliced = lambda xx, kk: layers.conv_banded(xx, kk, pads)
    whole = lambda xx, kk: layers._conv_banded(xx, kk, pads)
    count = lambda f, xx: str(jax.make_jaxpr(f)(xx, kernel)).count("dot_general")
    assert count(sliced, x) == 3 * count(whole, x) == 3     # 12 images: 3 slices of 4
    assert count(sliced, x[:8]) == 2
    assert count(sliced, x[:6]) == 1                     # below the threshold: whole
    np.testing.assert_allclose(sliced(x, kernel), whole(x, kernel), rtol=1e-6, atol=1e-6)
    for got, ref in zip(jax.grad(loss(sliced), (0, 1))(x, kernel),
                        jax.grad(loss(whole), (0, 1))(x, kernel)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_covered_layers_leave_xla_convolution_and_the_rest_stay():
    m, params, x = _model()
    f = lambda xx: m.apply(params, xx)

    def count(fn):
        return str(jax.make_jaxpr(fn)(x)).count("conv_general_dilated")

    def fast_f(xx):
        with fast_layers():
            return f(xx)

    assert count(f) == 5
    assert count(fast_f) == 1                     # only the grouped convolution is left
    assert nn.max_pool is fast_mod._original_max_pool      # restored after the context


def test_lenet_auto_conv_on_cpu_is_banded_and_big_layers_train_with_xla():
    """On CPU the project's LeNet-5 computes both layers as banded matrix products, in
    training and under attack; a layer too big for the band trains with XLA's convolution
    and is attacked with im2col; the logits agree either way."""
    from jaxdefense.models import LeNet5, layers
    m = LeNet5(width=0.5)
    x = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1))
    v = m.init(jax.random.key(1), x)
    f = lambda xx: m.apply(v, xx)

    def fast_f(xx):
        with fast_layers():
            return f(xx)
    count = lambda fn, a: str(jax.make_jaxpr(fn)(a)).count("conv_general_dilated")
    assert count(f, x) == 0 and count(fast_f, x) == 0
    xla = lambda xx: LeNet5(width=0.5, conv_impl="xla").apply(v, xx)
    assert count(xla, x) == 2
    np.testing.assert_allclose(fast_f(x), xla(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f(x), xla(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="conv impl"):
        LeNet5(width=0.5, conv_impl="fft").apply(v, x)
    big = layers.Conv(64, (3, 3))
    xb = jnp.zeros((1, 32, 32, 64))
    vb = big.init(jax.random.key(2), xb)
    g = lambda xx: big.apply(vb, xx)

    def fast_g(xx):
        with fast_layers():
            return g(xx)
    assert count(g, xb) == 1 and count(fast_g, xb) == 0


def test_pool_restored_after_an_error():
    with pytest.raises(RuntimeError):
        with fast_layers():
            assert nn.max_pool is fast_mod.max_pool
            raise RuntimeError("boom")
    assert nn.max_pool is fast_mod._original_max_pool


def test_attacks_trace_through_fast_layers_and_keep_their_cache(monkeypatch):
    m, params, x = _model()
    traces = []

    def f(xx):
        traces.append(str(jax.make_jaxpr(lambda z: m.apply(params, z))(xx)).count(
            "conv_general_dilated"))
        return m.apply(params, xx)

    y = jnp.argmax(f(x), 1)
    traces.clear()
    assert fast(f) == fast(f) and hash(fast(f)) == hash(fast(f)) and fast(fast(f)) == fast(f)
    adv = attacks.pgd(f, x, y, jax.random.key(0), eps=0.1, steps=3)
    seen = list(traces)
    assert seen and all(c == 1 for c in seen)     # traced inside fast_layers
    attacks.pgd(f, x, y, jax.random.key(1), eps=0.1, steps=3)
    assert traces == seen                         # second call: no new trace
    monkeypatch.setenv("JAXDEFENSE_FAST_LAYERS", "0")
    assert fast(f) is f
    plain = attacks.pgd(f, x, y, jax.random.key(0), eps=0.1, steps=3)
    assert traces[-1] == 5
    np.testing.assert_allclose(adv, plain, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 7, 9, 1)])
def test_pool_2x2_gradient_goes_to_the_first_maximum_as_nn_max_pool(shape):
    """Ties are common (a uniform background gives equal activations): the gradient of
    layers.max_pool_2x2 goes to the first maximum of each window in row-major order, exactly
    as nn.max_pool's select-and-scatter, where jnp.max's would split it."""
    from jaxdefense.models import layers
    x = jnp.round(jax.random.uniform(jax.random.key(0), shape) * 2) / 2     # many ties
    x = x.at[0, :4, :4].set(0.5)                                           # all-equal windows
    w = jax.random.normal(jax.random.key(1), (shape[0], shape[1] // 2, shape[2] // 2, shape[3]))
    ref_pool = lambda xx: fast_mod._original_max_pool(xx, (2, 2), strides=(2, 2))
    np.testing.assert_array_equal(layers.max_pool_2x2(x), ref_pool(x))
    grad = lambda pool: jax.jit(jax.grad(lambda xx: jnp.sum(pool(xx) * w)))(x)
    got = grad(layers.max_pool_2x2)
    np.testing.assert_array_equal(got, grad(ref_pool))
    np.testing.assert_array_equal(got[0, :2, :2, 0], [[w[0, 0, 0, 0], 0.0], [0.0, 0.0]])
    # pooling before the relu gives the relu-then-pool values and gradients (LeNet-5's order)
    both = lambda f: (f(x - 0.5), jax.grad(lambda xx: jnp.sum(f(xx) * w))(x - 0.5))
    for a, b in zip(both(lambda xx: nn.relu(layers.max_pool_2x2(xx))),
                    both(lambda xx: layers.max_pool_2x2(nn.relu(xx)))):
        np.testing.assert_array_equal(a, b)


def test_uniform_background_keeps_the_first_maximum_under_attack():
    """A uniform background (MNIST's zeros, normalized inside the model) gives equal
    first-layer outputs, so the max-pool's gradient must go to each window's first maximum
    as with XLA's convolution and torch. The banded product rounds those equal outputs
    differently by column (a few ulps), which moved the gradient of every real MNIST image
    (BENCHMARKS.md); layers.max_pool_2x2 now counts values within TIE_RTOL as tied."""
    from jaxdefense.models import lenet
    m = lenet.LeNet5(num_classes=10)
    x = jnp.zeros((8, 28, 28, 1)).at[:, 8:20, 10:18].set(
        jax.random.uniform(jax.random.key(0), (8, 12, 8, 1)))
    params = m.init(jax.random.key(1), x)["params"]
    # negative weights and no bias: the background's outputs are positive and carry the
    # rounding of their 25-term sums
    kernel = -jnp.abs(jax.random.normal(jax.random.key(2), (5, 5, 1, 6))) * 0.2
    params = {**params, "Conv_0": {"kernel": kernel, "bias": jnp.zeros(6)}}
    y = jnp.arange(8) % 10
    xla = lenet.LeNet5(num_classes=10, conv_impl="xla")
    grad = lambda model, wrap: jax.jit(jax.grad(lambda xx: attacks.losses.get_loss("ce")(
        wrap(lambda z: model.apply({"params": params}, z))(xx), y).sum()))(x)
    ref, got = grad(xla, lambda f: f), grad(m, fast)
    scale = jnp.abs(ref).reshape(8, -1).max(1)
    np.testing.assert_array_less(jnp.abs(got - ref).reshape(8, -1).max(1), 1e-4 * scale)


def test_pool_ties_within_tolerance_only_under_attack():
    """Under attack (fast_layers) values within TIE_RTOL go to the first element; in
    training the comparison is exact, so a one-ulp larger later value takes the gradient."""
    from jaxdefense.models import layers
    one_up = float(np.nextafter(np.float32(1.0), np.float32(2.0)))
    x = jnp.array([[1.0, one_up], [0.0, 0.0]]).reshape(1, 2, 2, 1)
    far = x.at[0, 0, 1, 0].set(1.0 + 4 * layers.TIE_RTOL)
    grad = lambda xx: np.asarray(jax.grad(lambda z: layers.max_pool_2x2(z).sum())(xx))[0, :, :, 0]
    np.testing.assert_array_equal(grad(x), [[0.0, 1.0], [0.0, 0.0]])
    with fast_layers():
        np.testing.assert_array_equal(grad(x), [[1.0, 0.0], [0.0, 0.0]])
        np.testing.assert_array_equal(grad(far), [[0.0, 1.0], [0.0, 0.0]])
