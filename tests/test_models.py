import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdefense.models import LVCVAE, VGG16BN, LeNet5, ResNet18, WideResNet, build_classifier
from jaxdefense.models.common import conv_dtype


@pytest.mark.parametrize("model,shape", [
    (LeNet5(num_classes=10, width=0.5), (2, 28, 28, 1)),
    (WideResNet(num_classes=100, depth=10, widen=1), (2, 32, 32, 3)),
    (ResNet18(num_classes=10, width=0.125), (2, 32, 32, 3)),
    (VGG16BN(num_classes=10, width=0.125), (2, 32, 32, 3)),
])
def test_classifier_shapes(model, shape):
    x = jnp.ones(shape) * 0.5
    variables = model.init(jax.random.key(0), x)
    out, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)},
                         mutable=["batch_stats"])
    assert out.shape == (2, model.num_classes)
    assert model.apply(variables, x).shape == (2, model.num_classes)


@pytest.mark.parametrize("kind,shape,classes", [("conv", (3, 28, 28, 1), 10),
                                                ("residual", (3, 32, 32, 3), 100)])
def test_lvcvae_shapes_and_eval_determinism(kind, shape, classes):
    vae = LVCVAE(num_classes=classes, z_dim=16, kind=kind, base=4,
                 mean=(0.5,) * shape[-1], std=(0.25,) * shape[-1])
    x = jax.random.uniform(jax.random.key(0), shape)
    v = vae.init({"params": jax.random.key(1), "sample": jax.random.key(2)}, x)
    out = vae.apply(v, x)
    assert out["x_u"].shape == shape and out["recon"].shape == shape
    assert out["z"].shape == out["mu"].shape == out["logvar"].shape == (3, 16)
    assert out["logits_z"].shape == (3, classes)
    assert jnp.array_equal(out["z"], out["mu"])          # eval: z = mu
    train_out, _ = vae.apply(v, x, train=True, rngs={"sample": jax.random.key(3)},
                             mutable=["batch_stats"])
    assert not jnp.allclose(train_out["z"], train_out["mu"])  # train: sampled


def test_model_errors():
    with pytest.raises(ValueError, match="unknown classifier"):
        build_classifier("resnet9000")
    with pytest.raises(ValueError, match="6n"):
        WideResNet(depth=11).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="at least 32x32"):
        VGG16BN(width=0.125).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    with pytest.raises(ValueError, match="divisible by 4"):
        LVCVAE(num_classes=10).init({"params": jax.random.key(0), "sample": jax.random.key(0)},
                                    jnp.zeros((1, 30, 30, 1)))


def test_batch_norm_variance_is_accurate_in_float32():
    """Two-pass batch variance: with |mean| >> std the one-pass E[x^2] - mean^2 of flax's
    default is off by ~2.5e-2 here; ours stays at float32 rounding."""
    from jaxdefense.models.common import batch_norm
    x = 300.0 + np.random.default_rng(0).normal(size=(128, 4, 4, 8)).astype(np.float32)
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean((0, 1, 2))) / np.sqrt(x64.var((0, 1, 2)) + 1e-5)
    bn = batch_norm(train=True)
    y, state = bn.apply(bn.init(jax.random.key(0), x), x, mutable=["batch_stats"])
    assert np.abs(np.asarray(y) - ref).max() < 1e-3
    np.testing.assert_allclose(state["batch_stats"]["var"],
                               0.9 + 0.1 * x64.var((0, 1, 2)), rtol=1e-4)


@pytest.mark.parametrize("shape,cout", [((2, 7, 7, 8), 4), ((1, 5, 6, 3), 1)])
def test_conv_transpose_matches_flax(shape, cout):
    """ConvTranspose2x holds nn.ConvTranspose(4x4, s2, 'SAME')'s params and computes its
    output and gradients (input and kernel) in every formulation."""
    import flax.linen as nn
    from jaxdefense.models.layers import ConvTranspose2x
    x = jax.random.normal(jax.random.key(0), shape)
    ref = nn.ConvTranspose(cout, (4, 4), (2, 2), padding="SAME")
    v = ref.init(jax.random.key(1), x)
    assert jax.tree.all(jax.tree.map(jnp.array_equal, v,
                                     ConvTranspose2x(cout).init(jax.random.key(1), x)))
    v = {"params": {"kernel": v["params"]["kernel"], "bias": v["params"]["bias"] + 0.3}}
    loss = lambda m: lambda v, x: jnp.sum(jnp.sin(m.apply(v, x)))
    want = jax.value_and_grad(loss(ref), argnums=(0, 1))(v, x)
    for impl in ("scatter", "subpixel", "im2col", "xla"):
        got = jax.value_and_grad(loss(ConvTranspose2x(cout, impl=impl)), argnums=(0, 1))(v, x)
        assert ConvTranspose2x(cout, impl=impl).apply(v, x).shape == (
            shape[0], 2 * shape[1], 2 * shape[2], cout)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                     got, want)
    with pytest.raises(ValueError, match="subpixel"):
        ConvTranspose2x(cout, impl="fft").init(jax.random.key(1), x)


