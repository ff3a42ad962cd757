"""CD-VAE, class-disentangled VAE (Yang et al., NeurIPS 2021; code `kai-wen-yang/CD-VAE`).

The VAE G and a classifier are trained jointly on
    alpha * L_rc + beta * L_kl + gamma * CE(classifier(x - G(x)), y)
(reconstruction, KL, and classification of the residual x_r = x - G(x)): GRFD's phase I
without its rectification head (L_rf) and without L_rb, which is what GRFD added to CD-VAE.
Everything else is GRFD's and shared with it (`defenses/grfd`): the VAE, the loss terms, the
three phases (joint training, x_r of the training set, a fresh target on x_r), the served
pipeline target(x - G(x)) and its figures. Defaults follow the reference code's weights
(docs/table3.md).
"""
from __future__ import annotations

import dataclasses

from jaxdefense.config import build_preset
from jaxdefense.defenses.grfd.config import PRESETS as GRFD_PRESETS, SMOKE, GRFDConfig
from jaxdefense.defenses.grfd.core import build, restore, serve  # noqa: F401  (GRFD's)


@dataclasses.dataclass
class CDVAEConfig(GRFDConfig):
    workdir: str = "runs/cdvae"
    alpha: str = "10,5,1"       # reconstruction weight over thirds of training
    beta: float = 0.2           # KL
    gamma: float = 0.2          # CE of the classifier on x - G(x)
    epsilon: float = 0.0        # GRFD's rectification head: not part of CD-VAE
    delta: float = 0.0          # GRFD's L_rb: not part of CD-VAE

    def has_rectifier(self) -> bool:
        return False

    def validate(self):
        super().validate()
        if self.epsilon or self.delta:
            raise ValueError("CD-VAE has no rectification head (epsilon) and no L_rb (delta); "
                             "with them it is GRFD: python -m train.grfd")
        return self


Config = CDVAEConfig
PRESETS = GRFD_PRESETS


def preset(dataset: str, smoke: bool = False, **overrides) -> CDVAEConfig:
    return build_preset(CDVAEConfig, PRESETS, SMOKE, "CD-VAE ", dataset, smoke, overrides)


def train_and_evaluate(cfg: CDVAEConfig, progress: bool = True) -> dict:
    from jaxdefense.defenses.grfd.train import train_and_evaluate as run_phases
    return run_phases(cfg, progress, defense="cdvae")
