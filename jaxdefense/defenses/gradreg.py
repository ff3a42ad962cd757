"""Input-gradient regularization (Ross and Doshi-Velez, AAAI 2018; "double backpropagation").

The classifier is trained on, per sample,
    CE(f(x), y) + grad_weight * || d CE(f(x), y) / d x ||_2^2
with the gradient taken in pixel units ([0, 1] images; normalization is inside the model)
by a `jax.grad` nested in the loss (as GRFD's L_rb), so the update differentiates through it.
The model itself is served: a deterministic classifier, attacked white-box.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxdefense import config
from jaxdefense.config import CLASSIFIER_PRESETS, SMOKE, ExperimentConfig
from jaxdefense.defenses import standard
from jaxdefense.training import classifier_step, input_gradient


@dataclasses.dataclass
class GradRegConfig(ExperimentConfig):
    workdir: str = "runs/gradreg"
    grad_weight: float = 100.0      # lambda on the squared L2 input-gradient norm (pixel units)

    def validate(self):
        super().validate()
        if self.grad_weight < 0:
            raise ValueError("grad_weight must be >= 0")
        return self


Config = GradRegConfig
PRESETS = CLASSIFIER_PRESETS


def preset(dataset: str, smoke: bool = False, **overrides) -> GradRegConfig:
    return config.build_preset(GradRegConfig, PRESETS, SMOKE, "gradient-regularization ",
                               dataset, smoke, overrides)


def gradient_penalty(forward, x, y):
    """Per-sample squared L2 norm of d CE / d x: [B]. forward(x) -> logits."""
    g = input_gradient(forward, x, y)
    return jnp.sum(jnp.square(g).reshape(len(x), -1), axis=1)


def make_step(cfg: GradRegConfig):
    weight = cfg.grad_weight
    return classifier_step(config.make_classifier(cfg),
                           regularizer=lambda f, x, y: weight * gradient_penalty(f, x, y))


def train_and_evaluate(cfg: GradRegConfig, progress: bool = True) -> dict:
    """Train with the penalty (resumable) into workdir/classifier, then the white-box report."""
    return standard.train_and_evaluate(cfg, progress, defense="gradreg", step=make_step(cfg))


# the registry's surface: the same network as an undefended classifier
build, restore, serve = standard.build, standard.restore, standard.serve
