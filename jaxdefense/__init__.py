"""jaxdefense: adversarial defenses and honest attacks in JAX/Flax.

Folders show the architecture: `data` (sources, batches), `models`, `attacks` (all take a
`logits_fn`), `defenses` (each brings models and a loss), `training` (the one harness),
`checkpoint`, `evaluation`, `plots`. `load(workdir)` serves a trained defense. Importing it
keeps freed host memory mapped (`host_memory`; JAXDEFENSE_KEEP_FREED_MEMORY=0 turns that off).
"""
# First: glibc keeps XLA's per-step temporary buffers mapped (jaxdefense/host_memory.py).
from jaxdefense import host_memory  # noqa: F401
from jaxdefense.defended import DefendedClassifier, load

__version__ = "0.1.0"
__all__ = ["DefendedClassifier", "load", "__version__"]
