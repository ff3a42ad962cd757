"""Defense against occlusion attacks (DOA; Wu, Tong and Vorobeychik, ICLR 2020): adversarial
training on the rectangular occlusion attack (`attacks.roa`).

Every training batch is replaced by its ROA examples (no clean images in the loss), crafted
against the model in evaluation mode at the current parameters: the window found by the
gradient-based search, then PGD inside it (the reference's MNIST recipe
`mnist_roa.py --ROAwidth 7 --ROAheight 7`: 7 x 7, stride 1, 20 candidates, 30 steps of 0.05,
SGD at lr 0.01 without momentum, 30 epochs from scratch). The model is served as it is:
a deterministic classifier, attacked white-box ('DOA 7x7' in ARN's tables).
Differences from the reference: the classifier is the config's (LeNet-5 on MNIST by
default, advertorch's in ARN's tables; the reference trains its own small CNN), and
training runs in training mode (the reference's
MNIST script leaves the model in evaluation mode after the first attack, so its BatchNorm
never updates; LeNet-5 has none).
"""
from __future__ import annotations

import dataclasses

import jax

from jaxdefense import config
from jaxdefense.attacks.roa import roa
from jaxdefense.cpu_kernels import attacked
from jaxdefense.config import CLASSIFIER_PRESETS, SMOKE, ExperimentConfig
from jaxdefense.defenses import standard
from jaxdefense.training import classifier_step


@dataclasses.dataclass
class DOAConfig(ExperimentConfig):
    workdir: str = "runs/doa"
    roa_width: int = 7              # the occluding rectangle, pixels
    roa_height: int = 7
    roa_stride: int = 1             # window positions searched
    roa_candidates: int = 20        # best-gradient windows tried with a grey fill
    roa_steps: int = 30             # PGD steps inside the window
    roa_step_size: float = 0.05     # pixel units ([0, 1] images)

    def validate(self):
        super().validate()
        from jaxdefense.data import dataset_info
        h, w, _ = dataset_info(self.dataset)["shape"]
        checks = [
            (1 <= self.roa_height <= h and 1 <= self.roa_width <= w and self.roa_stride >= 1,
             f"the roa_height x roa_width rectangle must fit the {h} x {w} images, "
             f"roa_stride >= 1"),
            (self.roa_candidates >= 1 and self.roa_steps >= 0 and self.roa_step_size >= 0,
             "roa_candidates must be >= 1, roa_steps and roa_step_size >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        return self


Config = DOAConfig
_MNIST = dict(optimizer="sgd", lr=0.01, momentum=0.0, weight_decay=0.0, epochs=30,
              lr_milestones="30")
PRESETS = {
    "mnist": dict(CLASSIFIER_PRESETS["mnist"], **_MNIST),
    "digits": dict(CLASSIFIER_PRESETS["digits"], **_MNIST),
    # CIFAR: the classifier's own schedule with 7 x 7 windows (the reference fine-tunes a
    # clean ResNet-110 there, SGD with momentum 0.9)
    "cifar10": dict(CLASSIFIER_PRESETS["cifar10"]),
    "cifar100": dict(CLASSIFIER_PRESETS["cifar100"]),
}


def preset(dataset: str, smoke: bool = False, **overrides) -> DOAConfig:
    return config.build_preset(DOAConfig, PRESETS, dict(SMOKE, roa_steps=3, roa_candidates=4),
                               "DOA ", dataset, smoke, overrides)


def make_step(cfg: DOAConfig):
    """The classifier step on ROA examples crafted at the step's parameters."""
    model = config.make_classifier(cfg)
    base = classifier_step(model)
    params = dict(width=cfg.roa_width, height=cfg.roa_height, stride=cfg.roa_stride,
                  candidates=cfg.roa_candidates, steps=cfg.roa_steps,
                  step_size=cfg.roa_step_size)

    def step(state, batch, key, hparams):
        x, y = batch
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        x_adv = roa(attacked(lambda xi: model.apply(variables, xi, train=False)), x, y,
                    jax.random.fold_in(key, 7), **params)
        return base(state, (jax.lax.stop_gradient(x_adv), y), key, hparams)
    return step


def train_and_evaluate(cfg: DOAConfig, progress: bool = True) -> dict:
    """Train on ROA examples (resumable) into workdir/classifier, then the white-box report."""
    return standard.train_and_evaluate(cfg, progress, defense="doa", step=make_step(cfg))


# the registry's surface: the same network as an undefended classifier
build, restore, serve = standard.build, standard.restore, standard.serve
