"""Data parallelism: a 1-D mesh over all devices (of every process); batches split on axis 0.

One process: the global batch is placed across the local devices. Several processes
(`jax.distributed.initialize`): every process holds the same global numpy batch, or only its
own share of it (`shard_local_batch`), and the global array is built from process-local data.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), ("batch",))


def is_main_process() -> bool:
    """True in the process that writes files (config, metrics, results, figures)."""
    return jax.process_index() == 0


def process_share(batch_size: int) -> slice:
    """This process's rows of a global batch of `batch_size` (all rows in one process)."""
    n = jax.process_count()
    if batch_size % n:
        raise ValueError(f"batch of {batch_size} does not split over {n} processes")
    per = batch_size // n
    return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def replicate(tree):
    """Place a pytree (train state, variables) on every device."""
    return jax.device_put(tree, NamedSharding(mesh(), P()))


def _check_rows(n_rows: int):
    n = jax.device_count()
    if n_rows % n:
        raise ValueError(f"batch of {n_rows} does not split over {n} devices; "
                         f"use a batch size divisible by {n}")


def shard_batch(tree):
    """Split arrays along their first axis across devices (size must divide evenly). Every
    process passes the same global batch; each contributes only its own rows."""
    for leaf in jax.tree.leaves(tree):
        _check_rows(leaf.shape[0])
    if jax.process_count() == 1:
        return jax.device_put(tree, NamedSharding(mesh(), P("batch")))
    return jax.tree.map(lambda a: _from_local(np.asarray(a)[process_share(a.shape[0])],
                                              a.shape[0]), tree)


def shard_local_batch(tree):
    """Like `shard_batch`, from this process's share only (rows `process_share(B)` of a
    global batch of B = rows * process count): the global array spans every process."""
    if jax.process_count() == 1:
        return shard_batch(tree)
    n = jax.process_count()
    for leaf in jax.tree.leaves(tree):
        _check_rows(leaf.shape[0] * n)
    return jax.tree.map(lambda a: _from_local(np.asarray(a), a.shape[0] * n), tree)


def _from_local(local: np.ndarray, global_rows: int):
    sharding = NamedSharding(mesh(), P("batch"))
    return jax.make_array_from_process_local_data(sharding, local,
                                                  (global_rows, *local.shape[1:]))


def to_host(x) -> np.ndarray:
    """numpy copy of a (possibly multi-process, batch-sharded) array, every row."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
