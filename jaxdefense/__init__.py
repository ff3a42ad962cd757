"""jaxdefense: adversarial defenses and honest attacks in JAX/Flax.

Folders show the architecture: `data` (sources, batches), `models`, `attacks` (all take a
`logits_fn`), `defenses` (each brings models and a loss), `training` (the one harness),
`checkpoint`, `evaluation`, `plots`. `load(workdir)` serves a trained defense. Importing it
changes nothing in the process (the command lines tune malloc: `host_memory`).
"""
from jaxdefense.defended import DefendedClassifier, load

__version__ = "0.1.0"
__all__ = ["DefendedClassifier", "load", "__version__"]
