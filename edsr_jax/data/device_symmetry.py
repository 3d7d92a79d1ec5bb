"""The 8 symmetries of the square applied on the accelerator, a batch at a time.

``blocks.make_block_dataset`` / ``make_hr_dataset`` with ``augment="device"`` hand over crops
as cut and each patch's symmetry; ``apply_symmetries`` (JAX, jit-able, inside a train step)
gives exactly the patches the host would have made (``patches.place_symmetric``). On the host
a flip or turn of 3-byte pixels is a byte-strided copy, most of a patch's cost; here it is
three selects.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from edsr_jax.data.patches import SYMMETRY_PARTS


def apply_symmetries(x: jax.Array, k: jax.Array) -> jax.Array:
    """Patch ``x[i]`` under symmetry ``k[i]`` (numbered as ``sources.symmetry``: ``k & 4`` flips
    left-right, then ``k & 3`` quarter turns counter-clockwise): ``x (N, P, P, C)`` square
    patches of any dtype, ``k (N,)`` ints in [0, 8) -> same shape and dtype. Swaps rows and
    columns where needed, then reverses rows, then columns, each a per-sample select."""
    if x.ndim != 4 or x.shape[1] != x.shape[2]:
        raise ValueError(f"apply_symmetries expects (N, P, P, C) square patches, got {x.shape}")
    table = jnp.asarray([SYMMETRY_PARTS[j] for j in range(8)], dtype=bool)  # (8, 3)
    flip_rows, flip_cols, swap = (table[k][:, j, None, None, None] for j in range(3))
    x = jnp.where(swap, jnp.swapaxes(x, 1, 2), x)
    x = jnp.where(flip_rows, x[:, ::-1], x)
    return jnp.where(flip_cols, x[:, :, ::-1], x)


__all__ = ["apply_symmetries"]
