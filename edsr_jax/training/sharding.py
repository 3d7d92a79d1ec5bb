"""Where a data-parallel run's arrays live: one mesh axis ``data`` over every device of every
process; the global batch is split along it, params and optimizer state are replicated (and
``jax.jit`` inserts the gradient all-reduce), or, for a flat state whose update is sharded
(``xla_options.StepFormulation.shard_update``), its flat arrays split along ``data``: each
device keeps 1/N of the parameters, Adam's moments and the EMA."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from edsr_jax.training.state import Flat


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh named ``data`` over every device of every process."""
    return jax.make_mesh((jax.device_count(),), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,))


class Shardings(NamedTuple):
    """Where a run's arrays live on the mesh: ``replicated`` (metrics, whole arrays on every
    device), ``batch`` (split along axis ``data``) and ``state`` (a TrainState-shaped tree of
    ``replicated``, or of ``batch`` for a sharded flat state's flat arrays)."""

    replicated: jax.sharding.NamedSharding
    batch: jax.sharding.NamedSharding
    state: Any


def make_shardings(mesh: jax.sharding.Mesh, state_shape, shard_flat: bool = False) -> Shardings:
    """The ``Shardings`` of a data-parallel run on ``mesh`` for a state shaped like ``state_shape``;
    ``shard_flat``: the arrays of its ``Flat`` parts (``training.state.to_flat``, padded to a
    multiple of the device count) split along ``data``, the rest replicated."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))

    def place(x):
        if not isinstance(x, Flat):
            return replicated
        if not shard_flat:
            return Flat(replicated, x.layout)
        if x.array.shape[0] % mesh.size:
            raise ValueError(f"a flat array of {x.array.shape[0]} elements does not split over "
                             f"{mesh.size} devices: make it with to_flat(..., multiple={mesh.size})")
        return Flat(split, x.layout)

    return Shardings(replicated, split,
                     jax.tree_util.tree_map(place, state_shape, is_leaf=lambda x: isinstance(x, Flat)))


def sharded_state(shardings: Shardings) -> bool:
    """Whether ``shardings.state`` splits any array of the state over the devices."""
    return any(s != shardings.replicated for s in jax.tree_util.tree_leaves(shardings.state))


def replicate(tree, mesh: jax.sharding.Mesh):
    """Host (NumPy) pytree -> arrays replicated over ``mesh`` (works across processes)."""
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.tree_util.tree_map(
        lambda a: jax.make_array_from_callback(np.shape(a), sharding, lambda idx: np.asarray(a)[idx]),
        tree)


def local_copy(tree):
    """Replicated global arrays -> copies on this process's first device (for evaluation)."""
    return jax.tree_util.tree_map(lambda a: a.addressable_data(0), tree)
