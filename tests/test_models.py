import jax
import jax.numpy as jnp
import pytest

from jaxdefense.models import LVCVAE, VGG16BN, LeNet5, ResNet18, WideResNet, build_classifier


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
