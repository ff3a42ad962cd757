"""APE-GAN and DiffPure: the VP-SDE against its closed form, the reverse process with a
known score, the losses by hand, gradients through the purifiers, CLI runs and restores."""
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdefense
from jaxdefense import data, robustness
from jaxdefense.defenses import apegan, diffpure, registry
from jaxdefense.models.apegan import Discriminator, Generator
from jaxdefense.models.diffusion import ScoreUNet
from tests.test_registry import check_round_trip

SDE = diffpure.DiffPureConfig()          # beta 0.1 .. 20, the paper's


def test_forward_diffusion_marginal_matches_closed_form():
    """Euler-Maruyama on dx = -beta/2 x dt + sqrt(beta) dw from x0 = 0.7 to t = 0.4."""
    n, steps, t_end = 40000, 400, 0.4
    dt = t_end / steps

    def body(x, inputs):
        t, k = inputs
        b = diffpure.beta(SDE, t)
        return x - 0.5 * b * x * dt + jnp.sqrt(b * dt) * jax.random.normal(k, x.shape), None
    x, _ = jax.lax.scan(body, jnp.full((n,), 0.7),
                        (dt * jnp.arange(steps), jax.random.split(jax.random.key(0), steps)))
    m, s = diffpure.marginal(SDE, t_end)
    assert float(jnp.mean(x)) == pytest.approx(0.7 * float(m), abs=0.01)
    assert float(jnp.std(x)) == pytest.approx(float(s), abs=0.01)
    # and diffuse() draws from that marginal
    xt = diffpure.diffuse(SDE, jnp.full((n, 1, 1, 1), 0.7), jnp.full((n,), t_end),
                          jax.random.normal(jax.random.key(1), (n, 1, 1, 1)))
    assert float(jnp.mean(xt)) == pytest.approx(0.7 * float(m), abs=0.01)
    assert float(jnp.std(xt)) == pytest.approx(float(s), abs=0.01)


def _gaussian_eps_fn(cfg, mu, sigma):
    """The exact noise prediction when the data are N(mu, sigma^2) per pixel."""
    def eps_fn(x, t):
        m, s = diffpure.marginal(cfg, t[:, None, None, None])
        var = m ** 2 * sigma ** 2 + s ** 2
        return s * (x - m * mu) / var               # eps = -s * score
    return eps_fn


@pytest.mark.parametrize("reverse", ["sde", "ddpm"])
def test_reverse_process_with_exact_score_returns_to_the_data(reverse):
    cfg = diffpure.DiffPureConfig(reverse=reverse)
    mu, sigma, n, t_start = 0.3, 0.2, 20000, 0.5
    eps_fn = _gaussian_eps_fn(cfg, mu, sigma)
    x0 = mu + sigma * jax.random.normal(jax.random.key(0), (n, 1, 1, 1))
    xt = diffpure.diffuse(cfg, x0, jnp.full((n,), t_start),
                          jax.random.normal(jax.random.key(1), x0.shape))
    out = diffpure.reverse_chain(cfg, eps_fn, xt, jax.random.key(2), t_start, 200)
    assert float(jnp.mean(out)) == pytest.approx(mu, abs=0.01)
    assert float(jnp.std(out)) == pytest.approx(sigma, abs=0.015)
    # one noiseless step from a far point moves it toward the data mean
    far = jnp.full((1, 1, 1, 1), 3.0)
    t = jnp.float32(0.3)
    score = -eps_fn(far, jnp.full((1,), t)) / diffpure.marginal(cfg, t)[1]
    moved = diffpure.reverse_step(cfg, far, t, 0.01, score, jnp.zeros_like(far), True)
    assert mu < float(moved[0, 0, 0, 0]) < 3.0


def test_apegan_losses_by_hand():
    cfg = apegan.APEGANConfig()
    x = jnp.zeros((2, 1, 2, 1))
    restored = jnp.array([0.5, 0.1, 0.0, 0.4]).reshape(2, 1, 2, 1)
    d_fake = jnp.array([0.0, 2.0])
    got = apegan.generator_loss(cfg, restored, x, d_fake)
    mse = np.array([(0.25 + 0.01) / 2, 0.16 / 2])
    bce_real = np.array([np.log(2.0), np.log(1 + np.exp(-2.0))])   # -log sigmoid(logit)
    np.testing.assert_allclose(got, 0.7 * mse + 0.3 * bce_real, rtol=1e-6)
    d = apegan.discriminator_loss(jnp.array([1.0]), jnp.array([-0.5]))
    want = -np.log(1 / (1 + np.exp(-1.0))) - np.log(1 - 1 / (1 + np.exp(0.5)))
    np.testing.assert_allclose(d, [want], rtol=1e-6)