@pytest.mark.parametrize("shape,padding", [((8, 14, 14, 6), ((1, 1), (1, 1))),
                                           ((6, 9, 8, 3), "SAME")])
def test_strided_conv_matches_flax(shape, padding):
    """layers.Conv with stride 2 (no bias) holds nn.Conv's parameters and computes its
    output and gradients in every formulation: XLA's in quarter-batch parts ('auto' on CPU
    when the batch divides by 4), whole, and im2col."""
    import flax.linen as nn
    from jaxdefense.models import layers
    x = jax.random.normal(jax.random.key(0), shape)
    ref = nn.Conv(5, (4, 4), (2, 2), padding=padding, use_bias=False)
    v = ref.init(jax.random.key(1), x)
    mine = lambda impl: layers.Conv(5, (4, 4), padding, impl, strides=(2, 2), use_bias=False)
    assert jax.tree.all(jax.tree.map(jnp.array_equal, v, mine("auto").init(jax.random.key(1), x)))
    loss = lambda m: lambda v, x: jnp.sum(jnp.sin(m.apply(v, x)))
    want = jax.value_and_grad(loss(ref), argnums=(0, 1))(v, x)
    for impl in ("auto", "im2col", "xla"):
        got = jax.value_and_grad(loss(mine(impl)), argnums=(0, 1))(v, x)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                     got, want)
    parts = jax.grad(lambda k, x: jnp.sum(jnp.sin(layers.conv_batch_parts(
        x, k, (2, 2), padding, parts=2))), argnums=(0, 1))(v["params"]["kernel"], x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 parts, (want[1][0]["params"]["kernel"], want[1][1]))


def test_k4_s2_conv_takes_its_input_gradient_in_the_scatter_form():
    """'auto' on CPU computes a 4x4 stride-2 convolution padded by 1 (the LVCVAE encoders')
    with `conv_k4_s2`, whose input gradient is the scatter-form transposed convolution:
    the gradients, and a second-order gradient through them, equal XLA's convolution's."""
    from jaxdefense.models import layers
    assert layers.is_k4_s2_p1((2, 14, 14, 3), (4, 4, 3, 5), (2, 2), ((1, 1), (1, 1)))
    assert layers.is_k4_s2_p1((2, 28, 28, 1), (4, 4, 1, 5), (2, 2), "SAME")
    assert not layers.is_k4_s2_p1((2, 9, 8, 3), (4, 4, 3, 5), (2, 2), "SAME")       # odd
    assert not layers.is_k4_s2_p1((2, 14, 14, 3), (3, 3, 3, 5), (2, 2), "SAME")
    assert not layers.is_k4_s2_p1((2, 14, 14, 3), (4, 4, 3, 5), (2, 2), "VALID")
    x = jax.random.normal(jax.random.key(0), (4, 14, 14, 6))
    m = lambda impl: layers.Conv(5, (4, 4), ((1, 1), (1, 1)), impl, strides=(2, 2))
    v = m("xla").init(jax.random.key(1), x)
    assert "custom_vjp" in str(jax.make_jaxpr(lambda x: m("auto").apply(v, x))(x))
    assert "custom_vjp" not in str(jax.make_jaxpr(lambda x: m("xla").apply(v, x))(x))
    first = lambda impl: lambda v, x: jnp.sum(jnp.sin(m(impl).apply(v, x)))
    second = lambda impl: lambda v, x: jnp.sum(jax.grad(first(impl), 1)(v, x) ** 2)
    for f in (first, second):
        got, want = (jax.grad(f(impl), (0, 1))(v, x) for impl in ("auto", "xla"))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                     got, want)


