"""Where a data-parallel run's arrays live: one mesh axis ``data`` over every device of every
process; the global batch is split along it, params and optimizer state are replicated (and
``jax.jit`` inserts the gradient all-reduce)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh named ``data`` over every device of every process."""
    return jax.make_mesh((jax.device_count(),), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,))


class Shardings(NamedTuple):
    """Where a run's arrays live on the mesh: ``replicated`` (metrics, whole arrays on every
    device), ``batch`` (split along axis ``data``) and ``state`` (a TrainState-shaped tree of
    ``replicated``)."""

    replicated: jax.sharding.NamedSharding
    batch: jax.sharding.NamedSharding
    state: Any


def make_shardings(mesh: jax.sharding.Mesh, state_shape) -> Shardings:
    """The ``Shardings`` of a data-parallel run on ``mesh`` for a state shaped like ``state_shape``."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return Shardings(replicated, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")),
                     jax.tree_util.tree_map(lambda _: replicated, state_shape))


def replicate(tree, mesh: jax.sharding.Mesh):
    """Host (NumPy) pytree -> arrays replicated over ``mesh`` (works across processes)."""
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.tree_util.tree_map(
        lambda a: jax.make_array_from_callback(np.shape(a), sharding, lambda idx: np.asarray(a)[idx]),
        tree)


def local_copy(tree):
    """Replicated global arrays -> copies on this process's first device (for evaluation)."""
    return jax.tree_util.tree_map(lambda a: a.addressable_data(0), tree)
