"""The train step: one optimiser step as a pure function, its jit over the mesh, and the
check of the non-finite steps it counted.

``train_step`` guards the update: a non-finite loss or gradient leaves params, optimizer
state and EMA unchanged and is counted in the state; ``check_finite`` reads that count on
the host and stops the run under ``train.nan_policy = "stop"`` (``NonFiniteError``).

The batch comes in one of three forms (``training.datasets.train_dataset``): LR/HR pairs made
on the host, ``{"lr", "hr"}``; the same with ``"symmetry"`` (the block loader leaves each
patch's flip or turn to the step); or HR crops with their global patch indices, ``{"hr",
"index", "symmetry"}``, from which ``DeviceDamage`` makes the LR inside the same program.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from edsr_jax.data.device_symmetry import apply_symmetries
from edsr_jax.degradation.device import degrade_batch, validate_spec
from edsr_jax.nets import xla_options
from edsr_jax.nets.edsr import EDSR, fold_res_scale, res_scale_factors
from edsr_jax.nets.mdsr import MDSR
from edsr_jax.training.loss import pixel_loss
from edsr_jax.training.sharding import Shardings, make_shardings, sharded_state
from edsr_jax.training.state import Flat, TrainState, arrays_of, factor_vector, rewrap


DAMAGE_STREAM = 0x4C52  # folded into the run's seed: the damage's keys share nothing with init's


@dataclasses.dataclass(frozen=True)
class DeviceDamage:
    """The LR batch made on the device: ``spec`` (a ``degrade`` spec whose total factor is
    ``scale``) run by ``degrade_batch`` with patch ``g``'s key ``fold_in(fold_in(fold_in(
    key(seed), DAMAGE_STREAM), g >> 32), g & 0xFFFFFFFF)``: a pure function of the run's seed
    and the patch's global index, so neither the batch a patch lands in nor the number of
    devices or processes changes its damage, and a resumed run makes the same LR."""

    spec: str
    scale: int
    seed: int

    def __post_init__(self):
        validate_spec(self.spec, self.scale)  # SpecError naming an operator, before any compile

    def __call__(self, batch: dict) -> tuple[jax.Array, jax.Array]:
        """``(lr (B, p, p, 3), hr (B, p*s, p*s, 3))`` uint8 from ``batch = {"hr": (B, p*s, p*s, 3)
        uint8, "index": (B, 2) uint32 words of the global patch index, ["symmetry": (B,) int]}``:
        each HR crop under its symmetry, then degraded."""
        hr = batch["hr"]
        if "symmetry" in batch:
            hr = apply_symmetries(hr, batch["symmetry"])
        base = jax.random.fold_in(jax.random.key(self.seed), DAMAGE_STREAM)
        keys = jax.vmap(lambda w: jax.random.fold_in(jax.random.fold_in(base, w[0]), w[1]))(batch["index"])
        return degrade_batch(self.spec, hr, keys, self.scale), hr


def batch_pairs(batch: dict, damage: DeviceDamage | None = None) -> tuple[jax.Array, jax.Array]:
    """``(lr, hr)`` uint8 of a training batch in any of its forms (module docstring): made by
    ``damage`` from HR crops, or the host's pairs, each pair under its ``"symmetry"`` if given."""
    if damage is not None:
        return damage(batch)
    lr, hr = batch["lr"], batch["hr"]
    if "symmetry" in batch:
        lr, hr = apply_symmetries(lr, batch["symmetry"]), apply_symmetries(hr, batch["symmetry"])
    return lr, hr


