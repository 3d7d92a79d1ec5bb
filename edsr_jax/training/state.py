"""The train state and how a fresh one is made: pure functions of a model, an optimiser and a key.

The state comes in two forms with the same values: the tree form (``params``, Adam's moments and
the EMA as trees of arrays, one per parameter array), which checkpoints, evaluation and export
read; and the flat form (``to_flat``), in which each of those trees is one array, its leaves laid
end to end (a ``Flat``). A GPU updates the flat form in one kernel instead of one per parameter
array (``xla_options.StepFormulation.flat_state``); ``to_tree`` gives the tree form back. The
flat arrays may end in zeros up to a multiple of the device count (``to_flat``'s ``multiple``),
so that they split evenly over the devices (``StepFormulation.shard_update``): each device then
stores and updates its share of the parameters, moments and EMA.
``Flat.unravel`` may scale leaves on the way out (an EDSR's ``res_scale`` folded into its blocks'
second convolutions, ``StepFormulation.fold_res_scale``): the stored parameters stay as they are.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from edsr_jax.nets.edsr import EDSR
from edsr_jax.nets.mdsr import MDSR


@struct.dataclass
class TrainState:
    """Everything a step changes. ``ema`` is None when EMA is off.

    ``nonfinite`` counts steps whose loss or gradient was not finite (their update was
    not applied); ``first_nonfinite`` is the first such step (1-based), or -1.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    ema: Any
    nonfinite: jax.Array
    first_nonfinite: jax.Array


@jax.tree_util.register_pytree_node_class
class Flat:
    """A tree of arrays of one dtype (the parameters, or a tree shaped like them: Adam's moments,
    the EMA) as one 1-D ``array`` of their total size plus ``pad`` zeros at the end, leaves in
    ``tree_leaves`` order, each stored with its axes in ``order`` (e.g. a convolution's HWIO
    kernel as OHWI, the order cuDNN reads it in; None: as it is). ``layout`` = (tree structure,
    each leaf's shape, dtype name, each leaf's order, pad) is static (part of the pytree
    structure: a jitted function compiles once per layout)."""

    def __init__(self, array, layout):
        self.array, self.layout = array, layout

    def tree_flatten(self):
        return (self.array,), self.layout

    @classmethod
    def tree_unflatten(cls, layout, children):
        return cls(children[0], layout)

    def unravel(self, factors: tuple[float, ...] | None = None):
        """The tree: each leaf cut from ``array`` in order, reshaped and its axes put back;
        with ``factors`` (one Python float per leaf, in order), each leaf times its factor,
        computed as one multiply of ``array`` by a vector made from an iota (``factor_vector``),
        which fuses into the cuts and casts that read the array anyway. Differentiable: the
        gradient of ``array`` is the leaves' gradients (times their factors) stored the same way
        (one concatenation)."""
        return _unravel(self.array, self.layout, None if factors is None else tuple(map(float, factors)))

    def astype(self, dtype) -> "Flat":
        """The same leaves in ``dtype`` (the array cast, the layout naming ``dtype``)."""
        dtype = jnp.dtype(dtype)
        return Flat(self.array.astype(dtype), self.layout[:2] + (dtype.name,) + self.layout[3:])


def _stored(x, order):
    return jnp.ravel(x if order is None else jnp.transpose(x, order))


def _runs(sizes, factors) -> dict[float, list[tuple[int, int]]]:
    """{factor: [(start, end), ...]}: the ranges of the flat array whose leaves have each factor
    other than 1 (neighbours with the same factor merged)."""
    runs: dict[float, list[tuple[int, int]]] = {}
    at = 0
    for size, f in zip(sizes, factors):
        if f != 1.0:
            mine = runs.setdefault(f, [])
            if mine and mine[-1][1] == at:
                mine[-1] = (mine[-1][0], at + size)
            else:
                mine.append((at, at + size))
        at += size
    return runs


