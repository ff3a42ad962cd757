import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdefense.models import (LVCVAE, VGG16BN, AdvertorchLeNet5, LeNet5, ResNet18, WideResNet,
                               build_classifier)
from jaxdefense.models.common import conv_dtype


@pytest.mark.parametrize("model,shape", [
    (LeNet5(num_classes=10, width=0.5), (2, 28, 28, 1)),
    (AdvertorchLeNet5(num_classes=10, width=0.25), (2, 28, 28, 1)),
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


def test_lvcvae_decoder_params_keep_their_names():
    """The parameter tree checkpoints hold (names and shapes of every release)."""
    vae = LVCVAE(num_classes=10, z_dim=8, base=4)
    v = vae.init({"params": jax.random.key(0), "sample": jax.random.key(0)},
                 jnp.zeros((1, 28, 28, 1)))
    dec = v["params"]["decoder"]
    assert dec["ConvTranspose_0"]["kernel"].shape == (4, 4, 8, 4)
    assert jax.tree.map(jnp.shape, v["params"]["encoder"]) == {
        "Conv_0": {"kernel": (4, 4, 1, 4)}, "Conv_1": {"kernel": (4, 4, 4, 8)},
        "BatchNorm_0": {"scale": (4,), "bias": (4,)}, "BatchNorm_1": {"scale": (8,), "bias": (8,)}}
    assert dec["ConvTranspose_1"]["kernel"].shape == (4, 4, 4, 1)


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
