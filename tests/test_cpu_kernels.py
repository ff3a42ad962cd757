"""jaxdefense.cpu_kernels: plain Flax layers computed the CPU's way, the same values and
derivatives, one switch, and the transformations the module doc promises."""
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import pytest

from jaxdefense import attacks, cpu_kernels
from jaxdefense.cpu_kernels import conv, pool
from jaxdefense.models import LVCVAE, VGG16BN, AdvertorchLeNet5, LeNet5, ResNet18, WideResNet
from jaxdefense.models.common import MaxPool


class UserNet(nn.Module):
    """Written the usual way: nn.Conv in several configurations, pooling, a transposed conv."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), padding="SAME")(x))                     # banded
        x = nn.relu(nn.Conv(6, (4, 4), (2, 2), ((1, 1), (1, 1)))(x))            # k4 s2
        x = MaxPool()(x)                                                        # 2x2 pool
        x = nn.relu(nn.Conv(6, (2, 3), padding=((1, 0), (2, 1)))(x))            # banded
        x = nn.ConvTranspose(5, (4, 4), (2, 2), "SAME")(x)                      # scatter
        x = nn.relu(nn.Conv(6, (3, 3), padding="VALID", strides=(1, 2))(x))     # as written
        x = nn.Conv(6, (3, 3), feature_group_count=2)(x)                        # as written
        x = nn.max_pool(x, (3, 3), strides=(1, 1), padding="SAME")              # as written
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def _user_net(size=16):
    m = UserNet()
    x = jax.random.uniform(jax.random.key(0), (4, size, size, 2))
    return m, m.init(jax.random.key(1), x), x


def _on(f, ties="exact"):
    def g(*a):
        with cpu_kernels.kernels(ties):
            return f(*a)
    return g


def _count(fn, x, what):
    return str(jax.make_jaxpr(fn)(x)).count(what)


def test_same_values_and_gradients_with_and_without():
    m, v, x = _user_net(18)             # 18 -> 9 -> an odd size for the 2x2 pool
    f = lambda xx: m.apply(v, xx)
    loss = lambda fn: lambda vv, xx: jnp.sum(jnp.sin(m.apply(vv, xx) if fn is None else fn(vv, xx)))
    np.testing.assert_allclose(jax.jit(_on(f))(x), jax.jit(f)(x), rtol=1e-5, atol=1e-5)
    plain = jax.jit(jax.grad(loss(None), (0, 1)))(v, x)      # compiled: op by op is slow
    fast = jax.jit(jax.grad(_on(loss(None)), (0, 1)))(v, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), fast, plain)


def test_which_layers_are_taken():
    """Inside `kernels()` the table's layers leave XLA's convolution, transposed convolution
    and reduce-window; the rest stay as written; parameters are untouched."""
    m, v, x = _user_net()
    f = lambda xx: m.apply(v, xx)
    assert _count(f, x, "conv_general_dilated") == 6
    assert _count(_on(f), x, "conv_general_dilated") == 2 + conv.BATCH_PARTS   # k4 s2 in parts
    assert _count(_on(f), x, "custom_vjp_call") == 2                  # conv_k4_s2, the pool
    assert _count(f, x, "reduce_window_max") == 2 and _count(_on(f), x, "reduce_window_max") == 1
    big = nn.Conv(64, (3, 3))                              # a CIFAR-sized layer: XLA's
    xb = jnp.zeros((1, 32, 32, 64))
    vb = big.init(jax.random.key(2), xb)
    assert _count(_on(lambda xx: big.apply(vb, xx)), xb, "conv_general_dilated") == 1
    lenet = LeNet5(width=0.5)
    xl = jnp.zeros((2, 28, 28, 1))
    vl = lenet.init(jax.random.key(0), xl)
    assert _count(_on(lambda xx: lenet.apply(vl, xx)), xl, "conv_general_dilated") == 0
    assert _count(lambda xx: lenet.apply(vl, xx), xl, "conv_general_dilated") == 2


@pytest.mark.parametrize("shape, k, padding", [
    ((2, 28, 28, 1), (5, 5, 1, 6), "SAME"),            # LeNet-5's first layer
    ((2, 14, 14, 6), (5, 5, 6, 16), "VALID"),          # its second
    ((3, 9, 7, 2), (3, 2, 2, 5), ((1, 2), (0, 1))),    # uneven kernel and padding
    ((2, 8, 8, 3), (4, 4, 3, 2), "SAME"),              # even kernel: padding (1, 2)
])
def test_banded_convolution_matches_xla_values_and_gradients(shape, k, padding):
    x = jax.random.uniform(jax.random.key(0), shape)
    kernel = jax.random.normal(jax.random.key(1), k)
    xla = lambda xx, kk: jax.lax.conv_general_dilated(
        xx, kk, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    pads = conv.explicit_padding(shape, k, (1, 1), padding)
    width = shape[2] + sum(pads[1]) - k[1] + 1
    loss = lambda fn: lambda xx, kk: jnp.sum(jnp.sin(fn(xx, kk)))
    want = xla(x, kernel), jax.grad(loss(xla), (0, 1))(x, kernel)
    # the default block, single columns, uneven blocks (the last one padded; built from
    # column offsets when blocks outnumber them), one band over the whole row
    for block in (None, 1, 3, width):
        banded = lambda xx, kk: conv.conv_banded(xx, kk, pads, block)
        np.testing.assert_allclose(banded(x, kernel), want[0], rtol=1e-5, atol=2e-5)
        for got, ref in zip(jax.grad(loss(banded), (0, 1))(x, kernel), want[1]):
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
        tangent = jax.jvp(lambda xx: banded(xx, kernel), (x,), (x,))[1]      # forward mode
        np.testing.assert_allclose(tangent, xla(x, kernel), rtol=1e-5, atol=2e-5)


def test_banded_convolution_slices_large_batches_with_the_same_results(monkeypatch):
    """From BAND_SPLIT_BATCH images conv_banded computes on slices of at least BAND_SLICE
    images (as many as divide the batch: one product each); values and both gradients
    equal the whole-batch form."""
    assert [conv.band_parts(n) for n in (128, 255, 256, 384, 640, 257)] == [1, 1, 2, 3, 5, 1]
    monkeypatch.setattr(conv, "BAND_SPLIT_BATCH", 8)
    monkeypatch.setattr(conv, "BAND_SLICE", 4)
    x = jax.random.uniform(jax.random.key(0), (12, 10, 10, 1))
    kernel = jax.random.normal(jax.random.key(1), (5, 5, 1, 6))
    pads = ((2, 2), (2, 2))
    loss = lambda fn: lambda xx, kk: jnp.sum(jnp.sin(fn(xx, kk)))
    sliced = lambda xx, kk: conv.conv_banded(xx, kk, pads)
    whole = lambda xx, kk: conv._conv_banded(xx, kk, pads, None)
    count = lambda f, xx: str(jax.make_jaxpr(f)(xx, kernel)).count("dot_general")
    assert count(sliced, x) == 3 * count(whole, x) == 3     # 12 images: 3 slices of 4
    assert count(sliced, x[:8]) == 2
    assert count(sliced, x[:6]) == 1                     # below the threshold: whole
    np.testing.assert_allclose(sliced(x, kernel), whole(x, kernel), rtol=1e-6, atol=1e-6)
    for got, ref in zip(jax.grad(loss(sliced), (0, 1))(x, kernel),
                        jax.grad(loss(whole), (0, 1))(x, kernel)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_k4_s2_conv_takes_its_input_gradient_in_the_scatter_form():
    """A 4x4 stride-2 convolution padded by 1 (the LVCVAE encoders') computes with
    `conv_k4_s2`: the gradients, and a second-order gradient through them, equal XLA's."""
    assert conv.is_k4_s2_p1((2, 14, 14, 3), (4, 4, 3, 5), (2, 2), ((1, 1), (1, 1)))
    assert not conv.is_k4_s2_p1((2, 9, 8, 3), (4, 4, 3, 5), (2, 2), ((1, 1), (1, 1)))  # odd
    assert not conv.is_k4_s2_p1((2, 14, 14, 3), (3, 3, 3, 5), (2, 2), ((1, 1), (1, 1)))
    assert not conv.is_k4_s2_p1((2, 14, 14, 3), (4, 4, 3, 5), (2, 2), ((0, 0), (0, 0)))
    x = jax.random.normal(jax.random.key(0), (4, 14, 14, 6))
    m = nn.Conv(5, (4, 4), (2, 2), "SAME")              # 'SAME' is padding 1 here
    v = m.init(jax.random.key(1), x)
    first = lambda v, x: jnp.sum(jnp.sin(m.apply(v, x)))
    second = lambda v, x: jnp.sum(jax.grad(first, 1)(v, x) ** 2)
    for f in (first, second):
        got, want = jax.grad(_on(f), (0, 1))(v, x), jax.grad(f, (0, 1))(v, x)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                     got, want)
    parts = jax.grad(lambda k, x: jnp.sum(jnp.sin(conv.conv_batch_parts(
        x, k, (2, 2), ((1, 1), (1, 1)), parts=2))), argnums=(0, 1))(v["params"]["kernel"], x)
    want = jax.grad(first, (0, 1))(v, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 parts, (want[0]["params"]["kernel"], want[1]))