def test_conv_transpose_auto_is_scatter_on_cpu(monkeypatch):
    """On CPU 'auto' computes every transposed convolution in the scatter form (one product,
    then overlap-add), wide and narrow alike."""
    from jaxdefense.models import layers
    calls = []
    fn = layers.conv_transpose_scatter
    monkeypatch.setattr(layers, "conv_transpose_scatter", lambda x, k: (
        calls.append((x.shape[-1], k.shape[-1])), fn(x, k))[1])
    for cin, cout in ((64, 32), (32, 1)):
        layers.ConvTranspose2x(cout).init(jax.random.key(0), jnp.zeros((1, 3, 3, cin)))
    assert calls == [(64, 32), (32, 1)]


def test_lvcvae_decoder_params_keep_their_names():
    """Checkpoints written before ConvTranspose2x (nn.ConvTranspose_0/1) still restore."""
    vae = LVCVAE(num_classes=10, z_dim=8, base=4)
    v = vae.init({"params": jax.random.key(0), "sample": jax.random.key(0)},
                 jnp.zeros((1, 28, 28, 1)))
    dec = v["params"]["decoder"]
    assert dec["ConvTranspose_0"]["kernel"].shape == (4, 4, 8, 4)
    assert jax.tree.map(jnp.shape, v["params"]["encoder"]) == {
        "Conv_0": {"kernel": (4, 4, 1, 4)}, "Conv_1": {"kernel": (4, 4, 4, 8)},
        "BatchNorm_0": {"scale": (4,), "bias": (4,)}, "BatchNorm_1": {"scale": (8,), "bias": (8,)}}
    assert dec["ConvTranspose_1"]["kernel"].shape == (4, 4, 4, 1)
    x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
    a = LVCVAE(num_classes=10, z_dim=8, base=4, transpose_impl="xla").apply(v, x)["x_u"]
    np.testing.assert_allclose(vae.apply(v, x)["x_u"], a, atol=1e-5)


def _conv_dtypes(model, x):
    """[(strided or dilated?, operand element type)] of every convolution in the model's
    training-mode gradient program, the second-order pass of an input-gradient penalty too."""
    variables = model.init(jax.random.key(0), x)

    def penalty(params):
        def loss(xx):
            logits, _ = model.apply({**variables, "params": params}, xx, train=True,
                                    mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})
            return logits.sum()
        return jnp.sum(jax.grad(loss)(x) ** 2)
    text = jax.jit(jax.grad(penalty)).lower(variables["params"]).as_text()
    convs = [line for line in text.splitlines() if "stablehlo.convolution" in line]
    assert convs, "no convolution found in the lowered program"
    out = []
    for line in convs:
        window = re.search(r"window = \{([^}]*)\}", line)

        def step(key):        # a window attribute's two values; absent means 1, 1
            m = window and re.search(rf"{key} = \[(\d+), (\d+)\]", window.group(1))
            return m.groups() if m else ("1", "1")
        strided = any(step(k) != ("1", "1") for k in ("stride", "lhs_dilate", "rhs_dilate"))
        out.append((strided, re.search(r"\(tensor<[0-9x]+x(\w+)>", line).group(1)))
    return out


@pytest.mark.parametrize("make", [
    lambda: WideResNet(num_classes=10, depth=10, widen=1, dtype=jnp.bfloat16),
    lambda: ResNet18(num_classes=10, width=0.125, dtype=jnp.bfloat16),
])
def test_bfloat16_models_keep_strided_convolutions_in_float32(make):
    """cuDNN has no fast bfloat16 kernel for part of a strided convolution's double backward
    (47 ms of GRFD's 100-109 ms bfloat16 step on an H200), so under bfloat16 the strided
    convolutions, and every convolution their derivatives produce, compute in float32."""
    convs = _conv_dtypes(make(), jnp.zeros((2, 16, 16, 3)))
    strided = [d for s, d in convs if s]
    assert len(strided) >= 8 and set(strided) == {"f32"}, convs
    assert "bf16" in {d for s, d in convs if not s}, "stride-1 convolutions stay bfloat16"
    assert conv_dtype(jnp.bfloat16, 2) == jnp.float32
    assert conv_dtype(jnp.bfloat16, 1) == jnp.bfloat16
    assert conv_dtype(jnp.float32, 2) == jnp.float32
