import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from jaxdefense import training
from jaxdefense.data import dataset_info
from jaxdefense.defenses import grfd
from jaxdefense.defenses.grfd.config import GRFDConfig, preset
from jaxdefense.training import classifier_step, cosine_per_epoch


class Linear(nn.Module):
    """logits = W vec(x) + b, accepting the harness's train/rng keywords."""
    classes: int = 3

    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(self.classes)(x.reshape(x.shape[0], -1))


class Smooth(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        h = jnp.tanh(nn.Dense(5)(x.reshape(x.shape[0], -1)))
        return nn.Dense(3)(h)


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_rb_loss_matches_hand_computation_on_linear_model():
    key = jax.random.key(0)
    x_r = jax.random.normal(key, (4, 2, 2, 1))
    y = jnp.array([0, 1, 2, 1])
    model = Linear()
    variables = model.init(key, x_r)
    std = 0.5
    got = grfd.robustness_loss(model, variables, x_r, x_r, y, jax.random.key(7), 2, std)

    # by hand: grad_x CE(Wx + b, y) = W^T (softmax - onehot); same noise draws as the code
    w = np.asarray(variables["params"]["Dense_0"]["kernel"])      # [in, classes]
    b = np.asarray(variables["params"]["Dense_0"]["bias"])
    k_noise, _ = jax.random.split(jax.random.key(7))
    noise = np.asarray(jax.random.normal(k_noise, (2, *x_r.shape))) * std
    xf = np.asarray(x_r).reshape(4, -1)
    onehot = np.eye(3)[np.asarray(y)]
    grad = lambda xv: (_softmax(xv @ w + b) - onehot) @ w.T
    g0 = grad(xf)
    cos = []
    for k in range(2):
        g1 = grad(xf + noise[k].reshape(4, -1))
        cos.append((g0 * g1).sum(1) / (np.linalg.norm(g0, axis=1) * np.linalg.norm(g1, axis=1)))
    np.testing.assert_allclose(np.asarray(got), -np.mean(cos, 0), rtol=1e-4, atol=1e-5)


def test_rb_loss_second_order_gradient_matches_finite_differences():
    model = Smooth()
    x = jax.random.normal(jax.random.key(1), (2, 2, 2, 1))
    y = jnp.array([0, 2])
    variables = model.init(jax.random.key(2), x)
    f = lambda xr: grfd.robustness_loss(model, variables, xr, xr, y, jax.random.key(3), 2,
                                        0.3).sum()
    with jax.enable_x64(True) if hasattr(jax, "enable_x64") else jax.experimental.enable_x64():
        check_grads(f, (x.astype(jnp.float64),), order=1, modes=["rev"], atol=1e-4, rtol=1e-4)


def test_rb_loss_is_minus_one_without_noise():
    model = Linear()
    x = jax.random.normal(jax.random.key(0), (3, 2, 2, 1))
    v = model.init(jax.random.key(1), x)
    got = grfd.robustness_loss(model, v, x, x, jnp.array([0, 1, 2]), jax.random.key(2), 3, 0.0)
    np.testing.assert_allclose(got, -1.0, rtol=1e-5)


class BatchNormed(nn.Module):
    """Dense - BatchNorm - Dense: samples coupled through the batch statistics."""

    @nn.compact
    def __call__(self, x, train=False):
        h = nn.Dense(4)(x.reshape(x.shape[0], -1))
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
        return nn.Dense(3)(jnp.tanh(h))


@pytest.mark.parametrize("model", [Smooth(), BatchNormed()], ids=["independent", "batchnorm"])
def test_logits_and_input_gradients_equal_separate_passes(model):
    """N batches at once (one batch of N * B without BatchNorm, vmapped with it) give each
    batch's own training-mode logits and input gradient, and batch 0's statistics."""
    xs = jax.random.normal(jax.random.key(0), (3, 4, 2, 2, 1))
    y = jnp.array([0, 2, 1, 1])
    v = model.init(jax.random.key(1), xs[0])
    g, logits, stats = grfd.logits_and_input_gradients(model, v, xs, y, jax.random.key(2))
    for n in range(3):
        want, new = model.apply(v, xs[n], train=True, mutable=["batch_stats"])
        np.testing.assert_allclose(logits[n], want, rtol=1e-5, atol=1e-6)
        fwd = lambda x: model.apply(v, x, train=True, mutable=["batch_stats"])[0]
        np.testing.assert_allclose(g[n], training.input_gradient(fwd, xs[n], y), rtol=1e-5,
                                   atol=1e-6)
        if n == 0:
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                         stats, new.get("batch_stats", {}))
    assert bool(stats) == ("batch_stats" in v)


