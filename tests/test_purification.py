"""ARN, IDFR and the squeezing baselines: shapes, one real step each, served pipelines."""
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdefense
from jaxdefense import data
from jaxdefense.defenses import arn, idfr, preprocessing, purification
from jaxdefense.models.arn import AttackDiscriminator, Decoder, Encoder, ImageDiscriminator
from jaxdefense.models.unet import FeatureRestorer, UNet
from tests.conftest import mnist_dir


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3)])
def test_network_shapes(size, channels):
    """Shapes only (jax.eval_shape traces, computes nothing); steps below run them for real."""
    x = jax.ShapeDtypeStruct((2, size, size, channels), jnp.float32)
    z = jax.ShapeDtypeStruct((2, 8), jnp.float32)
    e = jax.ShapeDtypeStruct((2, 84), jnp.float32)

    def out_shape(module, arg):
        v = jax.eval_shape(module.init, jax.random.key(0), arg)
        return jax.tree.map(lambda a: a.shape, jax.eval_shape(module.apply, v, arg))

    assert out_shape(Encoder(base=4, z_dim=8), x) == ((2, 8), (2, 8))
    assert out_shape(Decoder(channels, size, base=4), z) == x.shape
    assert out_shape(AttackDiscriminator(2, base=4), z) == (2, 2)
    assert out_shape(ImageDiscriminator(base=4), x) == (2,)
    assert out_shape(UNet(base=4, mean=(0.5,) * channels, std=(0.25,) * channels), x) == x.shape
    assert out_shape(FeatureRestorer(depth=3), e) == (2, 84)
    with pytest.raises(ValueError, match="28x28 or 32x32"):
        Encoder(base=4, z_dim=8).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))


def _batch(cfg, n=8):
    x = jax.random.uniform(jax.random.key(0), (n, 28, 28, 1))
    y = jnp.arange(n) % 10
    advs = [jnp.clip(x + 0.1 * jnp.sign(jax.random.normal(jax.random.key(i + 1), x.shape)), 0, 1)
            for i in range(len(cfg.attacks()))]
    return jnp.concatenate([x, *advs], -1), y


def _changed(a, b):
    return jax.tree.leaves(jax.tree.map(lambda p, q: bool(jnp.any(p != q)), a, b))


@pytest.mark.slow
def test_one_real_arn_step(tmp_path):
    cfg = arn.preset("digits", smoke=True, arn_base=4, z_dim=8, workdir=str(tmp_path))
    state = arn.init_state(cfg, jax.random.key(0))
    new, metrics = jax.jit(arn.train_step(cfg))(state, _batch(cfg), jax.random.key(1), {})
    assert set(metrics) >= {"rec", "att", "nor", "gan", "d_att", "d_img"}
    assert all(np.isfinite(float(v)) for v in metrics.values())
    for net in ("encoder", "decoder", "d_att", "d_img"):
        assert all(_changed(state.params[net], new.params[net])), net


@pytest.mark.slow
def test_one_real_idfr_step_each_phase(tmp_path):
    cfg = idfr.preset("digits", smoke=True, unet_base=4, workdir=str(tmp_path))
    tcfg = purification.target_config(cfg)
    from jaxdefense.defenses import standard
    from jaxdefense import config
    tstate = standard.init_state(tcfg, jax.random.key(0), 1)
    target, tvars = config.make_classifier(tcfg), {"params": tstate.params,
                                                   "batch_stats": tstate.batch_stats}
    batch = _batch(cfg)
    s_id = idfr.init_id_state(cfg, jax.random.key(1))
    new_id, m = jax.jit(idfr.id_step(cfg, target, tvars))(s_id, batch, jax.random.key(2), {})
    assert np.isfinite(float(m["loss"])) and all(_changed(s_id.params, new_id.params))
    denoise = idfr.make_denoiser(cfg, {"params": new_id.params, "batch_stats": new_id.batch_stats})
    dim = idfr.embedding_dim(target, tvars, (28, 28, 1))
    s_fr = idfr.init_fr_state(cfg, jax.random.key(3), dim)
    new_fr, m = jax.jit(idfr.fr_step(cfg, denoise, target, tvars))(s_fr, batch,
                                                                   jax.random.key(4), {})
    assert np.isfinite(float(m["loss"])) and all(_changed(s_fr.params, new_fr.params))


def test_same_class_partner():
    y = jnp.array([0, 1, 0, 2, 1, 0])
    for k in range(5):
        p = idfr.same_class_partner(y, jax.random.key(k))
        assert np.array_equal(y[p], y)