def _random_variables(module, *args, seed=0):
    """Variables of `module` drawn with numpy (N(0, 0.1^2)): no XLA compile of the random
    initializers, which takes tens of seconds on 2 cores; nothing starts at zero."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(module.init, jax.random.key(0), *args)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.1, s.shape), s.dtype), shapes)


@pytest.mark.slow
def test_network_shapes_and_gradients_through_the_purifiers():
    x = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1))
    g = Generator(base=4)
    gv = _random_variables(g, x)
    gv["batch_stats"] = jax.tree.map(jnp.abs, gv["batch_stats"])     # variances > 0
    assert jax.eval_shape(g.apply, gv, x).shape == x.shape
    dv = jax.eval_shape(Discriminator(base=4).init, jax.random.key(2), x)
    assert jax.eval_shape(Discriminator(base=4).apply, dv, x).shape == (2,)
    for shape, mult in (((1, 32, 32, 3), (1, 2, 2, 2)), ((1, 28, 28, 1), (1, 2, 2))):
        v = jax.eval_shape(ScoreUNet(8, mult, 1, (16, 7)).init, jax.random.key(3),
                           jnp.zeros(shape), jnp.ones((1,)))
        assert jax.eval_shape(ScoreUNet(8, mult, 1, (16, 7)).apply, v, jnp.zeros(shape),
                              jnp.ones((1,))).shape == shape
    w = jax.random.normal(jax.random.key(4), x.shape)
    grad_g = jax.jit(jax.grad(lambda xi: jnp.sum(w * g.apply(gv, xi))))(x)
    x, w = x[:, :8, :8], w[:, :8, :8]       # the purifier is size-agnostic: small and quick
    net = ScoreUNet(base=4, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                    dropout=0.0)
    params = _random_variables(net, x, jnp.ones((len(x),)))["params"]
    cfg = diffpure.DiffPureConfig(reverse_steps=5, remat=True)
    eps_fn = diffpure.eps_fn_of(net, params)
    f = lambda c: jax.jit(jax.grad(lambda xi: jnp.sum(w * diffpure.purify(
        c, eps_fn, xi, jax.random.key(6)))))(x)
    grad_d = f(cfg)
    for grad in (grad_g, grad_d):
        chex.assert_tree_all_finite(grad)
        assert float(jnp.mean(jnp.abs(grad) > 0)) > 0.5
    # rematerialization changes memory, not the gradient
    np.testing.assert_allclose(grad_d, f(diffpure.DiffPureConfig(reverse_steps=5, remat=False)),
                               rtol=1e-4, atol=1e-6)
    purify = jax.jit(lambda xi, k: diffpure.purify(cfg, eps_fn, xi, k))
    out = purify(x, jax.random.key(7))
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert not np.array_equal(out, purify(x, jax.random.key(8)))


@pytest.mark.slow
def test_one_real_step_each():
    cfg = diffpure.preset("digits", smoke=True)
    net = diffpure.make_score_net(cfg)
    x = jax.random.uniform(jax.random.key(1), (8, 28, 28, 1))
    params = _random_variables(net, x, jnp.ones(8))["params"]
    state = diffpure.init_state(cfg, net, None, params)
    step = jax.jit(diffpure.train_step(cfg, net))
    batch = (x, jnp.zeros(8, jnp.int32))
    first, _ = step(state, batch, jax.random.key(2), {})     # warmup starts at lr 0
    new, m = step(first, batch, jax.random.key(3), {})
    assert np.isfinite(float(m["loss"]))
    changed = jax.tree_util.tree_flatten_with_path(jax.tree.map(
        lambda a, b: bool(jnp.any(a != b)), state.params, new.params))[0]
    kernels = [ok for path, ok in changed if "kernel" in jax.tree_util.keystr(path)]
    assert len(kernels) > 20 and all(kernels)     # every conv / dense layer learns
    # the served weights: EMA, decay * previous EMA + (1 - decay) * the new params
    chex.assert_trees_all_close(new.ema, jax.tree.map(
        lambda e, p: cfg.ema_decay * e + (1 - cfg.ema_decay) * p, first.ema, new.params),
        rtol=1e-5, atol=1e-7)

    acfg = apegan.preset("digits", smoke=True, apegan_base=4)
    nets = apegan.networks(acfg)
    s = apegan.init_state(acfg, nets, jax.random.key(0))
    batch = (jnp.concatenate([x, jnp.clip(x + 0.1, 0, 1)], -1), jnp.zeros(8, jnp.int32))
    new, m = jax.jit(apegan.train_step(acfg, nets))(s, batch, jax.random.key(1), {})
    assert set(m) == {"g_loss", "d_loss", "mse"} and all(np.isfinite(float(v)) for v in m.values())
    for net_name in ("g", "d"):
        assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                                                s.params[net_name], new.params[net_name])))


def test_robust_only_if_right_on_every_draw():
    """A model right with probability 1/2 per draw scores about 1/2**draws."""
    x = jnp.zeros((1024, 2, 2, 1))
    y = np.zeros(1024, np.int32)

    def served(xb, key):
        coin = jax.random.bernoulli(key, 0.5, (xb.shape[0],))
        return jnp.stack([coin.astype(jnp.float32), 0.5 * jnp.ones(xb.shape[0])], -1)
    for draws, want in ((1, 0.5), (3, 0.125)):
        ok, _ = robustness.correct_under(served, True, None, lambda f, xb, yb, k: xb, x, y,
                                         jax.random.key(0), eval_draws=draws)
        assert ok.mean() == pytest.approx(want, abs=0.04)


TINY = ["--dataset=digits", "--smoke", "--limit_train=128", "--limit_eval=64",
        "--batch_size=32", "--purifier_batch_size=32", "--lenet_width=0.25", "--epochs=1",
        "--attack_examples=16"]


@pytest.mark.slow
def test_diffpure_cli_smoke_restores_a_random_served_model(tmp_path, capsys):
    """Slow (about 3 minutes: every attack compiles through the reverse chain)."""
    from train import diffpure as diffpure_cli
    test = data.load("digits", "test").take(64)
    d = tmp_path / "dp"
    assert diffpure_cli.main([*TINY, f"--workdir={d}", "--reverse_steps=2",
                              f"--target_workdir={tmp_path}"]) == 2     # not a workdir
    capsys.readouterr()
    assert diffpure_cli.main([*TINY, f"--workdir={d}", "--reverse_steps=2"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{\n"):])
    assert report["eval_draws"] == 2 and report["attacks"]["pgd"]["eot_samples"] == 2
    assert report["attack_cost"]["score_evals_per_gradient"] == 6
    assert report["attack_cost"]["compiled_temp_bytes"] > 0
    model = jaxdefense.load(str(d))
    assert model.defense == "diffpure" and model.stochastic
    chex.assert_trees_all_equal(model(test.x[:4]), model(test.x[:4]))       # default key(0)
    assert not np.array_equal(np.asarray(model(test.x[:4], jax.random.key(3))),
                              np.asarray(model(test.x[:4])))
    for name in ("samples.png", "purified.png"):
        assert (d / name).stat().st_size > 1000
    check_round_trip("diffpure", registry.get("diffpure").Config(**model.config))



@pytest.mark.slow
def test_apegan_cli_smoke_restores_a_deterministic_served_model(tmp_path, capsys):
    from train import apegan as apegan_cli
    test = data.load("digits", "test").take(64)
    a = tmp_path / "ape"
    assert apegan_cli.main([*TINY, f"--workdir={a}", "--apegan_base=4"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{\n"):])
    assert set(report["whitebox"]) == {"fgsm", "pgd", "worst_case"}
    assert report["attacks"]["fgsm"]["eps"] == pytest.approx(0.2)
    model = jaxdefense.load(str(a))
    assert model.defense == "apegan" and not model.stochastic and "purify" in model.parts
    assert np.mean(model.predict(test.x) == test.y) == pytest.approx(report["clean_acc_full_eval"])
    assert (a / "purified.png").stat().st_size > 1000
    check_round_trip("apegan", registry.get("apegan").Config(**model.config))