def reduced_in(mesh: jax.sharding.Mesh, dtype) -> Callable:
    """A ``value_and_grad`` that sums the devices' gradients over the mesh axis ``data`` in
    ``dtype`` (e.g. float32 for a bfloat16 model, whose weight gradients XLA would otherwise
    all-reduce in bfloat16, as the convolutions make them): each device differentiates the mean
    loss of its share of the batch (``shard_map``), the gradients are cast to ``dtype``,
    summed with one ``psum``, divided by the device count and cast back to the parameters'
    dtype. Equal shares, so the result is the gradient of the global mean loss."""
    from jax.sharding import PartitionSpec as P

    n = mesh.shape["data"]

    def value_and_grad(loss_of: Callable, params, lr, hr):
        def local(params, lr, hr):
            value, grads = jax.value_and_grad(loss_of)(params, lr, hr)
            summed = jax.lax.psum(jax.tree_util.tree_map(lambda g: g.astype(dtype), grads), "data")
            grads = jax.tree_util.tree_map(lambda g, p: (g / n).astype(p.dtype), summed, params)
            return jax.lax.psum(value, "data") / n, grads

        return jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                             out_specs=(P(), P()), check_vma=False)(params, lr, hr)

    return value_and_grad


@dataclasses.dataclass(frozen=True)
class ShardedUpdate:
    """The gradient of a flat state split over the mesh axis ``data`` (``StepFormulation.
    shard_update``; ``sharding.make_shardings(..., shard_flat=True)``): each device casts its
    share of the parameters to ``gather_dtype`` (the model's compute dtype, so the all-gather
    moves half the bytes of float32 for a bfloat16 model), the shares are all-gathered, each
    device differentiates the mean loss of its share of the batch, and the gradients are cast
    to ``reduce_dtype`` and reduce-scattered: each device gets the summed gradient of its own
    share of the parameters, divided by the device count. The optimiser update, the EMA and
    the guard's norm (a sum of the shares' sums) then run on the shares (``train_step``)."""

    mesh: jax.sharding.Mesh
    reduce_dtype: object
    gather_dtype: object = None  # None: the parameters' own dtype

    def __call__(self, loss_of: Callable, params: Flat, factors: tuple[float, ...] | None,
                 lr: jax.Array, hr: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(mean loss, gradient)`` of ``loss_of(tree, lr, hr)`` at ``params`` (a ``Flat``
        whose ``(N,)`` array is split over ``data``; leaves times ``factors`` when given, as
        ``Flat.unravel``): the gradient ``(N,)`` in the parameters' dtype, split the same way.
        The factors scale the float32 shares before the cast and the full gradient before the
        reduction, as the replicated step's ``Flat.unravel`` does."""
        from jax.sharding import PartitionSpec as P

        n, layout = self.mesh.shape["data"], params.layout
        gather_dtype = self.gather_dtype or layout[2]
        array = params.array if factors is None else params.array * factor_vector(layout, factors)

        def local(share, lr, hr):
            # Gathered, then back in the parameters' dtype: the model's cast to its compute dtype
            # is exact, and the gradient is taken in the parameters' dtype, its leaves
            # concatenated in it, as in the replicated step. The barrier keeps XLA from dropping
            # the pair of casts: the leaves' slices of the gathered array then fuse into the
            # model's casts (a few multi-output kernels) instead of being a kernel each, as
            # cuDNN's calls cannot take a slice in (EDSR x2, 8 H100s: 500 -> 371 kernels).
            full = jax.lax.all_gather(share, "data", axis=0, tiled=True)
            if full.dtype != layout[2]:  # one kernel: otherwise each leaf's slice is one (below)
                full = jax.lax.optimization_barrier(full.astype(layout[2]))
            value, grad = jax.value_and_grad(lambda a: loss_of(Flat(a, layout).unravel(), lr, hr))(full)
            if factors is not None:
                grad = grad * factor_vector(layout, factors)
            grad = jax.lax.psum_scatter(grad.astype(self.reduce_dtype), "data", scatter_dimension=0,
                                        tiled=True)
            return jax.lax.psum(value, "data") / n, grad / n

        value, grad = jax.shard_map(local, mesh=self.mesh, in_specs=(P("data"), P("data"), P("data")),
                                    out_specs=(P(), P("data")), check_vma=False)(
            array.astype(gather_dtype), lr, hr)
        return value, grad.astype(layout[2])


def _value_and_grad(loss_of: Callable, params, lr, hr):
    return jax.value_and_grad(loss_of)(params, lr, hr)


def train_step(state: TrainState, batch: dict, scale: int | None = None, *, model: EDSR | MDSR,
               tx: optax.GradientTransformation, loss: str = "l1", charbonnier_eps: float = 1e-3,
               ema_decay: float = 0.0, guard: str = "cond", grads_in_param_layout: bool = False,
               damage: DeviceDamage | dict | None = None,
               value_and_grad: Callable = _value_and_grad, flat_norm: bool = False,
               fold_scale: bool = False, shard_update: ShardedUpdate | None = None,
               ) -> tuple[TrainState, dict]:
    """One optimiser step on ``batch = {"lr": (B,p,p,3) uint8, "hr": (B,p*s,p*s,3) uint8}``
    (values in [0, 255]), or another form of it (module docstring, ``batch_pairs``): ``damage``
    makes the LR from HR crops (an MDSR: ``{scale: DeviceDamage}``).

    ``scale``: None for an EDSR; for an MDSR the batch's scale (a Python int, static under
    ``jax.jit``), which picks the branches the step runs and updates (the other scales'
    branches get zero gradients: Adam's moments of them decay and their momentum still moves
    them a little, as PyTorch's Adam does with the zeroed gradients of the official code).
    A non-finite loss or gradient leaves params, optimizer state and EMA unchanged and
    is counted in ``state.nonfinite``. Returns ``(state, {"loss", "grad_norm"})``.
    ``guard`` ("cond" or "select"), ``grads_in_param_layout`` and ``flat_norm`` choose how that
    is compiled, per platform (``xla_options.step_formulation``); the numbers are the same to
    float32 rounding. ``state`` may be in its tree or its flat form (``training.state.to_flat``:
    the update then runs over the parameters, gradients and moments laid end to end); the
    state returned is in the same form.
    ``value_and_grad(loss_of, params, lr, hr)``: how the gradients are taken and summed over
    the devices (``reduced_in``: in a chosen dtype; default: as XLA partitions them).
    ``fold_scale``: an EDSR whose ``res_scale`` is not 1 runs with it folded into its blocks'
    second convolutions (``nets.edsr.fold_res_scale``; the flat form: ``Flat.unravel``'s
    factors): the same parameters and gradients, to the rounding of another order.
    ``shard_update``: a flat state whose arrays are split over the devices takes its gradient
    by ``ShardedUpdate`` (gathered parameters, reduce-scattered gradient; ``value_and_grad`` is
    not used), and its update, EMA and guard run on each device's share.
    """
    lr, hr = batch_pairs(batch, damage[scale] if isinstance(damage, dict) else damage)
    lr, hr = lr.astype(jnp.float32), hr.astype(jnp.float32)
    extra = () if scale is None else (scale,)
    res_scale = model.res_scale if fold_scale and isinstance(model, EDSR) else 1.0
    if res_scale != 1.0:  # the parameters given to the model carry res_scale (nets.edsr.fold_res_scale)
        model = model.clone(res_scale=1.0)

    def loss_of(params, lr, hr):
        return pixel_loss(model.apply(params, lr, *extra), hr, loss, charbonnier_eps)

    flat = isinstance(state.params, Flat)  # the state's flat form (training.state.to_flat)
    if flat:  # the gradient of the parameters laid end to end: one array, one update, one sum
        layout = state.params.layout
        factors = None if res_scale == 1.0 else leaf_factors(layout, res_scale)
        if shard_update is not None:
            value, grads = shard_update(loss_of, state.params, factors, lr, hr)
        else:
            value, grads = value_and_grad(lambda p, lr, hr: loss_of(Flat(p, layout).unravel(factors), lr, hr),
                                          state.params.array, lr, hr)
    else:
        value, grads = value_and_grad(lambda p, lr, hr: loss_of(fold_res_scale(p, res_scale), lr, hr),
                                      state.params, lr, hr)
    if grads_in_param_layout and not flat:
        grads = jax.tree_util.tree_map(row_major, grads)
    if flat or flat_norm:  # one reduction over the gradients end to end (xla_options.StepFormulation)
        flat_grads = grads if flat else jnp.concatenate(
            [g.ravel().astype(jnp.float32) for g in jax.tree_util.tree_leaves(grads)])
        grad_norm = jnp.sqrt(jnp.sum(jnp.square(flat_grads.astype(jnp.float32))))
    else:
        grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)

    def update(old):
        params, opt_state, ema = old
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if ema is not None:
            ema = jax.tree_util.tree_map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
        return params, opt_state, ema

    old = arrays_of((state.params, state.opt_state, state.ema))  # a Flat's 1-D array
    if guard == "cond":
        new = jax.lax.cond(finite, update, lambda old: old, old)
    elif guard == "select":
        new = jax.tree_util.tree_map(lambda new, old: jnp.where(finite, new, old), update(old), old)
    else:
        raise ValueError(f"guard must be 'cond' or 'select', got {guard!r}")
    params, opt_state, ema = rewrap((state.params, state.opt_state, state.ema), new)
    step = state.step + 1
    bad = jnp.logical_not(finite)
    new_state = TrainState(
        step=step,
        params=params,
        opt_state=opt_state,
        ema=ema,
        nonfinite=state.nonfinite + bad.astype(jnp.int32),
        first_nonfinite=jnp.where(bad & (state.first_nonfinite < 0), step, state.first_nonfinite),
    )
    return new_state, {"loss": value, "grad_norm": grad_norm}


