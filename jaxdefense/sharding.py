"""Data parallelism: a 1-D mesh over all local devices; batches split along axis 0."""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), ("batch",))


def replicate(tree):
    """Place a pytree (train state, variables) on every device."""
    return jax.device_put(tree, NamedSharding(mesh(), P()))


def shard_batch(tree):
    """Split arrays along their first axis across devices (size must divide evenly)."""
    n = jax.device_count()
    for leaf in jax.tree.leaves(tree):
        if leaf.shape[0] % n:
            raise ValueError(f"batch of {leaf.shape[0]} does not split over {n} devices; "
                             f"use a batch size divisible by {n}")
    return jax.device_put(tree, NamedSharding(mesh(), P("batch")))
