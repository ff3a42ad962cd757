"""Restore a trained workdir into a callable defended classifier (notebook-friendly).

    import jaxdefense
    model = jaxdefense.load("runs/grfd-mnist")
    logits = model(images)          # float32 NHWC in [0, 1]
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdefense.checkpoint import CheckpointError, Checkpoints, load_config
from jaxdefense.data import dataset_info


@dataclasses.dataclass
class DefendedClassifier:
    """A served defense: `logits_fn(x)` is differentiable and can be attacked directly."""
    logits_fn: Callable
    image_shape: tuple
    num_classes: int
    config: dict
    parts: dict  # named stages (e.g. 'disentangle' for GRFD) for inspection

    def __post_init__(self):
        self._jitted = jax.jit(self.logits_fn)

    def __call__(self, x) -> jax.Array:
        """Logits [B, classes] for images x: float32 [B, H, W, C] (or [H, W, C]) in [0, 1]."""
        x = jnp.asarray(x, jnp.float32)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.image_shape):
            raise ValueError(f"expected images of shape [B, {', '.join(map(str, self.image_shape))}]"
                             f", got {tuple(x.shape)}")
        return self._jitted(x)

    def predict(self, x) -> np.ndarray:
        return np.asarray(jnp.argmax(self(x), -1))


def _restore_vars(directory: str, template_state):
    state = Checkpoints(directory).restore(template_state)
    return {"params": state.params, "batch_stats": state.batch_stats}


def load(workdir: str) -> DefendedClassifier:
    """Rebuild the defense recorded in `workdir/config.json` from its latest checkpoints."""
    defense, config = load_config(workdir)
    if defense != "grfd":
        raise CheckpointError(f"{workdir}: no loader for defense {defense!r}")
    from jaxdefense.defenses import grfd
    from jaxdefense.defenses.grfd_config import GRFDConfig
    cfg = GRFDConfig(**config)
    for part in ("generator", "target"):
        if Checkpoints(os.path.join(workdir, part)).latest() is None:
            raise CheckpointError(f"{workdir}: phase '{part}' has no checkpoint yet; "
                                  f"finish training with python -m train.grfd --workdir={workdir}")
    key = jax.random.key(0)
    gen = _restore_vars(os.path.join(workdir, "generator"), grfd.init_generator_state(cfg, key, 1))
    vae_vars = {"params": gen["params"]["vae"], "batch_stats": gen["batch_stats"]["vae"]}
    target_vars = _restore_vars(os.path.join(workdir, "target"),
                                grfd.init_target_state(cfg, key, 1))
    info = dataset_info(cfg.dataset)
    return DefendedClassifier(
        logits_fn=grfd.make_defended_logits_fn(cfg, vae_vars, target_vars),
        image_shape=info["shape"], num_classes=info["num_classes"], config=config,
        parts={"disentangle": grfd.make_disentangle_fn(cfg, vae_vars)})
