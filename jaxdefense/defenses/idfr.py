"""IDFR: an input denoiser (ID) and a feature restorer (FR) around a frozen target.

- ID (`models.unet.UNet`): ID(x) = clip(x + U(x)), trained with the frozen target's
  cross-entropy on ID(x_adv) and on ID(x + N(0, noise_std^2)) for `noise_rounds` draws per
  clean image (the paper; the reference code instead matches the target's features of the
  clean image and has no Gaussian augmentation).
- FR (`models.unet.FeatureRestorer`): on the target's penultimate embedding h. Each sample's
  embedding (of ID(x) or ID(x_adv)) is mixed with a random same-class partner from the
  batch, alpha * h_a + (1 - alpha) * h_b with alpha ~ U(0, 1), and the frozen head must
  classify FR(mix) correctly.
Served: head(FR(embedding(ID(x)))), all in evaluation mode: deterministic, differentiable.
Any classifier of this project works as the target: every one sows its embedding and
names its last layer 'head' (`models.common`).
"""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import optax

from jaxdefense.config import SMOKE as CLASSIFIER_SMOKE, build_preset, with_cifar100
from jaxdefense.data import dataset_info
from jaxdefense.defenses import purification
from jaxdefense.defenses.purification import PurificationConfig
from jaxdefense.models.common import apply_head, embedding_and_logits
from jaxdefense.models.unet import FeatureRestorer, UNet
from jaxdefense.training import TrainState, fit, resume_options


@dataclasses.dataclass
class IDFRConfig(PurificationConfig):
    workdir: str = "runs/idfr"
    seen_attacks: str = "pgd"
    purifier_lr: float = 1e-3         # Adam, both ID and FR (reference)
    purifier_epochs: int = 100        # ID
    fr_epochs: int = 80
    unet_base: int = 64
    fr_depth: int = 3                 # halvings of the embedding width inside FR
    noise_std: float = 0.1            # Gaussian augmentation of clean images, pixel units
    noise_rounds: int = 2

    def validate(self):
        super().validate()
        if self.noise_std < 0 or self.noise_rounds < 0 or self.fr_epochs < 1:
            raise ValueError("noise_std and noise_rounds must be >= 0, fr_epochs >= 1")
        return self


PRESETS = with_cifar100({
    "mnist": dict(dataset="mnist", epochs=20),
    "digits": dict(purification.DIGITS, purifier_epochs=20, fr_epochs=10),
    "cifar10": dict(dataset="cifar10", classifier="wide_resnet", augment=True,
                    attack_eps=8 / 255, attack_step_size=2 / 255, attack_steps=10,
                    noise_std=8 / 255),
})
SMOKE = dict(CLASSIFIER_SMOKE, attack_steps=5, purifier_epochs=2, fr_epochs=2,
             purifier_batch_size=64, unet_base=4)


Config = IDFRConfig


def preset(dataset: str, smoke: bool = False, **overrides) -> IDFRConfig:
    return build_preset(IDFRConfig, PRESETS, SMOKE, "IDFR ", dataset, smoke, overrides)


def make_unet(cfg: IDFRConfig) -> UNet:
    info = dataset_info(cfg.dataset)
    return UNet(cfg.unet_base, info["mean"], info["std"])


def init_id_state(cfg: IDFRConfig, key) -> TrainState:
    v = make_unet(cfg).init(key, jnp.zeros((1, *dataset_info(cfg.dataset)["shape"])))
    return TrainState.create(apply_fn=None, params=v["params"], batch_stats=v["batch_stats"],
                             tx=optax.adam(cfg.purifier_lr))


def init_fr_state(cfg: IDFRConfig, key, embedding_dim: int) -> TrainState:
    v = FeatureRestorer(cfg.fr_depth).init(key, jnp.zeros((1, embedding_dim)))
    return TrainState.create(apply_fn=None, params=v["params"], batch_stats=v["batch_stats"],
                             tx=optax.adam(cfg.purifier_lr))


def modules(cfg: IDFRConfig) -> dict:
    """IDFR's own networks: the image denoiser 'id' and the feature restorer 'fr'."""
    return {"id": make_unet(cfg), "fr": FeatureRestorer(cfg.fr_depth)}


def make_denoiser(cfg: IDFRConfig, id_vars):
    unet = make_unet(cfg)
    return lambda x: unet.apply(id_vars, x)


def frozen_classifier_step(module, make_inputs, classify):
    """A `training.fit` step for a module with BatchNorm whose outputs a frozen classifier
    must get right: make_inputs(batch, key) -> (inputs, labels); the loss is the mean
    cross-entropy of classify(module(inputs))."""
    def step(state, batch, key, hparams):
        inputs, labels = make_inputs(batch, key)

        def loss_fn(params):
            out, mut = module.apply({"params": params, "batch_stats": state.batch_stats}, inputs,
                                    train=True, mutable=["batch_stats"])
            logits = classify(out)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            acc = jnp.mean(jnp.argmax(logits, -1) == labels)
            return ce.mean(), (mut["batch_stats"], dict(loss=ce.mean(), acc=acc))

        grads, (bs, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads=grads, batch_stats=bs), metrics
    return step


def id_step(cfg: IDFRConfig, target_model, target_vars):
    """ID: the target's CE on ID(x_adv) and on ID of `noise_rounds` noisy copies of x."""
    channels = dataset_info(cfg.dataset)["shape"][-1]

    def make_inputs(batch, key):
        xs, y = batch
        x_nat, *advs = purification.split_stack(xs, channels)
        noisy = [jnp.clip(x_nat + cfg.noise_std * jax.random.normal(
            jax.random.fold_in(key, r), x_nat.shape), 0, 1) for r in range(cfg.noise_rounds)]
        return jnp.concatenate(advs + noisy, 0), jnp.tile(y, len(advs) + len(noisy))

    return frozen_classifier_step(make_unet(cfg), make_inputs,
                                  lambda out: target_model.apply(target_vars, out))


