"""GRFD (robust feature disentanglement): `config` (GRFDConfig, presets), `core` (networks,
the phase-I loss, the served pipeline target(x - G(x))), `train` (phases I-III, figures).

The core's functions are re-exported here: `from jaxdefense.defenses import grfd;
grfd.make_generator_step(cfg)`; with `Config`, `build`, `restore`, `serve` and
`train_and_evaluate`, the package is the defense's registry entry.
"""
from jaxdefense.defenses.grfd.config import PRESETS, GRFDConfig, preset
from jaxdefense.defenses.grfd.core import (GRFDNets, build, classifier_variables,
                                           cosine_per_sample, disentangle_dataset, gaussian_kl,
                                           generator_variables, init_generator_state,
                                           init_target_state, input_gradient,
                                           logits_and_input_gradients, make_classifier,
                                           make_generator_step, make_vae, restore,
                                           robustness_loss, serve)

Config = GRFDConfig


def train_and_evaluate(cfg: GRFDConfig, progress: bool = True) -> dict:
    """Phases I-III in cfg.workdir (resumable) and the closing report (`train`)."""
    from jaxdefense.defenses.grfd.train import train_and_evaluate as run
    return run(cfg, progress)
