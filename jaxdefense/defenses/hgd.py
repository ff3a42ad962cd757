"""HGD, the high-level representation guided denoiser (Liao et al., CVPR 2018; reference
`lfz/Guided-Denoise`), in front of a frozen target.

The denoiser (`models.hgd.Denoiser`) is trained so that the target's high-level
representation of the denoised image matches that of the clean one: per image the mean
absolute difference of the target's embedding (its last hidden representation, the input
of its classification layer: `hgd_guide='embedding'`, the paper's feature-guided FGD) or of
its logits (`'logits'`, LGD), or of the pixels (`'pixel'`, the paper's pixel-guided
baseline). Training pairs are every seen attack's example and the clean image itself (the
reference's training list includes 'noop'), each with its clean image as the target.
Adam at lr 0.01 (the reference's default), divided by 10 after 60% and again after 90% of
the epochs. Served: target(x + D(x)), deterministic, attacked white-box through D.
The ARN paper's HGD_PP / HGD_DP rows: seen attacks 'pgd,pgd_targeted' / 'ddn,pgd'.
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
from jaxdefense.models.hgd import Denoiser
from jaxdefense.training import TrainState

GUIDES = ("embedding", "logits", "pixel")


@dataclasses.dataclass
class HGDConfig(PurificationConfig):
    workdir: str = "runs/hgd"
    hgd_levels: str = "32,64,128"      # channels per U-Net level (the reference: 64..256, 5)
    hgd_guide: str = "embedding"       # embedding (FGD) | logits (LGD) | pixel (PGD)
    purifier_lr: float = 0.01
    purifier_epochs: int = 100
    purifier_batch_size: int = 32

    def levels(self) -> tuple:
        try:
            out = tuple(int(c) for c in self.hgd_levels.split(","))
        except ValueError:
            out = ()
        if not out or min(out) < 1:
            raise ValueError(f"hgd_levels takes a comma list of channel counts, got "
                             f"{self.hgd_levels!r}")
        return out

    def validate(self):
        super().validate()
        self.levels()
        if self.hgd_guide not in GUIDES:
            raise ValueError(f"hgd_guide must be one of {', '.join(GUIDES)}")
        return self


PRESETS = with_cifar100({
    "mnist": dict(dataset="mnist", epochs=20),
    "digits": dict(purification.DIGITS, purifier_epochs=30),
    "cifar10": dict(dataset="cifar10", classifier="wide_resnet", augment=True,
                    attack_eps=8 / 255, attack_step_size=2 / 255, attack_steps=10,
                    hgd_levels="64,128,256,256"),
})
SMOKE = dict(CLASSIFIER_SMOKE, attack_steps=5, purifier_epochs=2, purifier_batch_size=64,
             hgd_levels="4,8")

Config = HGDConfig


def preset(dataset: str, smoke: bool = False, **overrides) -> HGDConfig:
    return build_preset(HGDConfig, PRESETS, SMOKE, "HGD ", dataset, smoke, overrides)


def networks(cfg: HGDConfig) -> Denoiser:
    return Denoiser(cfg.levels())


def init_state(cfg: HGDConfig, net: Denoiser, key, steps_per_epoch: int = 1) -> TrainState:
    x = jnp.zeros((1, *dataset_info(cfg.dataset)["shape"]))
    v = jax.jit(net.init)(key, x)
    total = cfg.purifier_epochs * steps_per_epoch
    lr = optax.piecewise_constant_schedule(
        cfg.purifier_lr, {int(0.6 * total): 0.1, int(0.9 * total): 0.1})
    return TrainState.create(apply_fn=None, params=v["params"], batch_stats=v["batch_stats"],
                             tx=optax.adam(lr))


def make_purifier(net: Denoiser, params, batch_stats):
    """x -> x + D(x) in evaluation mode."""
    return lambda x: net.apply({"params": params, "batch_stats": batch_stats}, x)


def representation(guide: str, target_apply, x):
    """The target's representation HGD matches: embedding, logits or the pixels."""
    if guide == "pixel":
        return x
    logits, inter = target_apply(x)
    return logits if guide == "logits" else inter["intermediates"]["embedding"][0]


def guided_loss(guide: str, target_apply, denoised, clean):
    """Per image [B]: mean |representation(denoised) - representation(clean)|."""
    a = representation(guide, target_apply, denoised)
    b = jax.lax.stop_gradient(representation(guide, target_apply, clean))
    return jnp.mean(jnp.abs(a - b).reshape(len(a), -1), axis=1)


def train_step(cfg: HGDConfig, net: Denoiser, target):
    channels = dataset_info(cfg.dataset)["shape"][-1]
    model, variables = target

    def target_apply(x):
        return model.apply(variables, x, mutable=["intermediates"])

    def step(state, batch, key, hparams):
        parts = purification.split_stack(batch[0], channels)
        inputs = jnp.concatenate(parts, 0)                      # clean ('noop') and attacks
        clean = jnp.tile(parts[0], (len(parts), 1, 1, 1))

        def loss_fn(params):
            denoised, bs = net.apply({"params": params, "batch_stats": state.batch_stats},
                                     inputs, train=True, mutable=["batch_stats"])
            loss = guided_loss(cfg.hgd_guide, target_apply, denoised, clean)
            return loss.mean(), (bs["batch_stats"], jnp.mean(jnp.abs(denoised - clean)))

        (loss, (bs, pixel_l1)), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads=g, batch_stats=bs), {"loss": loss,
                                                                "pixel_l1": pixel_l1}
    return step


def train_and_evaluate(cfg: HGDConfig, progress: bool = True) -> dict:
    """Target (or --target_workdir), the seen attacks on the training set, then the guided
    denoiser; closing report with the papers' protocol (target-only) and white-box numbers."""
    ready = purification.prepare(cfg, "hgd", progress)
    if "stopped" in ready:
        return ready
    net = networks(cfg)
    steps = len(ready["stack"]) // cfg.purifier_batch_size
    state = purification.fit_purifier(cfg, init_state(cfg, net, jax.random.key(cfg.seed + 1),
                                                      steps),
                                      train_step(cfg, net, ready["target"]), ready, "hgd",
                                      progress)
    if state is None:
        return {"stopped": "hgd"}
    return purification.closing_report(cfg, make_purifier(net, state.params, state.batch_stats),
                                       ready, progress)


def build(cfg: HGDConfig) -> purification.PurifierNets:
    return purification.build_nets(cfg, networks(cfg))


def restore(workdir: str, cfg: HGDConfig, nets) -> dict:
    return purification.restore_purifier(workdir, cfg, "hgd",
                                         init_state(cfg, nets.purifier, jax.random.key(0)))


def serve(cfg: HGDConfig, nets, variables):
    """(logits_fn, parts): target(x + D(x))."""
    return purification.serve_restored(make_purifier, nets, variables)