def same_class_partner(y, key):
    """For each i, a random j with y[j] == y[i] (possibly i itself)."""
    scores = jax.random.uniform(key, (len(y), len(y)))
    return jnp.argmax(jnp.where(y[:, None] == y[None, :], scores, -1.0), axis=1)


def fr_step(cfg: IDFRConfig, denoise, target_model, target_vars):
    """FR: the frozen head on FR(alpha h_a + (1 - alpha) h_b), same-class embeddings of ID
    outputs (clean and adversarial)."""
    channels = dataset_info(cfg.dataset)["shape"][-1]

    def make_inputs(batch, key):
        xs, y = batch
        parts = purification.split_stack(xs, channels)
        emb, _ = embedding_and_logits(target_model, target_vars, denoise(jnp.concatenate(parts)))
        emb = jax.lax.stop_gradient(emb)
        labels = jnp.tile(y, len(parts))
        k_pair, k_alpha = jax.random.split(key)
        alpha = jax.random.uniform(k_alpha, (len(labels), 1))
        return alpha * emb + (1 - alpha) * emb[same_class_partner(labels, k_pair)], labels

    return frozen_classifier_step(FeatureRestorer(cfg.fr_depth), make_inputs,
                                  lambda out: apply_head(target_model, target_vars, out))


def make_logits_fn(nets, id_vars, fr_vars, target_vars):
    """The served pipeline head(FR(embedding(ID(x)))), and ID alone."""
    denoise = lambda x: nets.purifier["id"].apply(id_vars, x)

    def logits_fn(x):
        emb, _ = embedding_and_logits(nets.target, target_vars, denoise(x))
        return apply_head(nets.target, target_vars, nets.purifier["fr"].apply(fr_vars, emb))
    return logits_fn, denoise


def embedding_dim(target_model, target_vars, image_shape) -> int:
    emb, _ = jax.eval_shape(lambda: embedding_and_logits(target_model, target_vars,
                                                          jnp.zeros((1, *image_shape))))
    return emb.shape[-1]


def train_and_evaluate(cfg: IDFRConfig, progress: bool = True) -> dict:
    """Target (or --target_workdir), seen attacks, ID, then FR; closing report with the
    papers' protocol (target-only) and white-box numbers."""
    ready = purification.prepare(cfg, "idfr", progress)
    if "stopped" in ready:
        return ready
    target_model, target_vars = ready["target"]
    stack, y = ready["stack"], ready["train"].y
    spe = len(stack) // cfg.purifier_batch_size
    common = dict(batch_size=cfg.purifier_batch_size, seed=cfg.seed, augment=cfg.augment,
                  metrics_path=ready["metrics_path"], progress=progress,
                  **resume_options(cfg))
    id_state = fit(init_id_state(cfg, jax.random.key(cfg.seed + 1)),
                   id_step(cfg, target_model, target_vars), stack, y,
                   epochs=cfg.purifier_epochs, ckpt_dir=os.path.join(cfg.workdir, "id"),
                   phase="id", **common)
    if int(id_state.step) < cfg.purifier_epochs * spe:
        return {"stopped": "id"}
    id_vars = {"params": id_state.params, "batch_stats": id_state.batch_stats}
    denoise = make_denoiser(cfg, id_vars)
    dim = embedding_dim(target_model, target_vars, ready["train"].x.shape[1:])
    fr_state = fit(init_fr_state(cfg, jax.random.key(cfg.seed + 2), dim),
                   fr_step(cfg, denoise, target_model, target_vars), stack, y,
                   epochs=cfg.fr_epochs, ckpt_dir=os.path.join(cfg.workdir, "fr"), phase="fr",
                   **common)
    if int(fr_state.step) < cfg.fr_epochs * spe:
        return {"stopped": "fr"}
    fr_vars = {"params": fr_state.params, "batch_stats": fr_state.batch_stats}
    logits_fn, _ = make_logits_fn(purification.PurifierNets(modules(cfg), target_model), id_vars,
                                  fr_vars, target_vars)
    return purification.closing_report(cfg, denoise, ready, progress, served=logits_fn)


def build(cfg: IDFRConfig) -> purification.PurifierNets:
    return purification.build_nets(cfg, modules(cfg))


def restore(workdir: str, cfg: IDFRConfig, nets) -> dict:
    from jaxdefense.checkpoint import restore_variables
    target_vars = purification.restore_target(cfg)[1]
    dim = embedding_dim(nets.target, target_vars, dataset_info(cfg.dataset)["shape"])
    return {"id": restore_variables(os.path.join(workdir, "id"),
                                    init_id_state(cfg, jax.random.key(0))),
            "fr": restore_variables(os.path.join(workdir, "fr"),
                                    init_fr_state(cfg, jax.random.key(0), dim)),
            "target": target_vars}


def serve(cfg: IDFRConfig, nets, variables):
    """(logits_fn, parts): head(FR(embedding(ID(x)))); parts 'classifier', 'purify' (ID)."""
    logits_fn, denoise = make_logits_fn(nets, variables["id"], variables["fr"],
                                        variables["target"])
    classifier = lambda x: nets.target.apply(variables["target"], x)
    return logits_fn, {"classifier": classifier, "purify": denoise}
