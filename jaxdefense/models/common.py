"""Pieces shared by the models: input normalization inside the model; every classifier
sows its penultimate embedding ('intermediates'/'embedding') and names its last layer 'head',
so a defense can work on the embedding (IDFR's feature restorer)."""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp


def normalize(x, mean: Sequence[float], std: Sequence[float], dtype=jnp.float32):
    """(x - mean) / std per channel; x is NHWC in pixel units ([0, 1] for images)."""
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return ((x - mean) / std).astype(dtype)


def embedding_and_logits(model, variables, x):
    """(penultimate embedding [B, D], logits [B, K]) of a classifier in evaluation mode."""
    logits, state = model.apply(variables, x, mutable=["intermediates"])
    return state["intermediates"]["embedding"][0].astype(jnp.float32), logits


def apply_head(model, variables, embedding):
    """The classifier's last layer on an embedding [B, D] -> logits [B, K]."""
    import flax.linen as nn
    head = nn.Dense(model.num_classes, dtype=model.dtype)
    return head.apply({"params": variables["params"]["head"]}, embedding).astype(jnp.float32)
