"""GRFD (robust feature disentanglement): `config` (GRFDConfig, presets), `core` (networks,
the phase-I loss, the served pipeline target(x - G(x))), `train` (phases I-III, figures).

The core's functions are re-exported here: `from jaxdefense.defenses import grfd;
grfd.make_generator_step(cfg)`.
"""
from jaxdefense.defenses.grfd.config import PRESETS, GRFDConfig, preset
from jaxdefense.defenses.grfd.core import (classifier_variables, cosine_per_sample,
                                           disentangle_dataset, gaussian_kl, generator_variables,
                                           init_generator_state, init_target_state,
                                           input_gradient, logits_and_input_gradients,
                                           make_classifier,
                                           make_defended_logits_fn, make_disentangle_fn,
                                           make_generator_step, make_vae, robustness_loss)