def leaf_factors(layout, res_scale: float) -> tuple[float, ...]:
    """``nets.edsr.res_scale_factors`` of a ``Flat``'s ``layout``'s tree, one float per leaf in
    the flat array's order (what ``Flat.unravel`` multiplies each leaf by)."""
    tree = layout[0].unflatten([jax.ShapeDtypeStruct(shape, layout[2]) for shape in layout[1]])
    return tuple(jax.tree_util.tree_leaves(res_scale_factors(tree, res_scale)))


def row_major(x: jax.Array) -> jax.Array:
    """``x`` constrained to the default (row-major) layout, the one parameters are stored in."""
    from jax.experimental.layout import Layout, with_layout_constraint

    return with_layout_constraint(x, Layout(tuple(range(x.ndim))))


def compile_train_step(model: EDSR | MDSR, tx, config, mesh: jax.sharding.Mesh, state_shape,
                       compiler_options: dict | None = None,
                       shardings: Shardings | None = None,
                       formulation: xla_options.StepFormulation | None = None,
                       damage: DeviceDamage | dict | None = None) -> Callable:
    """``train_step`` jitted with replicated (or, below, split) state, ``data``-sharded batch, state donated:
    ``step(state, batch)`` for an EDSR, ``step(state, batch, scale)`` for an MDSR (``scale``
    static: one executable per scale in the one jit cache, compiled at its first call).
    ``damage``: the LR made in the step from HR crops (``DeviceDamage``; an MDSR's
    ``{scale: DeviceDamage}``), None when the batch brings it. A flat state (``state_shape``'s
    params a ``Flat``) on more than one device under a formulation with ``shard_update`` is
    split over the devices (``make_shardings(..., shard_flat=True)``: its arrays padded to a
    multiple of the device count, ``to_flat``'s ``multiple``) and stepped by ``ShardedUpdate``.

    ``compiler_options`` and ``formulation`` default to ``xla_options.compiler_options`` and
    ``xla_options.step_formulation`` of the mesh's platform (pass ``{}`` for XLA's own default
    options); ``shardings`` default to ``make_shardings``. A formulation with
    ``relu_from_output`` runs an EDSR's block ReLUs differentiated from their output (the same
    parameters and numbers; an MDSR keeps ``nn.relu``), one with ``fold_res_scale`` its
    ``res_scale`` folded into the blocks' second convolutions (``train_step``'s ``fold_scale``),
    one with ``tail_on_lr_grid`` an EDSR's tail before its last pixel shuffle (an MDSR: after)."""
    platform = mesh.devices.flat[0].platform
    form = formulation or xla_options.step_formulation(platform)
    shard = shards_state(form, mesh, state_shape)
    shardings = shardings or make_shardings(mesh, state_shape, shard_flat=shard)
    if shard != sharded_state(shardings):
        raise ValueError(f"the state's shardings {'do not split' if shard else 'split'} its flat arrays, "
                         f"the formulation's shard_update on {mesh.size} devices says {shard}: "
                         "make them with make_shardings(..., shard_flat=shards_state(...))")
    replicated, batch_sharding, state_sharding = shardings
    if form.relu_from_output and isinstance(model, EDSR):  # same parameters, same numbers
        model = model.clone(relu_grad_from_output=True)
    if form.tail_on_lr_grid and isinstance(model, EDSR):  # same parameters, float rounding
        model = model.clone(tail_on_lr_grid=True)
    reduce = grad_reduce_dtype(config, mesh)
    sharded = None
    if shard:  # parameters gathered in the compute dtype, except where the model remaps them first
        gather = None if form.tail_on_lr_grid else jnp.dtype(model.dtype)
        sharded = ShardedUpdate(mesh, reduce or jnp.dtype(model.dtype), gather)
    step = functools.partial(train_step, model=model, tx=tx, loss=config.optim.loss,
                             charbonnier_eps=config.optim.charbonnier_eps,
                             ema_decay=float(config.train.ema), guard=form.guard,
                             grads_in_param_layout=form.grads_in_param_layout, damage=damage,
                             flat_norm=form.flat_norm, fold_scale=form.fold_res_scale, shard_update=sharded,
                             value_and_grad=_value_and_grad if reduce is None else reduced_in(mesh, reduce))
    if compiler_options is None:
        compiler_options = xla_options.compiler_options(
            platform, int(config.data.batch_size) // mesh.size)
    return jax.jit(step, in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding, replicated), donate_argnums=(0,),
                   static_argnums=(2,) if isinstance(model, MDSR) else (),
                   compiler_options=compiler_options)


