"""Restore a trained workdir into a callable defended classifier (notebook-friendly).

    import jaxdefense
    model = jaxdefense.load("runs/grfd-mnist")
    logits = model(images)          # float32 NHWC in [0, 1]
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdefense.checkpoint import CheckpointError, Checkpoints, load_config
from jaxdefense.data import dataset_info


@dataclasses.dataclass
class DefendedClassifier:
    """A served defense: `logits_fn(x)` is differentiable and can be attacked directly.

    parts: named stages for inspection and for the target-only threat model, e.g.
    'classifier' (the bare classifier inside) and, for GRFD and CD-VAE, 'disentangle'
    (x -> x_u, x_r); for ARN, IDFR and APE-GAN, 'purify' (x -> purified x); for DiffPure
    'purify' (x, key -> purified x).
    stochastic: logits_fn takes (x, key) (randomized smoothing, DiffPure); calling the model
    without a key uses jax.random.key(0), so repeated calls agree.
    """
    logits_fn: Callable
    image_shape: tuple
    num_classes: int
    defense: str
    config: dict
    parts: dict
    stochastic: bool = False

    def __post_init__(self):
        self._jitted = jax.jit(self.logits_fn)

    def __call__(self, x, key=None) -> jax.Array:
        """Logits [B, classes] for images x [B, H, W, C] (or [H, W, C]): float in [0, 1], or
        uint8 in 0..255 (scaled by 1/255); non-finite values or floats outside [0, 1] raise
        ValueError. key: the noise draw of a stochastic model (default key(0))."""
        from jaxdefense.attacks.common import check_pixels
        x = jnp.asarray(x)
        if x.dtype == jnp.uint8:
            x = x.astype(jnp.float32) / 255.0
        check_pixels(x)
        x = x.astype(jnp.float32)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.image_shape):
            raise ValueError(f"expected images of shape [B, {', '.join(map(str, self.image_shape))}]"
                             f", got {tuple(x.shape)}")
        if self.stochastic:
            return self._jitted(x, jax.random.key(0) if key is None else key)
        return self._jitted(x)

    def predict(self, x, key=None) -> np.ndarray:
        return np.asarray(jnp.argmax(self(x, key), -1))


def _restore_vars(directory: str, template_state):
    state = Checkpoints(directory).restore(template_state)
    return {"params": state.params, "batch_stats": state.batch_stats}


def _load_grfd(workdir: str, config: dict, config_cls=None):
    from jaxdefense.defenses import grfd
    cfg = (config_cls or grfd.GRFDConfig)(**config)
    key = jax.random.key(0)
    gen = _restore_vars(os.path.join(workdir, "generator"), grfd.init_generator_state(cfg, key, 1))
    vae_vars = {"params": gen["params"]["vae"], "batch_stats": gen["batch_stats"]["vae"]}
    target_vars = _restore_vars(os.path.join(workdir, "target"),
                                grfd.init_target_state(cfg, key, 1))
    target = grfd.make_classifier(cfg)
    return cfg, grfd.make_defended_logits_fn(cfg, vae_vars, target_vars), {
        "disentangle": grfd.make_disentangle_fn(cfg, vae_vars),
        "classifier": lambda x: target.apply(target_vars, x, train=False)}


def _classifier_vars(workdir: str, cfg):
    from jaxdefense.defenses import standard
    return _restore_vars(os.path.join(workdir, "classifier"),
                         standard.init_state(cfg, jax.random.key(0), 1))


def _load_cdvae(workdir: str, config: dict):
    from jaxdefense.defenses.cdvae import CDVAEConfig
    return _load_grfd(workdir, config, CDVAEConfig)


def _load_standard(workdir: str, config: dict, config_cls=None):
    from jaxdefense.defenses import standard
    cfg = (config_cls or standard.StandardConfig)(**config)
    logits_fn = standard.make_logits_fn(cfg, _classifier_vars(workdir, cfg))
    return cfg, logits_fn, {"classifier": logits_fn}


def _load_gradreg(workdir: str, config: dict):
    from jaxdefense.defenses.gradreg import GradRegConfig
    return _load_standard(workdir, config, GradRegConfig)


def _load_smoothing(workdir: str, config: dict):
    from jaxdefense.defenses import smoothing
    cfg = smoothing.SmoothingConfig(**config)
    base_fn, logits_fn = smoothing.served(cfg, _classifier_vars(workdir, cfg))
    return cfg, logits_fn, {"classifier": base_fn}


def _load_fsr(workdir: str, config: dict):
    from jaxdefense.defenses.fsr import train as fsr_train
    from jaxdefense.defenses.fsr.config import FSRConfig
    cfg = FSRConfig(**config)
    variables = _restore_vars(os.path.join(workdir, "classifier"),
                              fsr_train.init_state(cfg, jax.random.key(0), 1))
    logits_fn = fsr_train.make_logits_fn(cfg, variables)
    return cfg, logits_fn, {"classifier": logits_fn}


def _load_arn(workdir: str, config: dict):
    from jaxdefense.defenses import arn, purification
    cfg = arn.ARNConfig(**config)
    target_model, target_vars = purification.restore_target(cfg)
    state = Checkpoints(os.path.join(workdir, "arn")).restore(arn.init_state(cfg, jax.random.key(0)))
    purify = arn.make_purifier(cfg, state.params, state.batch_stats)
    classifier = lambda x: target_model.apply(target_vars, x)
    return cfg, lambda x: classifier(purify(x)), {"classifier": classifier, "purify": purify}


def _load_idfr(workdir: str, config: dict):
    from jaxdefense.defenses import idfr, purification
    cfg = idfr.IDFRConfig(**config)
    target_model, target_vars = purification.restore_target(cfg)
    shape = dataset_info(cfg.dataset)["shape"]
    id_vars = _restore_vars(os.path.join(workdir, "id"), idfr.init_id_state(cfg, jax.random.key(0)))
    dim = idfr.embedding_dim(target_model, target_vars, shape)
    fr_vars = _restore_vars(os.path.join(workdir, "fr"),
                            idfr.init_fr_state(cfg, jax.random.key(0), dim))
    logits_fn, denoise = idfr.make_logits_fn(cfg, id_vars, fr_vars, target_model, target_vars)
    return cfg, logits_fn, {"classifier": lambda x: target_model.apply(target_vars, x),
                            "purify": denoise}


def _load_apegan(workdir: str, config: dict):
    from jaxdefense.defenses import apegan, purification
    cfg = apegan.APEGANConfig(**config)
    target_model, target_vars = purification.restore_target(cfg)
    nets = apegan.networks(cfg)
    state = Checkpoints(os.path.join(workdir, "apegan")).restore(
        apegan.init_state(cfg, nets, jax.random.key(0)))
    purify = apegan.make_purifier(nets, state.params, state.batch_stats)
    classifier = lambda x: target_model.apply(target_vars, x)
    return cfg, lambda x: classifier(purify(x)), {"classifier": classifier, "purify": purify}


def _load_diffpure(workdir: str, config: dict):
    from jaxdefense.defenses import diffpure, purification
    cfg = diffpure.DiffPureConfig(**config)
    target_model, target_vars = purification.restore_target(cfg)
    net = diffpure.make_score_net(cfg)
    state = Checkpoints(os.path.join(workdir, "score")).restore(
        diffpure.init_state(cfg, net, jax.random.key(0)))
    classifier = lambda x: target_model.apply(target_vars, x)
    purify, logits_fn = diffpure.make_served(cfg, net, state.ema, classifier)
    return cfg, logits_fn, {"classifier": classifier, "purify": purify}


LOADERS = {"grfd": _load_grfd, "standard": _load_standard, "fsr": _load_fsr, "arn": _load_arn,
           "idfr": _load_idfr, "gradreg": _load_gradreg, "smoothing": _load_smoothing,
           "cdvae": _load_cdvae, "apegan": _load_apegan, "diffpure": _load_diffpure}
STOCHASTIC = {"smoothing", "diffpure"}     # defenses whose logits_fn takes (x, key)


def load(workdir: str) -> DefendedClassifier:
    """Rebuild the model recorded in `workdir/config.json` from its latest checkpoints."""
    defense, config = load_config(workdir)
    if defense not in LOADERS:
        raise CheckpointError(f"{workdir}: no loader for defense {defense!r}")
    cfg, logits_fn, parts = LOADERS[defense](workdir, config)
    info = dataset_info(cfg.dataset)
    return DefendedClassifier(logits_fn=logits_fn, image_shape=info["shape"],
                              num_classes=info["num_classes"], defense=defense, config=config,
                              parts=parts, stochastic=defense in STOCHASTIC)
