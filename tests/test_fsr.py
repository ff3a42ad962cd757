"""FSR module, adversarial-training losses and steps, on tiny models."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdefense.config import make_classifier
from jaxdefense.defenses.fsr import adversarial_training as advt
from jaxdefense.defenses import fsr
from jaxdefense.defenses.fsr.config import FSRConfig, preset
from jaxdefense.defenses.fsr.train import init_state, make_step



def _init(module, f):
    return module.init({"params": jax.random.key(0), "gumbel": jax.random.key(1)}, f)


def test_eval_mask_is_deterministic_sigmoid_r_over_tau():
    module = fsr.FSR(num_classes=10, tau=0.1, hidden=8)
    f = jax.random.normal(jax.random.key(2), (4, 5, 5, 16))
    v = _init(module, f)
    out1, s1 = module.apply(v, f, mutable=["intermediates"])
    out2, s2 = module.apply(v, f, mutable=["intermediates"])
    chex.assert_trees_all_equal(out1, out2)
    (mask,), (r,) = s1["intermediates"]["mask"], s1["intermediates"]["robustness_map"]
    chex.assert_trees_all_close(mask, jax.nn.sigmoid(r / 0.1), atol=1e-6)
    assert out1.shape == f.shape
    # training draws Gumbel noise: a different, still soft, mask per key
    (_, t1), (_, t2) = (module.apply(v, f, True, rngs={"gumbel": jax.random.key(k)},
                                     mutable=["intermediates", "batch_stats"]) for k in (3, 4))
    m1, m2 = t1["intermediates"]["mask"][0], t2["intermediates"]["mask"][0]
    assert not jnp.allclose(m1, m2) and float(m1.min()) >= 0 and float(m1.max()) <= 1


def test_output_is_robust_plus_recalibrated_and_ablations():
    f = jax.random.normal(jax.random.key(2), (2, 4, 4, 8))
    full = fsr.FSR(num_classes=3, hidden=4)
    v = _init(full, f)
    out, s = full.apply(v, f, mutable=["intermediates"])
    mask = s["intermediates"]["mask"][0]
    robust = fsr.FSR(num_classes=3, hidden=4, inference_feature="robust").apply(v, f)
    chex.assert_trees_all_close(robust, mask * f, atol=1e-6)
    non_robust = fsr.FSR(num_classes=3, hidden=4, inference_feature="non_robust").apply(v, f)
    chex.assert_trees_all_close(robust + non_robust, f, atol=1e-5)
    assert not jnp.allclose(out, f)   # recalibration changes the non-robust part
    no_rec = fsr.FSR(num_classes=3, hidden=4, recalibrate=False)
    v2 = _init(no_rec, f)
    assert "recalibration" not in v2["params"]
    assert jnp.allclose(no_rec.apply(v2, f), no_rec.apply(v2, f))


@pytest.mark.parametrize("arch,extra,full_shape,image", [
    ("resnet18", {}, (4, 4, 512), (32, 32, 3)),
    ("vgg16_bn", {}, (4, 4, 512), (32, 32, 3)),
    ("wide_resnet", dict(wrn_depth=34, wrn_widen=10), (8, 8, 640), (32, 32, 3)),
    ("lenet5", {}, (5, 5, 16), (28, 28, 1)),
])
@pytest.mark.slow
def test_fsr_sits_at_the_papers_place_on_every_backbone(arch, extra, full_shape, image):
    dataset = "mnist" if image[-1] == 1 else "cifar10"
    full = FSRConfig(dataset=dataset, classifier=arch, **extra)
    hook = fsr.FSR(num_classes=10, hidden=8)
    model = make_classifier(full, feature_hook=hook)
    x = jnp.zeros((2, *image))
    # full size: shapes only (jax.eval_shape computes nothing)
    v = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, x))
    _, shapes = jax.eval_shape(lambda v: model.apply(v, x, mutable=["intermediates"]), v)
    assert shapes["intermediates"]["feature_hook"]["mask"][0].shape == (2, *full_shape)
    # tiny size: a real forward, aux logits for f+, f-, f~-
    tiny = FSRConfig(dataset=dataset, classifier=arch, width=0.125, lenet_width=0.5,
                     wrn_depth=10, wrn_widen=1)
    model = make_classifier(tiny, feature_hook=hook)
    v = model.init({"params": jax.random.key(0)}, x)
    logits, s = model.apply(v, x, mutable=["intermediates"])
    assert logits.shape == (2, 10)
    for name in ("aux_pos", "aux_neg", "aux_rec"):
        assert fsr.sown(s["intermediates"], name)[0].shape == (2, 10)


def test_aux_loss_uses_top_wrong_class_and_is_zero_without_fsr():
    logits = jnp.array([[5.0, 3.0, 1.0], [0.0, 1.0, 2.0]])
    y = jnp.array([0, 2])
    assert np.array_equal(fsr.top_wrong_class(logits, y), [1, 1])
    loss, metrics = fsr.aux_loss({}, logits, y)
    assert loss.shape == (2,) and float(jnp.abs(loss).sum()) == 0 and metrics == {}
    aux = {"hook": {"aux_pos": (logits,), "aux_neg": (logits,), "aux_rec": (logits,)}}
    loss, _ = fsr.aux_loss(aux, logits, y, lambda_sep=1.0, lambda_rec=0.5)
    ce = optax.softmax_cross_entropy_with_integer_labels
    expected = ce(logits, y) + ce(logits, jnp.array([1, 1])) + 0.5 * ce(logits, y)
    chex.assert_trees_all_close(loss, expected, atol=1e-6)


def test_training_losses_reduce_to_ce_without_perturbation():
    logits = jax.random.normal(jax.random.key(0), (6, 10))
    y = jnp.arange(6)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    chex.assert_trees_all_close(advt.trades_loss(logits, logits, y, 6.0), ce, atol=1e-5)
    mart = advt.mart_loss(logits, logits, y, 6.0)     # KL term vanishes, boost term does not
    assert mart.shape == (6,) and bool(jnp.all(mart > ce))
    other = logits + jax.random.normal(jax.random.key(1), (6, 10))
    assert bool(jnp.all(advt.trades_loss(other, logits, y, 6.0) > ce))


@pytest.mark.parametrize("method", ["at", "trades", "mart"])
def test_training_examples_stay_in_the_ball(method):
    model = make_classifier(FSRConfig(dataset="mnist", classifier="lenet5", lenet_width=0.25))
    x = jax.random.uniform(jax.random.key(0), (8, 28, 28, 1))
    y = jnp.arange(8) % 10
    v = model.init(jax.random.key(1), x)
    x_adv = advt.craft(lambda xa: model.apply(v, xa), x, y, jax.random.key(2), method,
                       eps=0.1, step_size=0.03, steps=3)
    assert float(jnp.max(jnp.abs(x_adv - x))) <= 0.1 + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    assert float(jnp.max(jnp.abs(x_adv - x))) > 0.05


@pytest.mark.parametrize("method,use_fsr", [("at", True), ("trades", True), ("mart", True),
                                            ("at", False)])
def test_one_real_training_step(method, use_fsr, tmp_path):
    cfg = preset("digits", smoke=True, method=method, fsr=use_fsr, lenet_width=0.25,
                 fsr_hidden=4, batch_size=8, workdir=str(tmp_path))
    state = init_state(cfg, jax.random.key(0), steps_per_epoch=10)
    x = jax.random.uniform(jax.random.key(1), (8, 28, 28, 1))
    y = jnp.arange(8) % 10
    new, metrics = jax.jit(make_step(cfg))(state, (x, y), jax.random.key(2), {})
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert ("sep" in metrics and "rec" in metrics) == use_fsr
    assert int(new.step) == 1
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new.params)
    assert all(jax.tree.leaves(changed["feature_hook"] if use_fsr else changed))


def test_config_errors():
    with pytest.raises(ValueError, match="method must be"):
        preset("digits", method="pgd").validate()
    with pytest.raises(ValueError, match="lr_milestones"):
        preset("digits", lr_milestones="75;90").validate()
    with pytest.raises(ValueError, match="no FSR preset"):
        preset("imagenet")
    with pytest.raises(ValueError, match="classifier must be"):
        preset("cifar10", classifier="resnet50").validate()


def test_sgd_schedule_is_torch_multistep():
    from jaxdefense.training import step_decay_per_epoch
    sched = step_decay_per_epoch(0.1, (75, 90), 0.1, steps_per_epoch=10)
    assert [round(float(sched(s)), 6) for s in (0, 749, 750, 899, 900, 999)] == \
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