def test_kl_and_cosine_values():
    np.testing.assert_allclose(grfd.gaussian_kl(jnp.zeros((2, 4)), jnp.zeros((2, 4))), 0.0)
    mu = jnp.array([[1.0, 0.0]])
    np.testing.assert_allclose(grfd.gaussian_kl(mu, jnp.zeros((1, 2))), [0.25], rtol=1e-6)
    a = jnp.array([[1.0, 0.0], [1.0, 1.0]])
    b = jnp.array([[0.0, 2.0], [2.0, 2.0]])
    np.testing.assert_allclose(grfd.cosine_per_sample(a, b), [0.0, 1.0], atol=1e-6)


def test_alpha_thirds_and_torch_cosine_schedule():
    cfg = GRFDConfig(epochs=150)
    assert [cfg.alpha_at(e) for e in (0, 49, 50, 99, 100, 149)] == [10, 10, 5, 5, 1, 1]
    sched = cosine_per_epoch(1e-3, 1e-4, 50, steps_per_epoch=10)
    torch_like = lambda e: 1e-4 + (1e-3 - 1e-4) * (1 + math.cos(math.pi * e / 50)) / 2
    for epoch in (0, 1, 25, 50, 75, 100, 149):
        assert float(sched(epoch * 10 + 3)) == pytest.approx(torch_like(epoch), rel=1e-5)
    assert float(sched(500)) == pytest.approx(1e-4) and float(sched(1000)) == pytest.approx(1e-3)


@pytest.mark.parametrize("clean_at", ["x_r", "x_u"])
def test_one_generator_step_updates_everything(tiny_cfg, clean_at):
    cfg = preset("digits", smoke=True, z_dim=8, vae_base=4, lenet_width=0.25, rb_samples=2,
                 rb_clean_at=clean_at)
    state = grfd.init_generator_state(cfg, jax.random.key(0), 10)
    x = jax.random.uniform(jax.random.key(1), (8, 28, 28, 1))
    y = jnp.arange(8) % 10
    step = jax.jit(grfd.make_generator_step(cfg))
    new, metrics = step(state, (x, y), jax.random.key(2), {"alpha": jnp.float32(10.0)})
    for k in ("loss", "l_rc", "l_kl", "l_rf", "l_cl", "l_rb"):
        assert np.isfinite(float(metrics[k])), k
    assert -1.0 <= float(metrics["l_rb"]) <= 1.0
    for part in ("vae", "rsm"):           # the one optimizer step reaches VAE, head and RSM
        changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params[part],
                               new.params[part])
        assert all(jax.tree.leaves(changed)), part
    assert int(new.step) == 1


def test_rb_gradient_reaches_vae_through_x_r():
    """With only delta > 0, the VAE still gets gradient: L_rb depends on x_r = x - G(x)."""
    cfg = preset("digits", smoke=True, z_dim=8, vae_base=4, lenet_width=0.25, alpha="0",
                 beta=0.0, epsilon=0.0, gamma=0.0, delta=1.0)
    state = grfd.init_generator_state(cfg, jax.random.key(0), 10)
    x = jax.random.uniform(jax.random.key(1), (8, 28, 28, 1))
    new, m = jax.jit(grfd.make_generator_step(cfg))(state, (x, jnp.arange(8)), jax.random.key(2),
                                                    {"alpha": jnp.float32(0.0)})
    dec = new.params["vae"]["decoder"]
    assert any(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                                            state.params["vae"]["decoder"], dec)))


class TinyVAE(nn.Module):
    """Dense encoder / decoder with LVCVAE's outputs and attributes, for fast loss checks."""
    z_dim: int = 6
    classes: int = 3
    mean: tuple = (0.5,)
    std: tuple = (0.25,)

    @nn.compact
    def __call__(self, x, train=False):
        h = nn.BatchNorm(use_running_average=not train)(x.reshape(x.shape[0], -1))
        mu, logvar = nn.Dense(self.z_dim)(h), 0.1 * nn.Dense(self.z_dim)(h)
        z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(self.make_rng("sample"), mu.shape)
        recon = jnp.tanh(nn.Dense(math.prod(x.shape[1:]))(z)).reshape(x.shape)
        return dict(x_u=recon * jnp.asarray(self.std) + jnp.asarray(self.mean), recon=recon,
                    mu=mu, logvar=logvar, logits_z=nn.Dense(self.classes)(z))


