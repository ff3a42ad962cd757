"""FSR / adversarial-training configuration: one preset per dataset; every field is a flag.

    python -m train.fsr --dataset=cifar10 --arch=resnet18 --method=trades
    python -m train.fsr --dataset=cifar10 --fsr=false --method=at     # the AT baseline

The CIFAR / SVHN presets are the FSR paper's: SGD momentum 0.9, weight decay 5e-4, lr 0.1
(SVHN 0.01), x0.1 after epochs 75 and 90 of 100, batch 128, PGD-10 at 8/255 with step 2/255
(SVHN 1/255). The paper has no MNIST setting; ours is Madry et al.'s budget (eps 0.3, 40
steps of 0.01) on LeNet-5 with SGD lr 0.01 (docs/fsr.md).
"""
from __future__ import annotations

import dataclasses

from jaxdefense.config import (CLASSIFIER_PRESETS, SMOKE as CLASSIFIER_SMOKE, ExperimentConfig,
                               build_preset)
from jaxdefense.defenses.fsr.adversarial_training import METHODS
from jaxdefense.defenses.fsr.core import INFERENCE_FEATURES


@dataclasses.dataclass
class FSRConfig(ExperimentConfig):
    workdir: str = "runs/fsr"
    classifier: str = "resnet18"
    wrn_dropout: float = 0.0
    optimizer: str = "sgd"
    epochs: int = 100
    lr: float = 0.1
    lr_milestones: str = "75,90"
    weight_decay: float = 5e-4
    # adversarial training
    method: str = "at"                # at (PGD-AT) | trades | mart
    beta: float = 6.0                 # TRADES / MART regularization weight
    train_eps: float = 8 / 255        # PGD training examples: Linf budget, pixel units
    train_step_size: float = 2 / 255
    train_steps: int = 10
    # the FSR module
    fsr: bool = True                  # false: the backbone alone (the baseline)
    tau: float = 0.1                  # Gumbel-softmax temperature of the mask
    fsr_hidden: int = 64              # channels inside the separation / recalibration nets
    lambda_sep: float = 1.0           # 0: without the separation loss (ablation)
    lambda_rec: float = 1.0
    recalibrate: bool = True          # false: without recalibration, output f+ (ablation)
    inference_feature: str = "full"   # full | robust | non_robust | recalibrated (ablation)
    # closing report (the FSR paper's protocol at the training budget)
    attack_preset: str = "fsr"

    def validate(self):
        super().validate()
        from jaxdefense.attacks.presets import PRESETS
        checks = [
            (self.method in METHODS, f"method must be one of {', '.join(METHODS)}"),
            (self.inference_feature in INFERENCE_FEATURES,
             f"inference_feature must be one of {', '.join(INFERENCE_FEATURES)}"),
            (self.train_eps >= 0 and self.train_step_size >= 0 and self.train_steps >= 1,
             "train_eps and train_step_size must be >= 0, train_steps >= 1"),
            (self.tau > 0, "tau must be > 0"),
            (min(self.beta, self.lambda_sep, self.lambda_rec) >= 0, "loss weights must be >= 0"),
            (self.attack_preset in PRESETS, f"attack_preset must be one of {sorted(PRESETS)}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        return self


PRESETS = {
    "cifar10": dict(CLASSIFIER_PRESETS["cifar10"], classifier="resnet18"),
    "cifar100": dict(CLASSIFIER_PRESETS["cifar100"], classifier="resnet18"),
    "svhn_cropped": dict(dataset="svhn_cropped", classifier="resnet18", lr=0.01,
                         train_step_size=1 / 255),
    "mnist": dict(dataset="mnist", classifier="lenet5", lr=0.01, epochs=50,
                  lr_milestones="35,45", train_eps=0.3, train_step_size=0.01, train_steps=40,
                  attack_preset="fsr-mnist"),
    "digits": dict(dataset="digits", classifier="lenet5", lr=0.01, epochs=30, batch_size=64,
                   lr_milestones="20,25", train_eps=0.3, train_step_size=0.075,
                   attack_preset="fsr-mnist", eval_every=5),
}
SMOKE = dict(CLASSIFIER_SMOKE, fsr_hidden=8, train_steps=3)


def preset(dataset: str, smoke: bool = False, **overrides) -> FSRConfig:
    return build_preset(FSRConfig, PRESETS, SMOKE, "FSR ", dataset, smoke, overrides)
