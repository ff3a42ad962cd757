"""APE-GAN (Jin et al., ICASSP 2019): a generator trained to map adversarial images back
to clean ones against a discriminator, in front of a frozen target.

Seen attack: FGSM against the target (the public reimplementations: eps 0.15 on MNIST,
0.01 on CIFAR-10), crafted once per run by the purification harness. One step updates
- D: binary cross-entropy, natural images real, G(x_adv) fake;
- G: xi1 * MSE(G(x_adv), x) + xi2 * BCE(D(G(x_adv)), real), xi1 0.7 and xi2 0.3 (the
  paper; MSE per image, the mean over pixels).
Both from the step's starting parameters with one Adam (lr 2e-4, betas 0.5 / 0.999); the
reference updates D first and then G against the updated D (docs/purification.md).
Served: target(G(x)), deterministic and differentiable, so the white-box attack goes
straight through G.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jaxdefense.config import SMOKE as CLASSIFIER_SMOKE, build_preset, with_cifar100
from jaxdefense.data import dataset_info
from jaxdefense.defenses import purification
from jaxdefense.defenses.purification import PurificationConfig
from jaxdefense.models.apegan import Discriminator, Generator
from jaxdefense.training import TrainState


@dataclasses.dataclass
class APEGANConfig(PurificationConfig):
    workdir: str = "runs/apegan"
    seen_attacks: str = "fgsm"
    attack_eps: float = 0.15          # FGSM on MNIST (reference reimplementations)
    apegan_base: int = 64
    xi1: float = 0.7                  # MSE to the natural image
    xi2: float = 0.3                  # adversarial loss of G
    purifier_lr: float = 2e-4
    purifier_epochs: int = 2          # owruby/APE-GAN trains 2 epochs on MNIST
    adam_b1: float = 0.5

    def validate(self):
        super().validate()
        if self.xi1 < 0 or self.xi2 < 0 or self.apegan_base < 1:
            raise ValueError("xi1 and xi2 must be >= 0, apegan_base >= 1")
        return self


PRESETS = with_cifar100({
    "mnist": dict(dataset="mnist", epochs=20, attack_step_size=0.01, attack_steps=40),
    "digits": dict(purification.DIGITS, purifier_epochs=20),
    "cifar10": dict(dataset="cifar10", classifier="wide_resnet", augment=True,
                    attack_eps=0.01, attack_step_size=2 / 255, attack_steps=10,
                    purifier_epochs=2),
})
SMOKE = dict(CLASSIFIER_SMOKE, attack_steps=5, purifier_epochs=2, purifier_batch_size=64,
             apegan_base=8)


Config = APEGANConfig


def preset(dataset: str, smoke: bool = False, **overrides) -> APEGANConfig:
    return build_preset(APEGANConfig, PRESETS, SMOKE, "APE-GAN ", dataset, smoke, overrides)


def networks(cfg: APEGANConfig) -> dict:
    return dict(g=Generator(cfg.apegan_base), d=Discriminator(cfg.apegan_base))


def init_state(cfg: APEGANConfig, nets: dict, key) -> TrainState:
    x = jnp.zeros((1, *dataset_info(cfg.dataset)["shape"]))
    k_g, k_d = jax.random.split(key)
    inits = {"g": jax.jit(nets["g"].init)(k_g, x), "d": jax.jit(nets["d"].init)(k_d, x)}
    return TrainState.create(apply_fn=None, params={k: v["params"] for k, v in inits.items()},
                             batch_stats={k: v["batch_stats"] for k, v in inits.items()},
                             tx=optax.adam(cfg.purifier_lr, b1=cfg.adam_b1, b2=0.999))


def generator_loss(cfg: APEGANConfig, restored, x, d_fake_logits):
    """Per image [B]: xi1 * mean squared error to x + xi2 * BCE(D(G(x_adv)), real)."""
    mse = jnp.mean((restored - x) ** 2, axis=(1, 2, 3))
    return cfg.xi1 * mse + cfg.xi2 * jax.nn.softplus(-d_fake_logits)


def discriminator_loss(real_logits, fake_logits):
    """Per image [B]: BCE(D(x), real) + BCE(D(G(x_adv)), fake), D's output a logit."""
    return jax.nn.softplus(-real_logits) + jax.nn.softplus(fake_logits)


def make_purifier(nets: dict, params, batch_stats):
    """x -> G(x) in evaluation mode: [0, 1] images to [0, 1] images."""
    return lambda x: nets["g"].apply({"params": params["g"], "batch_stats": batch_stats["g"]}, x)


def train_step(cfg: APEGANConfig, nets: dict):
    channels = dataset_info(cfg.dataset)["shape"][-1]

    def step(state, batch, key, hparams):
        parts = purification.split_stack(batch[0], channels)
        x_adv = jnp.concatenate(parts[1:], 0)                 # every seen attack
        x = jnp.tile(parts[0], (len(parts) - 1, 1, 1, 1))
        params, stats = state.params, state.batch_stats

        def d_apply(p, bs, images):
            return nets["d"].apply({"params": p, "batch_stats": bs}, images, train=True,
                                   mutable=["batch_stats"])

        def g_loss(p_g):
            restored, bs_g = nets["g"].apply({"params": p_g, "batch_stats": stats["g"]}, x_adv,
                                             train=True, mutable=["batch_stats"])
            fake_logits, _ = d_apply(jax.lax.stop_gradient(params["d"]), stats["d"], restored)
            loss = generator_loss(cfg, restored, x, fake_logits)
            return loss.mean(), (restored, bs_g["batch_stats"],
                                 jnp.mean((restored - x) ** 2))

        (l_g, (restored, bs_g, mse)), g_g = jax.value_and_grad(g_loss, has_aux=True)(params["g"])
        restored = jax.lax.stop_gradient(restored)

        def d_loss(p_d):
            real, bs = d_apply(p_d, stats["d"], x)
            fake, bs = d_apply(p_d, bs["batch_stats"], restored)
            return discriminator_loss(real, fake).mean(), bs["batch_stats"]

        (l_d, bs_d), g_d = jax.value_and_grad(d_loss, has_aux=True)(params["d"])
        state = state.apply_gradients(grads={"g": g_g, "d": g_d},
                                      batch_stats={"g": bs_g, "d": bs_d})
        return state, {"g_loss": l_g, "d_loss": l_d, "mse": mse}
    return step


def train_and_evaluate(cfg: APEGANConfig, progress: bool = True) -> dict:
    """Target (or --target_workdir), FGSM examples of the training set, then APE-GAN;
    closing report with the papers' protocol (target-only) and white-box numbers."""
    ready = purification.prepare(cfg, "apegan", progress)
    if "stopped" in ready:
        return ready
    nets = networks(cfg)
    state = purification.fit_purifier(cfg, init_state(cfg, nets, jax.random.key(cfg.seed + 1)),
                                      train_step(cfg, nets), ready, "apegan", progress)
    if state is None:
        return {"stopped": "apegan"}
    return purification.closing_report(cfg, make_purifier(nets, state.params, state.batch_stats),
                                       ready, progress)


def build(cfg: APEGANConfig) -> purification.PurifierNets:
    return purification.build_nets(cfg, networks(cfg))


def restore(workdir: str, cfg: APEGANConfig, nets) -> dict:
    return purification.restore_purifier(workdir, cfg, "apegan",
                                         init_state(cfg, nets.purifier, jax.random.key(0)))


def serve(cfg: APEGANConfig, nets, variables):
    """(logits_fn, parts): target(G(x))."""
    return purification.serve_restored(make_purifier, nets, variables)