def _tiny_step_metrics(**fields):
    """Phase-I metrics of one step on TinyVAE + Smooth (digits' std) with the given fields,
    and what the step needs to recompute its terms: (metrics, vae, vae_vars, rsm, rsm_vars,
    x, y, key, cfg)."""
    cfg = GRFDConfig(dataset="digits", **fields).validate()
    std = dataset_info("digits")["std"]
    vae, rsm = TinyVAE(std=tuple(std)), Smooth()
    x = jax.random.uniform(jax.random.key(0), (4, 2, 2, 1))
    y = jnp.array([0, 1, 2, 1])
    vae_vars = vae.init({"params": jax.random.key(1), "sample": jax.random.key(2)}, x)
    rsm_vars = rsm.init(jax.random.key(3), x)
    state = training.TrainState.create(
        apply_fn=None, params={"vae": vae_vars["params"], "rsm": rsm_vars["params"]},
        batch_stats={"vae": vae_vars["batch_stats"], "rsm": {}}, tx=optax.sgd(0.0))
    key = jax.random.key(4)
    _, metrics = jax.jit(grfd.make_generator_step(cfg, vae, rsm))(
        state, (x, y), key, {"alpha": jnp.float32(1.0)})
    return metrics, vae, vae_vars, rsm, rsm_vars, x, y, key, cfg


def test_kl_reduction_sum_is_the_mean_times_z_dim():
    """kl_reduction="sum" (the paper's KL) is the default "mean" (the reference code's)
    times the latent size, in L_kl and in the loss; nothing else changes."""
    mu = jax.random.normal(jax.random.key(0), (3, 5))
    logvar = 0.3 * jax.random.normal(jax.random.key(1), (3, 5))
    np.testing.assert_allclose(grfd.gaussian_kl(mu, logvar, "sum"),
                               5 * grfd.gaussian_kl(mu, logvar), rtol=1e-6)
    assert GRFDConfig().kl_reduction == "mean"
    mean = _tiny_step_metrics(delta=0.0)[0]
    total = _tiny_step_metrics(delta=0.0, kl_reduction="sum")[0]
    z_dim = TinyVAE.z_dim
    assert float(mean["l_kl"]) > 0
    np.testing.assert_allclose(total["l_kl"], z_dim * mean["l_kl"], rtol=1e-5)
    np.testing.assert_allclose(total["loss"] - mean["loss"],
                               GRFDConfig().beta * (z_dim - 1) * mean["l_kl"], rtol=1e-4)
    for k in ("l_rc", "l_rf", "l_cl"):
        np.testing.assert_allclose(total[k], mean[k], rtol=1e-6)


def test_rb_noise_scale_reaches_l_rb():
    """L_rb in the step is robustness_loss with std rb_noise * data std (the same draws):
    0.01 (the reference code's, the default) and 1.0 (the paper's N(0, 1)) both reach it
    and give different values."""
    assert GRFDConfig().rb_noise == 0.01
    got = {}
    for noise in (0.01, 1.0):
        m, vae, vae_vars, rsm, rsm_vars, x, y, key, cfg = _tiny_step_metrics(
            rb_noise=noise, rb_samples=2)
        k_sample, _, k_rb = jax.random.split(key, 3)     # as the step splits its key
        out = vae.apply(vae_vars, x, train=True, rngs={"sample": k_sample},
                        mutable=["batch_stats"])[0]
        x_r = x - out["x_u"]
        want = grfd.robustness_loss(rsm, rsm_vars, x_r, x_r, y, k_rb, 2,
                                    noise * jnp.asarray(dataset_info(cfg.dataset)["std"])).mean()
        np.testing.assert_allclose(m["l_rb"], want, rtol=1e-5, atol=1e-6)
        got[noise] = float(m["l_rb"])
    assert got[1.0] > got[0.01] + 1e-3 and got[0.01] < -0.99


def test_paper_reading_flags_from_the_command_line():
    from jaxdefense.cli import parse_config
    from jaxdefense.defenses.grfd.config import PRESETS
    cfg = parse_config(["--dataset=digits", "--kl_reduction=sum", "--rb_noise=1.0"],
                       GRFDConfig, preset, PRESETS, "grfd", "")
    assert (cfg.kl_reduction, cfg.rb_noise) == ("sum", 1.0)
    cfg = parse_config(["--dataset=digits"], GRFDConfig, preset, PRESETS, "grfd", "")
    assert (cfg.kl_reduction, cfg.rb_noise) == ("mean", 0.01)