def shards_state(form: xla_options.StepFormulation, mesh: jax.sharding.Mesh, state_shape) -> bool:
    """Whether a state shaped like ``state_shape`` is split over ``mesh`` under ``form``: a flat
    state (``Flat`` params) on more than one device with ``form.shard_update``."""
    return bool(form.shard_update) and mesh.size > 1 and isinstance(state_shape.params, Flat)


def grad_reduce_dtype(config, mesh: jax.sharding.Mesh):
    """The dtype the step sums the devices' gradients in (``train.grad_reduce_dtype``), or None
    where XLA's own partitioning already does what was asked: one device, float32 compute, or
    "compute" (the compute dtype: bfloat16 gradients summed in bfloat16, half the bytes)."""
    asked = config.train.get("grad_reduce_dtype", "float32")
    if mesh.size == 1 or config.model.dtype == "float32" or asked == "compute":
        return None
    return jnp.dtype(asked)


class NonFiniteError(RuntimeError):
    """Training met a non-finite loss or gradient with ``nan_policy = "stop"``."""


def check_finite(state: TrainState, policy: str) -> int:
    """The number of non-finite steps ``state`` counted (their updates were not applied);
    with ``policy`` "stop" any such step raises ``NonFiniteError`` naming the first one."""
    count = int(state.nonfinite)
    if count and policy == "stop":
        raise NonFiniteError(
            f"non-finite loss or gradient at step {int(state.first_nonfinite)}; training stopped. "
            "The update of that step was not applied and no checkpoint of it was written; "
            "lower config.optim.lr, set config.optim.clip_norm, or set config.train.nan_policy='skip'.")
    return count