@pytest.mark.parametrize("shape,cout", [((2, 7, 7, 8), 4), ((1, 5, 6, 3), 1)])
def test_conv_transpose_scatter_matches_flax(shape, cout):
    x = jax.random.normal(jax.random.key(0), shape)
    m = nn.ConvTranspose(cout, (4, 4), (2, 2), padding="SAME")
    v = m.init(jax.random.key(1), x)
    v = {"params": {"kernel": v["params"]["kernel"], "bias": v["params"]["bias"] + 0.3}}
    loss = lambda v, x: jnp.sum(jnp.sin(m.apply(v, x)))
    assert _count(_on(lambda xx: m.apply(v, xx)), x, "conv_general_dilated") == 0
    assert _on(lambda xx: m.apply(v, xx))(x).shape == (shape[0], 2 * shape[1], 2 * shape[2], cout)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 jax.value_and_grad(_on(loss), (0, 1))(v, x),
                 jax.value_and_grad(loss, (0, 1))(v, x))


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 7, 9, 1)])
def test_pool_derivative_goes_to_the_first_maximum_as_nn_max_pool(shape):
    """Ties are common (a uniform background gives equal activations): the derivative of
    the CPU pool goes to each window's first maximum in row-major order, as nn.max_pool's
    select-and-scatter."""
    x = jnp.round(jax.random.uniform(jax.random.key(0), shape) * 2) / 2     # many ties
    x = x.at[0, :4, :4].set(0.5)                                           # all-equal windows
    w = jax.random.normal(jax.random.key(1), (shape[0], shape[1] // 2, shape[2] // 2, shape[3]))
    ref_pool = lambda xx: nn.max_pool(xx, (2, 2), strides=(2, 2))
    np.testing.assert_array_equal(pool.max_pool_2x2(x), ref_pool(x))
    grad = lambda p: jax.jit(jax.grad(lambda xx: jnp.sum(p(xx) * w)))(x)
    got = grad(pool.max_pool_2x2)
    np.testing.assert_array_equal(got, grad(ref_pool))
    np.testing.assert_array_equal(got[0, :2, :2, 0], [[w[0, 0, 0, 0], 0.0], [0.0, 0.0]])
    # pooling before the relu gives the relu-then-pool values and gradients (LeNet-5's order)
    both = lambda f: (f(x - 0.5), jax.grad(lambda xx: jnp.sum(f(xx) * w))(x - 0.5))
    for a, b in zip(both(lambda xx: nn.relu(pool.max_pool_2x2(xx))),
                    both(lambda xx: pool.max_pool_2x2(nn.relu(xx)))):
        np.testing.assert_array_equal(a, b)


def test_pool_ties_exact_or_within_the_rounding_tolerance():
    """ties='exact': a one-ulp larger later value takes the derivative; 'rounding' (the
    attacks): values within TIE_RTOL go to the first, farther ones to the larger."""
    one_up = float(np.nextafter(np.float32(1.0), np.float32(2.0)))
    x = jnp.array([[1.0, one_up], [0.0, 0.0]]).reshape(1, 2, 2, 1)
    far = x.at[0, 0, 1, 0].set(1.0 + 4 * pool.TIE_RTOL)
    m = MaxPool()
    grad = lambda xx, ties: np.asarray(jax.grad(_on(lambda z: m.apply({}, z).sum(), ties))(xx))
    np.testing.assert_array_equal(grad(x, "exact")[0, :, :, 0], [[0.0, 1.0], [0.0, 0.0]])
    np.testing.assert_array_equal(grad(x, "rounding")[0, :, :, 0], [[1.0, 0.0], [0.0, 0.0]])
    np.testing.assert_array_equal(grad(far, "rounding")[0, :, :, 0], [[0.0, 1.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="ties must be one of exact, rounding"):
        cpu_kernels.use(lambda z: z, ties="loose")


def test_uniform_background_keeps_the_first_maximum():
    """A uniform background (MNIST's zeros, normalized inside the model) gives equal
    first-layer outputs, which the banded product rounds apart by a few ulps by column:
    with ties='rounding' (the attacks') the input gradient with the kernels equals the
    plain model's (where XLA's convolution leaves them equal and the pool's derivative goes
    to the first maximum)."""
    m = LeNet5(num_classes=10)
    x = jnp.zeros((8, 28, 28, 1)).at[:, 8:20, 10:18].set(
        jax.random.uniform(jax.random.key(0), (8, 12, 8, 1)))
    params = m.init(jax.random.key(1), x)["params"]
    # negative weights and no bias: the background's outputs are positive and carry the
    # rounding of their 25-term sums
    kernel = -jnp.abs(jax.random.normal(jax.random.key(2), (5, 5, 1, 6))) * 0.2
    params = {**params, "Conv_0": {"kernel": kernel, "bias": jnp.zeros(6)}}
    y = jnp.arange(8) % 10
    loss = lambda xx: attacks.losses.get_loss("ce")(m.apply({"params": params}, xx), y).sum()
    ref, got = jax.jit(jax.grad(loss))(x), jax.jit(jax.grad(_on(loss, "rounding")))(x)
    scale = jnp.abs(ref).reshape(8, -1).max(1)
    np.testing.assert_array_less(jnp.abs(got - ref).reshape(8, -1).max(1), 1e-4 * scale)


def test_one_switch_applied_by_the_harness_never_by_the_attacks(monkeypatch):
    """The attacks are plain JAX; the harness hands them `attacked(f)`, which traces with
    the kernels where the switch says so (`switched`, `set_default`, else the environment
    variable)."""
    from jaxdefense import robustness
    m, v, x = _user_net()
    traces = []

    def f(xx):
        traces.append(_count(lambda z: m.apply(v, z), xx, "reduce_window_max"))
        return m.apply(v, xx)

    y = jnp.argmax(f(x), 1)
    traces.clear()
    use = cpu_kernels.use
    with cpu_kernels.switched("1"):
        assert use(f) == use(f) and hash(use(f)) == hash(use(f)) and use(use(f)) == use(f)
        assert use(f, "rounding") != use(f) and use(use(f), "rounding") == use(f, "rounding")
        assert cpu_kernels.attacked(f) == use(f, "rounding")
        adv = attacks.pgd(cpu_kernels.attacked(f), x, y, jax.random.key(0), eps=0.1, steps=3)
        seen = list(traces)
        assert seen and all(c == 1 for c in seen)     # traced with the kernels
        attacks.pgd(cpu_kernels.attacked(f), x, y, jax.random.key(1), eps=0.1, steps=3)
        assert traces == seen                         # second call: no new trace
        craft = robustness.craft_fn("pgd", dict(eps=0.1, steps=3), False)
        np.testing.assert_array_equal(craft(f, x, y, jax.random.key(0)), adv)   # the harness
        plain = attacks.pgd(f, x, y, jax.random.key(0), eps=0.1, steps=3)
        assert traces[-1] == 2                        # an attack adds no kernels itself
    np.testing.assert_allclose(adv, plain, atol=1e-5)
    with cpu_kernels.switched("0"):
        assert use(f) is f and cpu_kernels.attacked(f) is f
        with cpu_kernels.switched("1"):               # the innermost block wins
            assert use(f) is not f
    monkeypatch.setenv(cpu_kernels.ENV, "0")
    assert use(f) is f
    cpu_kernels.set_default("1")                      # the process's choice over the variable
    try:
        assert use(f) is not f
    finally:
        cpu_kernels.set_default(None)
    assert use(f) is f
    monkeypatch.setenv(cpu_kernels.ENV, "auto")
    assert cpu_kernels.enabled() == (jax.default_backend() == "cpu")
    monkeypatch.setenv(cpu_kernels.ENV, "yes")
    with pytest.raises(ValueError, match="expected one of auto, 1, 0"):
        use(f)
    with pytest.raises(ValueError, match="expected one of auto, 1, 0"):
        with cpu_kernels.switched("yes"):
            pass
    for module in pathlib.Path(attacks.__file__).parent.glob("*.py"):
        assert "cpu_kernels" not in module.read_text(), module.name


def test_training_computes_with_the_same_kernels(tmp_path):
    """`training.fit` compiles its step through the same switch as the attacks: the step
    is traced with the kernels (no XLA convolution in LeNet-5's step on CPU)."""
    import optax
    from jaxdefense import training
    model = LeNet5(width=0.5)
    state = lambda: training.init_classifier_state(model, (28, 28, 1), optax.sgd(0.1),
                                                   jax.random.key(0))      # donated by fit
    convs = []

    def step(st, batch, key, hp):
        x = batch[0]
        convs.append(_count(lambda z: model.apply({"params": st.params}, z), x,
                            "conv_general_dilated"))
        return training.classifier_step(model)(st, batch, key, hp)

    x = np.random.default_rng(0).uniform(size=(64, 28, 28, 1)).astype(np.float32)
    with cpu_kernels.switched("1"):
        training.fit(state(), step, x, np.arange(64) % 10, epochs=1, batch_size=32,
                     ckpt_dir=str(tmp_path), seed=0, phase="train", progress=False)
    assert convs == [0]                   # traced once, with the kernels
    convs.clear()
    with cpu_kernels.switched("0"):
        training.fit(state(), step, x, np.arange(64) % 10, epochs=1, batch_size=32,
                     ckpt_dir=str(tmp_path / "off"), seed=0, phase="train", progress=False)
    assert convs == [2]


# Every model of jaxdefense.models, tiny: (module, input, apply kwargs, has a 2x2 max pool or
# a 4x4 stride-2 convolution padded by 1, whose CPU kernels have no forward mode).
def _every_model():
    from jaxdefense.models import apegan, arn, diffusion, hgd, unet
    img = jnp.full((2, 28, 28, 1), 0.5)
    cifar = jnp.full((2, 32, 32, 3), 0.5)
    return {
        "LeNet5": (LeNet5(width=0.5), img, {}, True),
        "advertorch LeNet5": (AdvertorchLeNet5(width=0.25), img, {}, True),
        "WideResNet": (WideResNet(num_classes=10, depth=10, widen=1), cifar, {}, False),
        "ResNet18": (ResNet18(num_classes=10, width=0.125), cifar, {}, False),
        "VGG16BN": (VGG16BN(num_classes=10, width=0.125), cifar, {}, True),
        "LVCVAE": (LVCVAE(num_classes=10, z_dim=8, base=4), img, {}, True),
        "APE-GAN generator": (apegan.Generator(base=4), img, {}, True),
        "APE-GAN discriminator": (apegan.Discriminator(base=4), img, {}, False),
        "ARN encoder": (arn.Encoder(base=4, z_dim=8), img, {}, True),
        "DiffPure score net": (diffusion.ScoreUNet(base=8, channel_mult=(1, 2), num_res_blocks=1,
                                                   attn_resolutions=(14,)), img,
                               {"t": jnp.full((2,), 0.5)}, False),
        "IDFR denoiser": (unet.UNet(base=4), img, {}, False),
        "HGD denoiser": (hgd.Denoiser(levels=(4, 8, 8)), img, {}, False),
    }


@pytest.mark.parametrize("name", list(_every_model()))
def test_forward_mode_through_every_model(name):
    """jax.jvp goes through every model with the kernels off, and with them on through
    every model without a 2x2 max pool or a 4x4 stride-2 convolution (the cpu_kernels
    doc's list)."""
    model, x, kw, reverse_only = _every_model()[name]
    args = tuple(kw.values())
    v = model.init(jax.random.key(0), x, *args)
    out = lambda xx: jax.tree.leaves(model.apply(v, xx, *args))[0]
    t = jnp.ones_like(x)
    jvp = lambda f: jax.jit(lambda xx, tt: jax.jvp(f, (xx,), (tt,))[1])(x, t)
    plain = jvp(out)
    assert np.all(np.isfinite(plain))
    if reverse_only:
        with pytest.raises(TypeError, match="custom_vjp"):
            jvp(_on(out))
    else:
        np.testing.assert_allclose(jvp(_on(out)), plain, rtol=2e-3, atol=2e-3)
