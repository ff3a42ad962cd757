"""FSR (feature separation and recalibration) with its adversarial-training family:
`config` (FSRConfig, presets), `core` (the FSR module and its auxiliary loss),
`adversarial_training` (PGD-AT / TRADES / MART losses and step), `train` (the run).

The core's names are re-exported here: `from jaxdefense.defenses import fsr; fsr.FSR(...)`;
with `Config`, `PRESETS`, `preset`, `build`, `restore`, `serve` and `train_and_evaluate`, the
package is the defense's registry entry.
"""
import os

from jaxdefense.defenses.fsr.config import PRESETS, FSRConfig, preset
from jaxdefense.defenses.fsr.core import (FSR, INFERENCE_FEATURES, ConvStack, aux_loss, sown,
                                          top_wrong_class)
from jaxdefense.defenses.standard import ClassifierNets, serve  # noqa: F401  (the same)

Config = FSRConfig


def build(cfg: FSRConfig) -> ClassifierNets:
    """The classifier with FSR modules inside."""
    from jaxdefense.defenses.fsr.train import make_model
    return ClassifierNets(make_model(cfg))


def restore(workdir: str, cfg: FSRConfig, nets: ClassifierNets) -> dict:
    import jax
    from jaxdefense.checkpoint import restore_variables
    from jaxdefense.defenses.fsr.train import init_state
    return restore_variables(os.path.join(workdir, "classifier"),
                             init_state(cfg, jax.random.key(0), 1))


def train_and_evaluate(cfg: FSRConfig, progress: bool = True) -> dict:
    from jaxdefense.defenses.fsr.train import train_and_evaluate as run
    return run(cfg, progress)