def factor_vector(layout, factors: tuple[float, ...]) -> jax.Array:
    """``(N,)`` of the flat array's dtype (N its size with the pad, < 2**31): each leaf's factor
    (``factors``, one Python float per leaf of ``layout``, in order) over the leaf's range, 1 over
    the pad. Computed from an
    iota, not stored, so that it fuses into whatever reads it: per factor, one range is two
    comparisons; ranges of one width at one stride (an EDSR's blocks) a remainder and three;
    other ranges two comparisons each."""
    sizes = [math.prod(shape) for shape in layout[1]]
    total = sum(sizes) + layout[4]
    if total >= 2**31:
        raise ValueError(f"factor_vector indexes with int32: {total} elements is too many")
    dtype = jnp.dtype(layout[2])
    i = jax.lax.iota(jnp.int32, total)
    out = jnp.ones((), dtype)
    for f, ranges in _runs(sizes, factors).items():
        (a, b), widths = ranges[0], {end - start for start, end in ranges}
        strides = {ranges[k + 1][0] - ranges[k][0] for k in range(len(ranges) - 1)}
        if len(ranges) == 1:
            mask = (i >= a) & (i < b)
        elif len(widths) == 1 and len(strides) == 1:
            mask = (i >= a) & (i < ranges[-1][1]) & (jax.lax.rem(i - a, jnp.int32(strides.pop())) < b - a)
        else:
            mask = functools.reduce(jnp.logical_or, [(i >= start) & (i < end) for start, end in ranges])
        out = jnp.where(mask, jnp.asarray(f, dtype), out)
    return jnp.broadcast_to(out, i.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _unravel(array, layout, factors):
    treedef, shapes, _, orders, _ = layout
    if factors is not None:
        array = array * factor_vector(layout, factors)
    out, at = [], 0
    for shape, order in zip(shapes, orders):
        size = math.prod(shape)
        piece = array[at:at + size]
        if order is None:
            out.append(piece.reshape(shape))
        else:  # stored with axes ``order``: back to the leaf's own
            out.append(jnp.transpose(piece.reshape([shape[i] for i in order]), np.argsort(order)))
        at += size
    return treedef.unflatten(out)


def _unravel_fwd(array, layout, factors):
    return _unravel(array, layout, factors), None


def _unravel_bwd(layout, factors, _, cotangents):
    # One concatenation of the leaves' gradients; JAX's own transpose of the slices would pad each
    # to the whole array and sum the pads (EDSR x2, one H100: 7.3 GiB of temporaries, 38 % slower).
    # The factors as one multiply of the whole (fused into its readers); per leaf they were one
    # kernel each (EDSR x2, one H100: 64).
    leaves = layout[0].flatten_up_to(cotangents)
    pad = [jnp.zeros((layout[4],), layout[2])] if layout[4] else []
    grad = jnp.concatenate([_stored(g, o).astype(layout[2]) for g, o in zip(leaves, layout[3])] + pad)
    return (grad if factors is None else grad * factor_vector(layout, factors),)


_unravel.defvjp(_unravel_fwd, _unravel_bwd)


def ravel(tree, kernel_order: tuple[int, ...] | None = None, multiple: int = 1) -> Flat:
    """``tree`` (arrays of one dtype) as a ``Flat``: its leaves laid end to end, each leaf of
    ``len(kernel_order)`` dimensions (a convolution kernel) stored with its axes in that order,
    then zeros up to a multiple of ``multiple`` (>= 1) elements."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    orders = tuple(tuple(kernel_order) if kernel_order and x.ndim == len(kernel_order) else None
                   for x in leaves)
    dtype = jnp.dtype(leaves[0].dtype)
    pad = -sum(x.size for x in leaves) % int(multiple)
    layout = (treedef, tuple(tuple(x.shape) for x in leaves), dtype.name, orders, pad)
    zeros = [jnp.zeros((pad,), dtype)] if pad else []
    return Flat(jnp.concatenate([_stored(x, o) for x, o in zip(leaves, orders)] + zeros), layout)


def _is_flat(x) -> bool:
    return isinstance(x, Flat)


def can_flatten(params) -> bool:
    """Whether ``params`` may be kept flat: one floating dtype for every leaf."""
    dtypes = {jnp.dtype(x.dtype) for x in jax.tree_util.tree_leaves(params)}
    return len(dtypes) == 1 and jnp.issubdtype(dtypes.pop(), jnp.floating)


def to_flat(state: TrainState, kernel_order: tuple[int, ...] | None = None,
            multiple: int = 1) -> TrainState:
    """The flat form of ``state`` (module docstring): ``params``, ``ema`` and every subtree of
    ``opt_state`` shaped as ``params`` (Adam's ``mu``, ``nu``) become ``Flat``, convolution
    kernels stored with their axes in ``kernel_order``, each array padded with zeros to a
    multiple of ``multiple`` elements (``ravel``); counters stay. Unchanged when already flat, or
    when the parameters mix dtypes (``can_flatten``)."""
    if _is_flat(state.params) or not can_flatten(state.params):
        return state
    treedef = jax.tree_util.tree_structure(state.params)
    like = lambda x: jax.tree_util.tree_structure(x) == treedef  # noqa: E731
    lay = functools.partial(ravel, kernel_order=kernel_order, multiple=multiple)
    return state.replace(
        params=lay(state.params),
        opt_state=jax.tree_util.tree_map(lambda s: lay(s) if like(s) else s, state.opt_state, is_leaf=like),
        ema=None if state.ema is None else lay(state.ema))


def tree_of(x):
    """``x`` with every ``Flat`` in it unravelled (``Flat.unravel``): the tree form."""
    return jax.tree_util.tree_map(lambda v: v.unravel() if _is_flat(v) else v, x, is_leaf=_is_flat)


def to_tree(state: TrainState) -> TrainState:
    """The tree form of ``state`` (``to_flat``'s inverse; unchanged when already a tree)."""
    return state.replace(params=tree_of(state.params), opt_state=tree_of(state.opt_state),
                         ema=tree_of(state.ema))


def arrays_of(x):
    """``x`` with every ``Flat`` replaced by its 1-D array (what an optimiser updates)."""
    return jax.tree_util.tree_map(lambda v: v.array if _is_flat(v) else v, x, is_leaf=_is_flat)


def rewrap(form, arrays):
    """``arrays`` (``arrays_of(form)``'s structure) put back into ``form``'s ``Flat`` wrappers."""
    return jax.tree_util.tree_map(lambda f, a: Flat(a, f.layout) if _is_flat(f) else a,
                                  form, arrays, is_leaf=_is_flat)


def init_variables(model: EDSR | MDSR, key: jax.Array):
    """Freshly initialised variables ``{"params": ...}`` of an EDSR or an MDSR (every scale's
    branches), float32."""
    extra = (model.scales[0],) if isinstance(model, MDSR) else ()
    return model.init(key, jnp.zeros((1, 8, 8, 3), jnp.float32), *extra)


def create_train_state(model: EDSR | MDSR, tx: optax.GradientTransformation, key: jax.Array,
                       use_ema: bool, params=None, flat: bool = False,
                       kernel_order: tuple[int, ...] | None = None, multiple: int = 1) -> TrainState:
    """Fresh state; ``params`` (e.g. fine-tuning weights) replace the random init when given;
    ``flat``: in the flat form (``to_flat``, kernels stored in ``kernel_order``, arrays padded
    to a multiple of ``multiple``)."""
    if params is None:
        params = init_variables(model, key)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       ema=params if use_ema else None, nonfinite=jnp.zeros((), jnp.int32),
                       first_nonfinite=jnp.full((), -1, jnp.int32))
    return to_flat(state, kernel_order, multiple) if flat else state
