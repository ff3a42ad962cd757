"""FSR (feature separation and recalibration) with its adversarial-training family:
`config` (FSRConfig, presets), `core` (the FSR module and its auxiliary loss),
`adversarial_training` (PGD-AT / TRADES / MART losses and step), `train` (the run).

The core's names are re-exported here: `from jaxdefense.defenses import fsr; fsr.FSR(...)`.
"""
from jaxdefense.defenses.fsr.core import (FSR, INFERENCE_FEATURES, ConvStack, aux_loss, sown,
                                          top_wrong_class)
