"""Restore a trained workdir into a callable defended classifier (notebook-friendly).

    import jaxdefense
    model = jaxdefense.load("runs/grfd-mnist")
    logits = model(images)          # float32 NHWC in [0, 1]
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdefense import cpu_kernels
from jaxdefense.checkpoint import CheckpointError, load_config
from jaxdefense.data import dataset_info


@dataclasses.dataclass
class DefendedClassifier:
    """A served defense: `logits_fn(x)` is differentiable and can be attacked directly.

    parts: named stages for inspection and for the target-only threat model, e.g.
    'classifier' (the bare classifier inside) and, for GRFD and CD-VAE, 'disentangle'
    (x -> x_u, x_r); for ARN, IDFR and APE-GAN, 'purify' (x -> purified x); for DiffPure
    'purify' (x, key -> purified x).
    stochastic: logits_fn takes (x, key) (randomized smoothing, DiffPure); calling the model
    without a key uses jax.random.key(0), so repeated calls agree.
    """
    logits_fn: Callable
    image_shape: tuple
    num_classes: int
    defense: str
    config: dict
    parts: dict
    stochastic: bool = False

    def __post_init__(self):
        self._jitted = jax.jit(cpu_kernels.use(self.logits_fn))

    def __call__(self, x, key=None) -> jax.Array:
        """Logits [B, classes] for images x [B, H, W, C] (or [H, W, C]): float in [0, 1], or
        uint8 in 0..255 (scaled by 1/255); non-finite values or floats outside [0, 1] raise
        ValueError. key: the noise draw of a stochastic model (default key(0))."""
        from jaxdefense.attacks.common import check_pixels
        x = jnp.asarray(x)
        if x.dtype == jnp.uint8:
            x = x.astype(jnp.float32) / 255.0
        check_pixels(x)
        x = x.astype(jnp.float32)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.image_shape):
            raise ValueError(f"expected images of shape [B, {', '.join(map(str, self.image_shape))}]"
                             f", got {tuple(x.shape)}")
        if self.stochastic:
            return self._jitted(x, jax.random.key(0) if key is None else key)
        return self._jitted(x)

    def predict(self, x, key=None) -> np.ndarray:
        return np.asarray(jnp.argmax(self(x, key), -1))


def load(workdir: str) -> DefendedClassifier:
    """Rebuild the model recorded in `workdir/config.json`, through the defense registry
    (`defenses.registry`: build, restore, serve): from a training workdir's latest
    checkpoints, or from a compact model (`checkpoint.export_model`, as committed under
    `results/models/`)."""
    from jaxdefense.checkpoint import is_compact, resolved_config, served_variables
    from jaxdefense.defenses import registry
    defense, config = load_config(workdir)
    try:
        entry = registry.get(defense)
    except ValueError as e:
        raise CheckpointError(f"{workdir}: {e}") from None
    config = resolved_config(workdir, config)
    cfg = entry.Config(**config)
    nets = entry.build(cfg)
    variables = (served_variables(workdir) if is_compact(workdir)
                 else entry.restore(workdir, cfg, nets))
    logits_fn, parts = entry.serve(cfg, nets, variables)
    info = dataset_info(cfg.dataset)
    return DefendedClassifier(logits_fn=logits_fn, image_shape=info["shape"],
                              num_classes=info["num_classes"], defense=defense, config=config,
                              parts=parts, stochastic=entry.stochastic)
