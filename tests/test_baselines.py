"""Table 3's single-model baselines: gradient regularization and randomized smoothing."""
import json

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import jaxdefense
from jaxdefense.defenses import gradreg, smoothing


class TanhMLP(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        h = jnp.tanh(nn.Dense(5)(x.reshape(x.shape[0], -1)))
        return nn.Dense(3)(h)


def _ce_numpy(params, x, y):
    """Cross-entropy of TanhMLP per sample, float64 numpy."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    h = np.tanh(x.reshape(len(x), -1) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
    z = h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    z = z - z.max(1, keepdims=True)
    return -(z[np.arange(len(x)), y] - np.log(np.exp(z).sum(1)))


def test_gradient_penalty_matches_finite_differences():
    x = np.asarray(jax.random.uniform(jax.random.key(0), (3, 2, 2, 1)), np.float64)
    y = np.array([0, 2, 1])
    model = TanhMLP()
    params = model.init(jax.random.key(1), jnp.zeros((1, 2, 2, 1)))["params"]
    got = gradreg.gradient_penalty(lambda xi: model.apply({"params": params}, xi),
                                   jnp.asarray(x, jnp.float32), jnp.asarray(y))
    h, grads = 1e-5, np.zeros_like(x)
    for idx in np.ndindex(*x.shape[1:]):
        d = np.zeros_like(x)
        d[(slice(None), *idx)] = h
        grads[(slice(None), *idx)] = (_ce_numpy(params, x + d, y)
                                      - _ce_numpy(params, x - d, y)) / (2 * h)
    want = (grads ** 2).reshape(3, -1).sum(1)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-3)


def test_gradreg_step_differentiates_through_the_penalty():
    """The update's gradient equals d/dparams of mean(CE + lambda * penalty) (double backprop):
    checked against a finite difference along one parameter."""
    cfg = gradreg.GradRegConfig(grad_weight=10.0)
    model = TanhMLP()
    x = jax.random.uniform(jax.random.key(0), (4, 2, 2, 1))
    y = jnp.array([0, 1, 2, 1])
    params = model.init(jax.random.key(1), x)["params"]

    def total(p):
        f = lambda xi: model.apply({"params": p}, xi)
        ce = jax.vmap(lambda lo, t: -jax.nn.log_softmax(lo)[t])(f(x), y)
        return jnp.mean(ce + cfg.grad_weight * gradreg.gradient_penalty(f, x, y))

    g = jax.grad(total)(params)["Dense_0"]["kernel"][0, 0]
    bump = lambda e: jax.tree.map(lambda a: a, params) | {
        "Dense_0": {**params["Dense_0"],
                    "kernel": params["Dense_0"]["kernel"].at[0, 0].add(e)}}
    fd = (total(bump(1e-2)) - total(bump(-1e-2))) / 2e-2
    np.testing.assert_allclose(float(g), float(fd), rtol=2e-2)
    pen = gradreg.gradient_penalty(lambda xi: model.apply({"params": params}, xi), x, y)
    assert float(jnp.min(pen)) > 0


def test_clopper_pearson_matches_scipy_exact_interval():
    n = 1000
    for n_a in (0, 1, 480, 999, 1000):
        got = smoothing.lower_confidence_bound(np.array([n_a]), n, 0.001)[0]
        # the one-sided (1 - alpha) bound is the low end of the two-sided (1 - 2 alpha) one
        want = stats.binomtest(n_a, n).proportion_ci(0.998, method="exact").low
        assert got == pytest.approx(want, abs=1e-12), n_a


def test_certify_and_predict_against_hand_calculation():
    sigma, alpha, n = 0.5, 0.001, 100
    counts0 = np.array([[0, 10, 0], [5, 4, 1], [3, 3, 4]])
    counts = np.array([[0, 100, 0], [60, 40, 0], [0, 0, 100]])
    pred, radius = smoothing.certify_from_counts(counts0, counts, alpha, sigma)
    # all n draws vote cA: pA_lower = alpha^(1/n), radius sigma * Phi^-1(pA_lower)
    assert pred[0] == 1 and radius[0] == pytest.approx(sigma * stats.norm.ppf(alpha ** (1 / n)))
    assert pred[1] == -1 and radius[1] == 0             # pA_lower(60 of 100) < 1/2
    assert pred[2] == 2 and radius[2] == pytest.approx(radius[0])
    cfg = smoothing.SmoothingConfig(sigma=sigma, alpha=alpha, n=n)
    assert smoothing.max_radius(cfg) == pytest.approx(radius[0])
    # PREDICT: 60 vs 40 fails the binomial test at alpha 0.001 (p = 0.057), 100 vs 0 passes
    assert list(smoothing.predict_from_counts(np.array([[60, 40, 0], [0, 0, 100]]), alpha)) == [-1, 2]
    acc = smoothing.certified_accuracy(pred, radius, np.array([1, 0, 0]), (0.0, 0.5))
    assert acc == {"0": 1 / 3, "0.5": 1 / 3}


def test_sample_counts_follow_the_noise_distribution():
    """base: class 1 iff the first pixel is positive, so P(vote 1) = Phi(x0 / sigma)."""
    base_fn = lambda x: jax.nn.one_hot((x[:, 0, 0, 0] > 0).astype(jnp.int32), 3)
    x = jnp.zeros((3, 2, 2, 1)).at[:, 0, 0, 0].set(jnp.array([-0.25, 0.0, 0.5]))
    num = 3000                                            # not a multiple of the chunk
    counts = np.asarray(smoothing.sample_counts(base_fn, x, jax.random.key(0), 0.5, num, 256, 3))
    assert (counts.sum(1) == num).all() and (counts[:, 2] == 0).all()
    want = stats.norm.cdf(np.array([-0.25, 0.0, 0.5]) / 0.5)
    np.testing.assert_allclose(counts[:, 1] / num, want, atol=4 * np.sqrt(0.25 / num))


def test_served_smoothed_logits_are_random_per_key_and_vote_like_the_base():
    base_fn = lambda x: 5.0 * jnp.stack([-x[:, 0, 0, 0], x[:, 0, 0, 0]], -1)
    served = smoothing.make_served_logits_fn(base_fn, 0.1, draws=8)
    x = jnp.full((2, 2, 2, 1), 0.5).at[1].set(-0.5)
    a, b = served(x, jax.random.key(0)), served(x, jax.random.key(1))
    chex.assert_shape(a, (2, 2))
    assert not np.array_equal(np.asarray(a), np.asarray(b))
    chex.assert_trees_all_equal(a, served(x, jax.random.key(0)))
    assert list(np.argmax(np.asarray(a), -1)) == [1, 0]
    np.testing.assert_allclose(np.exp(np.asarray(a)).sum(-1), 1.0, rtol=1e-5)


def _printed_json(out: str) -> dict:
    """The CLI's closing JSON (progress lines come before it)."""
    return json.loads(out[out.index("{\n"):])


TINY = ["--dataset=digits", "--smoke", "--limit_train=128", "--limit_eval=64",
        "--batch_size=32", "--lenet_width=0.25", "--epochs=1", "--attack_examples=32"]


@pytest.mark.slow
def test_gradreg_cli_smoke_and_restore(tmp_path, capsys):
    from train import gradreg as cli
    w = tmp_path / "gr"
    assert cli.main([*TINY, f"--workdir={w}", "--grad_weight=1"]) == 0
    report = _printed_json(capsys.readouterr().out)
    model = jaxdefense.load(str(w))
    assert model.defense == "gradreg" and not model.stochastic
    from jaxdefense import data
    test = data.load("digits", "test").take(64)
    assert np.mean(model.predict(test.x) == test.y) == pytest.approx(report["clean_acc_full_eval"])
    lines = [json.loads(l) for l in open(w / "metrics.jsonl")]
    assert {"ce", "penalty"} <= set(lines[0]["train"])


@pytest.mark.slow
def test_smoothing_cli_smoke_certify_and_restore(tmp_path, capsys):
    from eval import certify as certify_cli
    from train import smoothing as cli
    w = tmp_path / "rs"
    assert cli.main([*TINY, f"--workdir={w}", "--sigma=0.25"]) == 0
    report = _printed_json(capsys.readouterr().out)
    cert = report["certify"]
    assert set(cert["certified_acc"]) == {"0", "0.25", "0.5", "0.75", "1"}
    accs = list(cert["certified_acc"].values())
    assert all(a >= b for a, b in zip(accs, accs[1:]))          # non-increasing in radius
    assert set(report["whitebox"]) == {"fgsm", "pgd", "worst_case"}
    model = jaxdefense.load(str(w))
    assert model.stochastic
    x = np.asarray(jax.random.uniform(jax.random.key(0), (4, 28, 28, 1)))
    chex.assert_trees_all_equal(model(x), model(x))                  # default key(0)
    assert not np.array_equal(np.asarray(model(x, jax.random.key(1))), np.asarray(model(x)))
    assert certify_cli.main([f"--workdir={w}", "--n=64", "--n0=8", "--examples=8"]) == 0
    out = json.loads((w / "certify.json").read_text())
    assert out["n"] == 64 and out["examples"] == 8 and (w / "certify.png").stat().st_size > 1000
    assert out["max_certifiable_radius"] == pytest.approx(
        0.25 * stats.norm.ppf(0.001 ** (1 / 64)))
    assert certify_cli.main([f"--workdir={tmp_path}/none"]) == 2


def test_cdvae_loss_is_grfd_without_head_and_rb(tiny_cfg):
    from jaxdefense.defenses import cdvae, grfd
    cfg = cdvae.CDVAEConfig(**{k: v for k, v in vars(tiny_cfg).items()
                               if k not in ("epsilon", "delta", "gamma", "workdir")})
    state = grfd.init_generator_state(cfg, jax.random.key(0), 1)
    assert "rectifier" not in state.params["vae"]
    x = jax.random.uniform(jax.random.key(1), (8, 28, 28, 1))
    y = jnp.arange(8) % 10
    _, m = jax.jit(grfd.make_generator_step(cfg))(state, (x, y), jax.random.key(2),
                                                  {"alpha": jnp.float32(10.0)})
    assert float(m["l_rf"]) == 0 and float(m["l_rb"]) == 0 and "acc_head" not in m
    want = 10.0 * m["l_rc"] + cfg.beta * m["l_kl"] + cfg.gamma * m["l_cl"]
    np.testing.assert_allclose(float(m["loss"]), float(want), rtol=1e-5)
    with pytest.raises(ValueError, match="with them it is GRFD"):
        cdvae.CDVAEConfig(delta=0.2).validate()


@pytest.mark.slow
def test_cdvae_cli_smoke_and_restore(tmp_path, capsys):
    from train import cdvae as cli
    w = tmp_path / "cd"
    assert cli.main([*TINY, f"--workdir={w}", "--z_dim=8", "--vae_base=4"]) == 0
    report = _printed_json(capsys.readouterr().out)
    model = jaxdefense.load(str(w))
    assert model.defense == "cdvae" and set(model.parts) == {"disentangle", "classifier"}
    from jaxdefense import data
    test = data.load("digits", "test").take(64)
    assert np.mean(model.predict(test.x) == test.y) == pytest.approx(report["clean_acc_full_eval"])
    assert (w / "figures" / "reconstructions.png").stat().st_size > 1000