@pytest.mark.slow
def test_one_target_step_and_served_pipeline():
    cfg = preset("digits", smoke=True, z_dim=8, vae_base=4, lenet_width=0.25)
    gen = grfd.init_generator_state(cfg, jax.random.key(0), 10)
    tgt = grfd.init_target_state(cfg, jax.random.key(1), 10)
    x = jax.random.uniform(jax.random.key(2), (8, 28, 28, 1))
    y = jnp.arange(8) % 10
    new, metrics = jax.jit(classifier_step(grfd.make_classifier(cfg)))(
        tgt, (x, y), jax.random.key(3), {})
    assert np.isfinite(float(metrics["loss"])) and int(new.step) == 1
    vae_vars = grfd.generator_variables(gen)
    tv = {"params": new.params, "batch_stats": new.batch_stats}
    logits_fn, parts = grfd.serve(cfg, grfd.build(cfg), {"vae": vae_vars, "target": tv})
    chex.assert_shape(logits_fn(x), (8, 10))
    x_u, x_r = parts["disentangle"](x)
    np.testing.assert_allclose(x_u + x_r, x, atol=1e-6)
    g = jax.grad(lambda xi: logits_fn(xi)[:, 0].sum())(x)   # differentiable end to end
    assert float(jnp.abs(g).sum()) > 0


def test_config_validation():
    with pytest.raises(ValueError, match="rb_clean_at"):
        GRFDConfig(rb_clean_at="x").validate()
    with pytest.raises(ValueError, match="alpha"):
        GRFDConfig(alpha="1,2").validate()
    with pytest.raises(ValueError, match="kl_reduction must be mean .* or sum"):
        GRFDConfig(kl_reduction="avg").validate()
    with pytest.raises(ValueError, match="rb_noise .* must be >= 0"):
        GRFDConfig(rb_noise=-1.0).validate()
    with pytest.raises(ValueError, match="unknown dataset"):
        GRFDConfig(dataset="svhn").validate()
    with pytest.raises(ValueError, match="no GRFD preset"):
        preset("svhn")


@pytest.mark.slow
@pytest.mark.parametrize("dataset,dtype", [("cifar10", "float32"), ("digits", "bfloat16")])
def test_generator_step_on_cifar_models_and_bf16(dataset, dtype):
    """The CIFAR preset's WRN + residual VAE (tiny), and bf16 compute with float32 params."""
    cfg = preset(dataset, smoke=True, z_dim=8, vae_base=4, dtype=dtype)
    state = grfd.init_generator_state(cfg, jax.random.key(0), 10)
    shape = (4, 32, 32, 3) if dataset == "cifar10" else (4, 28, 28, 1)
    x = jax.random.uniform(jax.random.key(1), shape)
    new, m = jax.jit(grfd.make_generator_step(cfg))(state, (x, jnp.arange(4)), jax.random.key(2),
                                                    {"alpha": jnp.float32(10.0)})
    assert np.isfinite(float(m["loss"])) and np.isfinite(float(m["l_rb"]))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(new.params))


def test_train_fraction_and_limits():
    from jaxdefense.config import load_datasets as load_data
    cfg = preset("digits", limit_train=400, train_fraction=0.25, limit_eval=50)
    train, test = load_data(cfg)
    assert len(train) == 100 and len(test) == 50
    again, _ = load_data(cfg)
    np.testing.assert_array_equal(train.y, again.y)


def test_l_rb_gradient_is_finite_when_an_input_gradient_is_zero():
    """A confidently classified sample's CE gradient can underflow to exactly 0; the cosine's
    norm must not turn that into a NaN gradient (it stopped a 150-epoch MNIST run)."""
    a = jnp.array([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]])
    b = jnp.array([[1.0, 0.0, 0.0], [2.0, 4.0, 4.0]])
    loss = lambda a, b: jnp.sum(grfd.cosine_per_sample(a, b))
    ga, gb = jax.grad(loss, argnums=(0, 1))(a, b)
    assert np.all(np.isfinite(ga)) and np.all(np.isfinite(gb))
    np.testing.assert_allclose(grfd.cosine_per_sample(a, b), [0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(gb[0], 0.0)
    gg = jax.grad(lambda a: loss(a, a))(jnp.zeros((2, 3)))      # both rows zero
    assert np.all(np.isfinite(gg))
