"""FSR (feature separation and recalibration) with its adversarial-training family:
`config` (FSRConfig, presets), `core` (the FSR module and its auxiliary loss),
`adversarial_training` (PGD-AT / TRADES / MART losses and step), `train` (the run).

The core's names are re-exported here: `from jaxdefense.defenses import fsr; fsr.FSR(...)`;
with `Config`, `PRESETS`, `preset`, `build`, `restore`, `serve` and `train_and_evaluate`, the
package is the defense's registry entry.
"""
import dataclasses
import os

import flax.linen as nn

from jaxdefense.defenses.fsr.config import PRESETS, FSRConfig, preset
from jaxdefense.defenses.fsr.core import (FSR, INFERENCE_FEATURES, ConvStack, aux_loss, sown,
                                          top_wrong_class)

Config = FSRConfig


@dataclasses.dataclass(frozen=True)
class FSRNets:
    """The classifier with FSR modules inside."""
    classifier: nn.Module


def build(cfg: FSRConfig) -> FSRNets:
    from jaxdefense.defenses.fsr.train import make_model
    return FSRNets(make_model(cfg))


def restore(workdir: str, cfg: FSRConfig, nets: FSRNets) -> dict:
    import jax
    from jaxdefense.checkpoint import restore_variables
    from jaxdefense.defenses.fsr.train import init_state
    return restore_variables(os.path.join(workdir, "classifier"),
                             init_state(cfg, jax.random.key(0), 1))


def serve(cfg: FSRConfig, nets: FSRNets, variables):
    """(logits_fn, parts): the whole network (FSR included) in evaluation mode."""
    logits_fn = lambda x: nets.classifier.apply(variables, x, train=False)
    return logits_fn, {"classifier": logits_fn}


def train_and_evaluate(cfg: FSRConfig, progress: bool = True) -> dict:
    from jaxdefense.defenses.fsr.train import train_and_evaluate as run
    return run(cfg, progress)