def test_squeezers_and_bpda():
    x = jax.random.uniform(jax.random.key(0), (2, 6, 6, 3))
    q = preprocessing.bit_depth(x, 2)
    assert set(np.unique(np.round(np.asarray(q) * 3, 5))) <= {0.0, 1.0, 2.0, 3.0}
    m = np.asarray(preprocessing.median_filter(x, 3))
    padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    assert np.allclose(m[1, 2, 3, 1], np.median(padded[1, 2:5, 3:6, 1]))
    assert preprocessing.median_filter(x, 2).shape == x.shape
    w = jax.random.normal(jax.random.key(1), (6 * 6 * 3, 4))
    logits_fn = lambda xa: xa.reshape(len(xa), -1) @ w
    flat = preprocessing.preprocessed(logits_fn, "squeeze:3,2", use_bpda=False)
    adaptive = preprocessing.preprocessed(logits_fn, "squeeze:3,2")
    chex.assert_trees_all_equal(flat(x), adaptive(x))            # same forward pass
    g_flat = jax.grad(lambda xa: flat(xa)[:, 0].sum())(x)
    g_bpda = jax.grad(lambda xa: adaptive(xa)[:, 0].sum())(x)
    assert float(jnp.abs(g_flat).max()) == 0.0                   # obfuscated
    chex.assert_trees_all_close(g_bpda, jnp.broadcast_to(w[:, 0].reshape(6, 6, 3), x.shape))
    for bad in ("bits:9", "median:x", "blur:3", "squeeze:4"):
        with pytest.raises(ValueError, match="bad preprocessing"):
            preprocessing.parse(bad)


def _check_served(cfg, data_dir=None, split="test"):
    """The workdir restores (jaxdefense.load) to a deterministic pipeline whose accuracy is
    the one the run reported."""
    model = jaxdefense.load(cfg.workdir)
    test = data.load(cfg.dataset, cfg.eval_split, data_dir).take(cfg.limit_eval)
    a, b = model(test.x), model(test.x)
    chex.assert_trees_all_equal(a, b)
    saved = json.loads(open(f"{cfg.workdir}/results.json").read())
    assert float(np.mean(np.argmax(np.asarray(a), -1) == test.y)) == saved["clean_acc_full_eval"]
    assert model.parts["purify"](test.x[:4]).shape == (4, *test.x.shape[1:])


@pytest.mark.slow
def test_idfr_smoke_run_serves_a_deterministic_restorable_pipeline(tmp_path):
    module, defense, extra = idfr, "idfr", dict(unet_base=4)
    cfg = module.preset("digits", smoke=True, limit_train=128, limit_eval=64, batch_size=32,
                        purifier_batch_size=32, attack_examples=32, attack_steps=3,
                        lenet_width=0.25, epochs=1, purifier_epochs=1,
                        workdir=str(tmp_path / defense), **extra)
    report = module.train_and_evaluate(cfg, progress=False)
    assert set(report["whitebox"]) == {"fgsm", "pgd", "worst_case"}
    assert set(report["target_only"]) == {"fgsm", "pgd", "worst_case"}
    _check_served(cfg)


def test_target_workdir_must_be_a_standard_run(tmp_path):
    from jaxdefense.checkpoint import save_config
    save_config(str(tmp_path / "g"), "grfd", {})
    cfg = arn.preset("digits", smoke=True, target_workdir=str(tmp_path / "g"),
                     workdir=str(tmp_path / "w"))
    with pytest.raises(Exception, match="train.standard run"):
        purification.target_config(cfg)


@pytest.mark.slow
def test_arn_on_real_mnist_reduces_distance_to_clean(tmp_path):
    """A short real-data run: ARN brings PGD examples (crafted against the target) closer to
    the clean images (measured: L2 5.07 before, 4.03 after); the run restores to the
    pipeline it reported on."""
    cfg = arn.preset("mnist", data_dir=mnist_dir(), train_split="test[:2000]",
                     eval_split="test[9000:9100]", epochs=2, lenet_width=0.5, batch_size=64,
                     seen_attacks="pgd", attack_steps=5, attack_step_size=0.075, arn_base=8,
                     z_dim=32, purifier_lr=2e-3, purifier_batch_size=64, purifier_epochs=8,
                     attack_examples=100, workdir=str(tmp_path / "arn"))
    report = arn.train_and_evaluate(cfg, progress=False)
    print(json.dumps(report))
    assert report["target_clean_acc_full_eval"] > 0.6
    d = report["l2_to_clean_on_target_pgd"]
    assert d["purified_adv"] < d["adv"]
    assert set(report["whitebox"]) == set(report["target_only"]) == {"fgsm", "pgd", "worst_case"}
    _check_served(cfg, mnist_dir())
