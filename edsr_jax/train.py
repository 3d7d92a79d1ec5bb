"""Training: ``python -m edsr_jax.train --config experiments/X.py --workdir runs/X``.

One mesh over every device of every process (axis ``data``); the global batch is sharded
over it, params and optimizer state are replicated, and ``jax.jit`` inserts the gradient
all-reduce. The step functions are pure; ``Run`` sets a run up once (mesh and shardings,
model, optimiser, compiled step, batch feed, checkpoint manager, validation set) and
``loop`` steps it, with logging (``run_log``), evaluation (``evaluator``) and Orbax
checkpoints at their intervals. ``train`` is the two, closed through one ``ExitStack``.
Re-running the same command resumes.

MDSR (``model.arch = "mdsr"``, issue 19) runs through the same pieces: every step trains one
scale (``data.ScaleOrder``: drawn at random or in turn, a function of the step), on a batch
of that scale from its own Grain stream (``feed.MultiScaleFeed``); the step is one ``jax.jit``
with the scale static (one executable per scale, compiled at its first use); validation
scores every scale and ranks checkpoints by the mean PSNR over the scales.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from edsr_jax.training import checkpoint
from edsr_jax.io import cli
from edsr_jax.nets import onednn_conv
from edsr_jax.io import outputs
from edsr_jax.io import run_lock
from edsr_jax.nets import xla_options
from edsr_jax.training import config as config_lib
from edsr_jax.evaluation.evaluator import Evaluator
from edsr_jax.io.images import ImageError
from edsr_jax.nets.mdsr import MDSR, MDSRConfig
from edsr_jax.nets.edsr import DTYPES, EDSR, ModelConfig, count_params
from edsr_jax.training.run_log import Logger, StopRequest


# --------------------------------------------------------------------------- pure parts


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


def make_optimizer(optim, total_steps: int = 0) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Adam with the configured schedule, optional gradient clipping.

    ``optim.schedule`` "step": lr * decay_factor every decay_every steps (the paper);
    "cosine": linear warm-up over warmup_steps, then cosine to 0 at cosine_steps
    (or ``total_steps`` when cosine_steps is 0). Returns ``(tx, schedule)``."""
    if optim.get("schedule", "step") == "cosine":
        length = int(optim.cosine_steps or total_steps)
        if length <= int(optim.warmup_steps):
            raise ValueError(f"cosine schedule of {length} steps (optim.cosine_steps or train.steps) "
                             f"must be longer than optim.warmup_steps={optim.warmup_steps}")
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, optim.lr, warmup_steps=int(optim.warmup_steps), decay_steps=length, end_value=0.0)
    else:
        schedule = optax.exponential_decay(optim.lr, transition_steps=int(optim.decay_every),
                                           decay_rate=optim.decay_factor, staircase=True)
    adam = optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps)
    if optim.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(optim.clip_norm), adam), schedule
    return adam, schedule


def pixel_loss(sr: jax.Array, hr: jax.Array, kind: str, charbonnier_eps: float = 1e-3) -> jax.Array:
    """Mean pixel loss on the [0, 255] scale: ``l1``, ``l2`` or ``charbonnier``.

    ``charbonnier_eps`` is given for images in [0, 1] and scaled by 255 here.
    """
    diff = sr.astype(jnp.float32) - hr.astype(jnp.float32)
    if kind == "l1":
        return jnp.mean(jnp.abs(diff))
    if kind == "l2":
        return jnp.mean(diff * diff)
    if kind == "charbonnier":
        eps = charbonnier_eps * 255.0
        return jnp.mean(jnp.sqrt(diff * diff + eps * eps))
    raise ValueError(f"unknown loss {kind!r}")


def init_variables(model: EDSR | MDSR, key: jax.Array):
    """Freshly initialised variables ``{"params": ...}`` of an EDSR or an MDSR (every scale's
    branches), float32."""
    extra = (model.scales[0],) if isinstance(model, MDSR) else ()
    return model.init(key, jnp.zeros((1, 8, 8, 3), jnp.float32), *extra)


def create_train_state(model: EDSR | MDSR, tx: optax.GradientTransformation, key: jax.Array,
                       use_ema: bool, params=None) -> TrainState:
    """Fresh state; ``params`` (e.g. fine-tuning weights) replace the random init when given."""
    if params is None:
        params = init_variables(model, key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema=params if use_ema else None, nonfinite=jnp.zeros((), jnp.int32),
                      first_nonfinite=jnp.full((), -1, jnp.int32))


def train_step(state: TrainState, batch: dict, scale: int | None = None, *, model: EDSR | MDSR,
               tx: optax.GradientTransformation, loss: str = "l1", charbonnier_eps: float = 1e-3,
               ema_decay: float = 0.0, guard: str = "cond",
               grads_in_param_layout: bool = False) -> tuple[TrainState, dict]:
    """One optimiser step on ``batch = {"lr": (B,p,p,3) uint8, "hr": (B,p*s,p*s,3) uint8}``
    (values in [0, 255]).

    ``scale``: None for an EDSR; for an MDSR the batch's scale (a Python int, static under
    ``jax.jit``), which picks the branches the step runs and updates (the other scales'
    branches get zero gradients: Adam's moments of them decay and their momentum still moves
    them a little, as PyTorch's Adam does with the zeroed gradients of the official code).
    A non-finite loss or gradient leaves params, optimizer state and EMA unchanged and
    is counted in ``state.nonfinite``. Returns ``(state, {"loss", "grad_norm"})``.
    ``guard`` ("cond" or "select") and ``grads_in_param_layout`` choose how that is compiled,
    per platform (``xla_options.step_formulation``); the numbers are the same.
    """
    lr = batch["lr"].astype(jnp.float32)
    hr = batch["hr"].astype(jnp.float32)
    extra = () if scale is None else (scale,)

    def loss_of(params):
        return pixel_loss(model.apply(params, lr, *extra), hr, loss, charbonnier_eps)

    value, grads = jax.value_and_grad(loss_of)(state.params)
    if grads_in_param_layout:
        grads = jax.tree_util.tree_map(_row_major, grads)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)

    def update(state):
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema
        if ema is not None:
            ema = jax.tree_util.tree_map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
        return params, opt_state, ema

    def keep(state):
        return state.params, state.opt_state, state.ema

    if guard == "cond":
        params, opt_state, ema = jax.lax.cond(finite, update, keep, state)
    elif guard == "select":
        params, opt_state, ema = jax.tree_util.tree_map(
            lambda new, old: jnp.where(finite, new, old), update(state), keep(state))
    else:
        raise ValueError(f"guard must be 'cond' or 'select', got {guard!r}")
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


def _row_major(x: jax.Array) -> jax.Array:
    """``x`` constrained to the default (row-major) layout, the one parameters are stored in."""
    from jax.experimental.layout import Layout, with_layout_constraint

    return with_layout_constraint(x, Layout(tuple(range(x.ndim))))


# --------------------------------------------------------------------------- set-up


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


def compile_train_step(model: EDSR | MDSR, tx, config, mesh: jax.sharding.Mesh, state_shape,
                       compiler_options: dict | None = None,
                       shardings: Shardings | None = None,
                       formulation: xla_options.StepFormulation | None = None) -> Callable:
    """``train_step`` jitted with replicated state, ``data``-sharded batch, state donated:
    ``step(state, batch)`` for an EDSR, ``step(state, batch, scale)`` for an MDSR (``scale``
    static: one executable per scale in the one jit cache, compiled at its first call).

    ``compiler_options`` and ``formulation`` default to ``xla_options.compiler_options`` and
    ``xla_options.step_formulation`` of the mesh's platform (pass ``{}`` for XLA's own default
    options); ``shardings`` default to ``make_shardings``."""
    shardings = shardings or make_shardings(mesh, state_shape)
    replicated, batch_sharding, state_sharding = shardings
    platform = mesh.devices.flat[0].platform
    form = formulation or xla_options.step_formulation(platform)
    step = functools.partial(train_step, model=model, tx=tx, loss=config.optim.loss,
                             charbonnier_eps=config.optim.charbonnier_eps,
                             ema_decay=float(config.train.ema), guard=form.guard,
                             grads_in_param_layout=form.grads_in_param_layout)
    if compiler_options is None:
        compiler_options = xla_options.compiler_options(
            platform, int(config.data.batch_size) // mesh.size)
    return jax.jit(step, in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding, replicated), donate_argnums=(0,),
                   static_argnums=(2,) if isinstance(model, MDSR) else (),
                   compiler_options=compiler_options)


def merge_params(fresh, loaded, skip: Sequence[str] = ()) -> tuple[Any, list[str], list[str]]:
    """Take every leaf of ``loaded`` whose path and shape match ``fresh``, except layers
    whose name starts with one of ``skip`` (e.g. ``("upsample_", "tail")``).

    Returns ``(params, loaded_paths, kept_fresh_paths)`` (paths as ``params/head/kernel``).
    """
    flat_loaded = {jax.tree_util.keystr(p, simple=True, separator="/"): v
                   for p, v in jax.tree_util.tree_flatten_with_path(loaded)[0]}
    took, fresh_kept = [], []

    def pick(path, value):
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        other = flat_loaded.get(name)
        layer = name.split("/")[1] if name.count("/") >= 2 else name
        if other is not None and not layer.startswith(tuple(skip)) and tuple(other.shape) == tuple(value.shape):
            took.append(name)
            return np.asarray(other, dtype=value.dtype)
        fresh_kept.append(name)
        return np.asarray(value)

    merged = jax.tree_util.tree_map_with_path(pick, fresh)
    return merged, took, fresh_kept


def replicate(tree, mesh: jax.sharding.Mesh):
    """Host (NumPy) pytree -> arrays replicated over ``mesh`` (works across processes)."""
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.tree_util.tree_map(
        lambda a: jax.make_array_from_callback(np.shape(a), sharding, lambda idx: np.asarray(a)[idx]),
        tree)


def local_copy(tree):
    """Replicated global arrays -> copies on this process's first device (for evaluation)."""
    return jax.tree_util.tree_map(lambda a: a.addressable_data(0), tree)


def check_workdir(workdir: Path, need_bytes: int) -> None:
    """Create ``workdir`` and make sure it is writable with room for checkpoints."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise cli.UsageError(f"--workdir {workdir}: not writable ({e.strerror or e})") from None
    free = shutil.disk_usage(workdir).free
    if free < need_bytes:
        raise cli.UsageError(f"--workdir {workdir}: only {free / 2**20:.0f} MiB free, checkpoints need "
                             f"about {need_bytes / 2**20:.0f} MiB")


# --------------------------------------------------------------------------- the run and its loop


class NonFiniteError(RuntimeError):
    """Training met a non-finite loss or gradient with ``nan_policy = "stop"``."""


def _check_finite(state: TrainState, policy: str) -> int:
    count = int(state.nonfinite)
    if count and policy == "stop":
        raise NonFiniteError(
            f"non-finite loss or gradient at step {int(state.first_nonfinite)}; training stopped. "
            "The update of that step was not applied and no checkpoint of it was written; "
            "lower config.optim.lr, set config.optim.clip_norm, or set config.train.nan_policy='skip'.")
    return count


def resolve_lr_name(config) -> str | None:
    """Fill in ``config.data.lr_name`` when it is "" and the source is "paired": the only LR
    variant recorded in the training folder's ``manifest.json`` (``prepare``), or "bicubic"
    for a folder without a manifest (DIV2K as distributed). The run stores the resolved name,
    so a variant added to the folder later never changes what a resumed run reads.
    Returns a line saying what was chosen (None when nothing was); UsageError when the
    manifest records several variants (naming them) or cannot be read."""
    from edsr_jax.data import manifest as prepare  # lr_variants, lr_variant_spec

    d = config.data
    if d.lr_name:
        return None
    if d.source != "paired" or not isinstance(d.train, str) or not Path(d.train).is_dir():
        d.lr_name = "bicubic"  # unused by these sources; stored as runs always stored it
        return None
    try:
        names = prepare.lr_variants(d.train)
    except ValueError as e:
        raise cli.UsageError(f"config.data.train: {e}") from None
    if names is None:
        d.lr_name = "bicubic"
        return None
    if len(names) != 1:
        raise cli.UsageError(f"config.data.lr_name: {d.train} holds {len(names)} LR variants "
                             f"({', '.join(names)}); choose one, e.g. --config.data.lr_name={names[0]}")
    d.lr_name = names[0]
    return f"data.lr_name={names[0]!r}: the only LR variant of {d.train} (its manifest.json)"


def train_dataset(config, process_index: int, process_count: int, scale: int | None = None):
    """This process's training batches (a Grain IterDataset) from ``config.data``:
    ``{"lr": (B, p, p, 3), "hr": (B, p*s, p*s, 3)}`` uint8 in [0, 255], ``p =
    data.patch_size`` LR pixels at every scale (as EDSR-PyTorch's multi-scale loader).

    ``scale``: the EDSR's own scale when None; for an MDSR one of ``model.scales`` (its pairs:
    the ``X<scale>`` folder of a prepared set, or HR degraded on the fly at that scale), with
    a data seed of its own (``data.scale_seed``).
    Raises ``cli.UsageError`` for a missing folder or a source that does not fit the data."""
    from edsr_jax.data import samples as sample_data
    from edsr_jax.data import sources as data

    d = config.data
    seed = int(config.train.seed)
    if scale is None:
        scale = int(config.model.scale)
    elif config_lib.is_mdsr(config):
        seed = data.scale_seed(seed, scale)
    cache = d.cache_dir or None
    train_src = sample_data.resolve(d.train, "train")
    if isinstance(train_src, str) and not Path(train_src).is_dir():
        raise cli.UsageError(f"config.data.train = {train_src!r}: no such folder")
    if d.source == "paired":
        if not isinstance(train_src, str):
            raise cli.UsageError("config.data.source = 'paired' needs config.data.train to be a folder")
        source = data.PairedFolderSource(train_src, scale, lr_name=d.lr_name, cache_dir=cache,
                                         spec=training_spec(config, scale))
    else:
        source = data.HROnlySource(train_src, scale, spec=d.spec or None, cache_dir=cache)
    return data.make_train_dataset(
        source, patch_size=int(d.patch_size), batch_size=int(d.batch_size), seed=seed,
        patches_per_image=int(d.patches_per_image), num_workers=int(d.num_workers),
        process_index=process_index, process_count=process_count)


def training_spec(config, scale: int) -> str | None:
    """The degradation that makes the training LR at ``scale``: ``data.spec`` (bicubic when
    empty) for HR-only data; for prepared pairs the spec their manifest records for
    ``data.lr_name`` (None when there is no manifest, e.g. DIV2K as distributed)."""
    d = config.data
    if d.source != "paired":
        return d.spec or f"bicubic({scale})"
    from edsr_jax.data import manifest as prepare  # lr_variants, lr_variant_spec

    return prepare.lr_variant_spec(d.train, d.lr_name, scale)


def augmentation_note(config, scale: int) -> str | None:
    """A line for the log when the training degradation allows fewer than the 8 flips and
    quarter turns as augmentation (``degrade.Pipeline.symmetries``), else None."""
    from edsr_jax.degradation import degrade

    spec = training_spec(config, scale)
    if not spec:
        return None
    pipe = degrade.parse(spec, scale=scale)
    kept = pipe.symmetries
    if len(kept) == 8:
        return None
    names = {0: "identity", degrade.HALF_TURN: "half turn", degrade.TRANSPOSE: "transpose"}
    return (f"augmentation: LR made by '{pipe.spec}' stays aligned with its HR under {len(kept)} of the 8 "
            f"flips and quarter turns ({', '.join(names.get(k, str(k)) for k in kept)}); only those are used")


def validation_set(config, report: Callable[[str], None] | None = None,
                   scale: int | None = None) -> Evaluator:
    """The validation images of ``config.data`` loaded once (``evaluator.Evaluator``) at
    ``scale`` (default: the EDSR's ``model.scale``; an MDSR run makes one per scale).

    Images that cannot be scored go to ``report`` (``"skipped: ..."``); raises
    ``cli.UsageError`` when the folder is missing, the spec is bad or no image is usable."""
    from edsr_jax.data import samples as sample_data
    from edsr_jax.degradation import degrade

    d = config.data
    val_src = sample_data.resolve(d.val, "val")
    if isinstance(val_src, str) and not Path(val_src).is_dir():
        raise cli.UsageError(f"config.data.val = {val_src!r}: no such folder")
    try:
        return Evaluator.from_images(val_src, int(config.model.scale if scale is None else scale),
                                     spec=d.val_spec or None,
                                     max_images=int(d.val_max_images) or None, report=report)
    except degrade.SpecError as e:
        raise cli.UsageError(f"config.data.val_spec: {e}") from None
    except ImageError as e:
        raise cli.UsageError(f"config.data.val: {e}") from None


class Run:
    """One training run, set up once: config, mesh and shardings, model, optimiser, compiled
    step, validation set, batch feed, checkpoint manager, logger.

    ``Run(config, workdir, stack)`` checks the config and the data (``cli.UsageError``)
    before it compiles anything or writes to ``workdir``; everything that needs closing
    (feed thread, checkpoint manager, logger) is registered on ``stack``, so it is closed
    on every way out. ``restore_or_init`` gives the first state; ``train_step``,
    ``log_train``, ``evaluate`` and ``save`` are what the loop calls.

    For an MDSR (``mdsr`` True) ``scales`` are its scales, ``evaluators`` one validation set
    per scale, ``feed`` a ``feed.MultiScaleFeed`` (batches carry their ``"scale"``) and
    ``train_step`` runs ``compiled_step`` at the batch's scale; the loop is the same.
    """

    def __init__(self, config, workdir: Path, stack: contextlib.ExitStack):
        self.config, self.workdir = config, Path(workdir)
        checkpoint.quiet_orbax_logs()
        try:
            config_lib.validate(config, jax.device_count())
        except ValueError as e:
            raise cli.UsageError(str(e)) from None
        self.model_config = config_lib.model_config(config)
        self.mdsr = isinstance(self.model_config, MDSRConfig)
        self.scales = config_lib.train_scales(config)
        self.process_count = jax.process_count()
        self.main_process = jax.process_index() == 0
        quiet = None if self.main_process else (lambda m: None)
        # One validation set per scale (an EDSR has one); ``evaluator`` is the first.
        self.evaluators = {s: validation_set(config, report=quiet, scale=s) for s in self.scales}
        self.evaluator = self.evaluators[self.scales[0]]
        n_params = count_params(jax.eval_shape(
            lambda: init_variables(self.model_config.build(), jax.random.key(0))))
        what = checkpoint.not_a_run_folder(self.workdir)
        if what:
            raise cli.UsageError(f"--workdir {self.workdir}: is {what}")
        check_workdir(self.workdir, need_bytes=n_params * 4 * (4 if config.train.ema else 3) * 3)
        self.previous_holder = None
        if self.main_process:  # one trainer per workdir, taken before anything is written there
            try:
                self.previous_holder = stack.enter_context(run_lock.RunLock(self.workdir)).previous
            except (run_lock.WorkdirBusy, OSError) as e:
                raise cli.UsageError(str(e)) from None
            outputs.check_appendable(self.workdir / "metrics.jsonl")
        note = resolve_lr_name(config)
        self._check_resumable()
        from edsr_jax.data.feed import DeviceFeed

        try:
            datasets = {s: train_dataset(config, jax.process_index(), self.process_count,
                                         s if self.mdsr else None) for s in self.scales}
        except (ValueError, FileNotFoundError, ImageError) as e:
            raise cli.UsageError(str(e)) from None
        dtype = DTYPES[config.model.dtype]
        self.mesh = make_mesh()
        try:
            self.conv_backend = onednn_conv.choose_backend(
                config.train.conv_backend, self.mesh.devices.flat[0].platform, self.mesh.size, dtype)
        except ValueError as e:
            raise cli.UsageError(str(e)) from None
        self.model = self.model_config.build(dtype=dtype, conv_backend=self.conv_backend)
        self.tx, self.schedule = make_optimizer(config.optim, int(config.train.steps))
        self.use_ema = config.train.ema > 0
        self.init = functools.partial(create_train_state, self.model, self.tx, use_ema=self.use_ema)
        state_shape = jax.eval_shape(self.init, jax.random.key(config.train.seed))
        self.shardings = make_shardings(self.mesh, state_shape)
        self.compiled_step = compile_train_step(self.model, self.tx, config, self.mesh, state_shape,
                                                shardings=self.shardings)
        self.train_step = self._scaled_step if self.mdsr else self.compiled_step
        self.abstract_state = jax.tree_util.tree_map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            state_shape, self.shardings.state)
        if self.mdsr:  # batch n has scale order(n); each scale reads its own stream
            from edsr_jax.data.sources import ScaleOrder
            from edsr_jax.data.feed import MultiScaleFeed

            feeds = {}
            stack.callback(lambda: [f.close() for f in feeds.values()])
            for s, ds in datasets.items():
                feeds[s] = DeviceFeed(iter(ds), self.shardings.batch)
            self.scale_order = ScaleOrder(self.scales, config.train.scale_order, int(config.train.seed))
            self.feed = MultiScaleFeed(feeds, self.scale_order)
        else:
            self.feed = DeviceFeed(iter(datasets[self.scales[0]]), self.shardings.batch)
        stack.callback(self.feed.close)
        self.protocol = 0  # the validation protocol (restore_or_init: the stored one, or a new one)
        self.manager = checkpoint.make_manager(self.workdir / checkpoint.CHECKPOINT_DIR,
                                               keep_last=config.train.keep_last,
                                               keep_best=config.train.keep_best,
                                               protocol=lambda: self.protocol)
        stack.callback(_close_manager, self.manager)
        self.saved_config = {"model": checkpoint.model_config_to_dict(self.model_config),
                             "experiment": config.to_dict(), "protocol": self.protocol}
        self.logger = stack.enter_context(
            Logger(self.workdir, int(config.train.steps), 0, self.main_process))
        self.logger.say(f"{self.mesh.size} {self.mesh.devices.flat[0].platform} device(s), "
                        f"{config.model.dtype}, convolutions by "
                        f"{'oneDNN' if self.conv_backend == 'onednn' else 'XLA'} "
                        f"(train.conv_backend={config.train.conv_backend})")
        if note:
            self.logger.say(note)
        for line in dict.fromkeys(augmentation_note(config, s) for s in self.scales):
            if line:
                self.logger.say(line)
        if self.mdsr:
            self.logger.say(f"MDSR, scales {' '.join(f'x{s}' for s in self.scales)}: one scale per step "
                            f"({config.train.scale_order}, train.scale_order); LR patch "
                            f"{config.data.patch_size} at every scale; checkpoints ranked by the mean "
                            "validation PSNR over the scales")
        if self.previous_holder:
            self.logger.say(f"note: the previous trainer ({run_lock.describe(self.previous_holder)}) ended "
                            "without releasing the workdir lock (killed?); taking it over")
        self._tick = (time.perf_counter(), 0)

    def restore_or_init(self) -> TrainState:
        """The newest checkpoint of the workdir that reads completely (params, optimiser,
        counters and data position; ``checkpoint.restore_newest``), or a fresh state
        (fine-tuning weights from ``config.train.init_from`` when set) when it holds none.

        Config changes since the checkpoint are printed; a changed validation protocol or
        training data needs ``train.new_protocol`` (else ``cli.UsageError``)."""
        directory = self.workdir / checkpoint.CHECKPOINT_DIR
        if checkpoint.step_numbers(directory):
            state = self._resume(directory)
        elif directory.is_dir() and any(p.name.endswith(".damaged") for p in directory.iterdir()):
            raise cli.UsageError(f"--workdir {self.workdir}: holds only damaged checkpoints "
                                 f"({directory}/*.damaged); nothing is started over them: move them away "
                                 "to start afresh, or use another --workdir")
        else:
            params = None  # a fresh init, or the fine-tuning weights replicated over the mesh
            if self.config.train.init_from:
                params = replicate(_finetune_params(self.config, self.model, self.model_config,
                                                    self.logger), self.mesh)
            make = jax.jit(lambda key, p: self.init(key, params=p), out_shardings=self.shardings.state)
            state = make(jax.random.key(self.config.train.seed), params)
        self.logger.resume(int(state.step))
        self._tick = (time.perf_counter(), int(state.step))
        return state

    def _check_resumable(self) -> None:
        """Before anything is built or written: the newest readable stored config must be of
        this architecture, and the protocol / data may change only with ``train.new_protocol``
        (``cli.UsageError``, one line). ``_resume`` checks the step it restores again."""
        directory = self.workdir / checkpoint.CHECKPOINT_DIR
        for step in checkpoint.step_numbers(directory):
            try:
                stored = checkpoint.read_item(directory / str(step), "config", checkpoint.ocp.args.JsonRestore())
            except checkpoint.ItemDamaged:
                continue
            if not isinstance(stored, dict):
                continue
            checkpoint.check_model_config(stored.get("model", {}), self.model_config, str(directory / str(step)))
            try:
                config_lib.resume_changes(stored.get("experiment", {}), self.config.to_dict(),
                                          bool(self.config.train.new_protocol))
            except config_lib.ProtocolChange as e:
                raise cli.UsageError(str(e)) from None
            return

    def _resume(self, directory: Path) -> TrainState:
        """Restore with fallback over damaged steps; adapt to config changes and say each."""
        plan: dict = {}

        def check(stored: dict) -> None:
            checkpoint.check_model_config(stored.get("model", {}), self.model_config, str(directory))
            lines, new = config_lib.resume_changes(stored.get("experiment", {}), self.config.to_dict(),
                                                   bool(self.config.train.new_protocol))
            old_data = config_lib.flatten(stored.get("experiment", {}))
            now = config_lib.flatten(self.config.to_dict())
            plan.update(lines=lines, new=new, protocol=int(stored.get("protocol", 0)),
                        data_changed=any(old_data.get(k, now.get(k)) != now.get(k) for k in config_lib.DATA_FIELDS),
                        ema_stored=float(stored.get("experiment", {}).get("train", {}).get("ema", 0.0)))

        try:
            step, restored, _, notes = checkpoint.restore_newest(
                directory, _as_items(self.abstract_state),
                data_iter=lambda stored: None if plan.get("data_changed") else self.feed,
                optional=("ema",), graftable=("opt_state",), check_config=check,
                say=lambda m: self.logger.say(f"warning: {m}"))
        except (config_lib.ProtocolChange, checkpoint.CheckpointDamaged) as e:
            raise cli.UsageError(str(e)) from None
        say = self.logger.say
        for line in plan["lines"]:
            say(f"config changed since the checkpoint: {line}")
        self.protocol = plan["protocol"] + (1 if plan["new"] else 0)
        self.saved_config["protocol"] = self.protocol
        if plan["new"]:
            say(f"starting validation protocol {self.protocol} (train.new_protocol): only PSNRs measured "
                "under it compete for the best checkpoint; metrics.jsonl records carry it")
        if plan["data_changed"]:
            say("note: the training data changed; the data order starts afresh from this step")
        for note in notes:
            say(f"note: {note}")
        if self.use_ema and restored["ema"] is None:
            restored["ema"] = jax.tree_util.tree_map(lambda a: a.copy(), restored["params"])
            say(f"note: train.ema turned on at resume: the EMA weights start from the restored weights "
                f"of step {step}")
        elif not self.use_ema and plan["ema_stored"] > 0:
            say("note: train.ema turned off at resume: the stored EMA weights are dropped")
        if self.main_process:  # damaged newer steps are set aside, never deleted nor resumed from
            for newer in [s for s in checkpoint.step_numbers(directory) if s > step]:
                target = directory / f"{newer}.damaged"
                while target.exists():
                    target = target.with_name(target.name + "_")
                (directory / str(newer)).rename(target)
                say(f"note: set the damaged step {newer} aside as {target}")
            self.manager.reload()
        state = _from_items(restored)
        say(f"resuming from step {int(state.step)} (checkpoint in {self.manager.directory})")
        return state

    def log_train(self, step: int, state: TrainState, metrics: dict) -> None:
        """Loss, gradient norm, learning rate and patches/s since the last call; stops on a
        non-finite step when ``train.nan_policy`` is "stop" (``NonFiniteError``)."""
        skipped = _check_finite(state, self.config.train.nan_policy)
        (tick, tick_step), now = self._tick, time.perf_counter()
        rate = (step - tick_step) * int(self.config.data.batch_size) / max(now - tick, 1e-9)
        self.logger.train(step, {"loss": float(metrics["loss"]), "grad_norm": float(metrics["grad_norm"]),
                                 "lr": float(self.schedule(step)), "patches_per_s": rate,
                                 "skipped_steps": skipped}, step - tick_step)
        self._tick = (now, step)

    def evaluate(self, step: int, state: TrainState) -> dict:
        """PSNR / SSIM of the weights (EMA when on) on the validation set, logged; the result
        of ``Evaluator`` with the bicubic baseline (``bicubic_psnr``, ``bicubic_ssim``).

        MDSR: every scale is scored on its own validation pairs; the result holds each
        scale's scores under ``x{s}/psnr``, ``x{s}/ssim``, ``x{s}/bicubic_psnr``,
        ``x{s}/bicubic_ssim``, ``x{s}/images``, and as ``psnr``, ``ssim``, ``bicubic_psnr``,
        ``bicubic_ssim`` their means over the scales (``psnr`` ranks the checkpoints); ``images``
        is the total, ``panel`` the largest scale's."""
        from edsr_jax.inference.infer import Upscaler

        _check_finite(state, self.config.train.nan_policy)
        weights = local_copy(state.ema if self.use_ema else state.params)
        if not self.mdsr:
            upscaler = Upscaler(self.model_config, weights, dtype=self.config.model.dtype)
            result = {**self.evaluator(lambda lr, _: upscaler(lr)), **self.evaluator.baseline,
                      "protocol": self.protocol}
            self.logger.eval(step, result)
            return result
        upscaler = Upscaler(self.model_config, weights, dtype=self.config.model.dtype, scale=self.scales[0])
        per_scale = {}
        for s, evaluator in self.evaluators.items():
            at = upscaler.at_scale(s)
            per_scale[s] = {**evaluator(lambda lr, _, at=at: at(lr)), **evaluator.baseline}
        result = {k: float(np.mean([r[k] for r in per_scale.values()]))
                  for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")}
        result["images"] = sum(r["images"] for r in per_scale.values())
        for s, r in per_scale.items():
            result.update({f"x{s}/{k}": r[k] for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "images")})
        result["panel"] = per_scale[max(per_scale)]["panel"]
        result["protocol"] = self.protocol
        self.logger.eval(step, result)
        if self.logger.tb is not None:  # per-scale curves next to the means Logger.eval writes
            for s in per_scale:
                for k in ("psnr", "ssim", "bicubic_psnr"):
                    self.logger.tb.add_scalar(f"eval/x{s}/{k}", result[f"x{s}/{k}"], step)
        self.logger.say("  " + ", ".join(f"x{s} {r['psnr']:.2f} dB (bicubic {r['bicubic_psnr']:.2f})"
                                         for s, r in per_scale.items())
                        + "; the PSNR above is their mean, which ranks the checkpoints")
        return result

    def _scaled_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        """An MDSR step: ``batch`` of ``MultiScaleFeed`` (``"scale"`` a Python int) through the
        compiled step of that scale."""
        return self.compiled_step(state, {"lr": batch["lr"], "hr": batch["hr"]}, batch["scale"])

    def save(self, step: int, state: TrainState, result: dict | None = None) -> None:
        """Start an async checkpoint of ``state`` and the data position (ranked by ``result``'s PSNR)."""
        _check_finite(state, self.config.train.nan_policy)
        checkpoint.save(self.manager, step, _as_items(state), config=self.saved_config, data_iter=self.feed,
                        metrics={"psnr": result["psnr"], "protocol": self.protocol} if result else None)

    def out_of_time(self, started: float, step: int) -> bool:
        """True once ``train.max_minutes`` have passed since ``started`` (checked every
        ``log_every`` steps, agreed on by every process)."""
        budget_s = float(self.config.train.max_minutes) * 60.0
        return budget_s > 0 and step % self.config.train.log_every == 0 and _agree(
            time.monotonic() - started > budget_s)


def _close_manager(manager) -> None:
    try:
        checkpoint.wait(manager)  # the last checkpoint must finish writing (a full disk: WriteError)
    finally:
        manager.close()


def train(config, workdir: str | Path) -> dict:
    """Train (or resume) the experiment ``config`` in ``workdir``; returns the last eval result.

    Raises ``cli.UsageError`` for bad config or data, before anything is compiled; the feed,
    checkpoint manager and logger are closed however the loop ends.
    """
    with contextlib.ExitStack() as stack:
        run = Run(config, Path(workdir), stack)
        state = run.restore_or_init()
        stop = stack.enter_context(StopRequest())
        return loop(run, state, stop)


def loop(run: Run, state: TrainState, stop: StopRequest) -> dict:
    """Steps from ``state`` to ``train.steps``, a signal or the time budget, with logging,
    evaluation and checkpoints at their intervals; returns the last eval result ({} if none)."""
    t = run.config.train
    total, step = int(t.steps), int(state.step)
    saved, last_eval, out_of_time, started = step, {}, False, time.monotonic()
    while step < total and stop.signal is None and not out_of_time:
        state, metrics = run.train_step(state, next(run.feed))
        step += 1
        out_of_time = run.out_of_time(started, step)
        done = step == total or out_of_time
        if step % t.log_every == 0 or done:
            run.log_train(step, state, metrics)
        result = None
        if step % t.eval_every == 0 or done:
            result = last_eval = run.evaluate(step, state)
        if step % t.checkpoint_every == 0 or done or stop.signal is not None:
            run.save(step, state, result)
            saved = step
    if stop.signal is not None and saved != step:  # the signal came during a save
        run.save(step, state)
    run.manager.wait_until_finished()
    if out_of_time:
        run.logger.say(f"time budget of {t.max_minutes:g} min used up at step {step}; checkpoint saved. "
                       "Re-run the same command to continue.")
    if stop.signal is not None:
        run.logger.say(f"stopped by signal {stop.signal} at step {step}; checkpoint saved. "
                       "Re-run the same command to resume.")
    return last_eval


def _agree(flag: bool) -> bool:
    """``flag`` as process 0 sees it, so every process takes the same branch."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


def _as_items(state) -> dict:
    return {"params": state.params, "opt_state": state.opt_state, "ema": state.ema,
            "counters": {"step": state.step, "nonfinite": state.nonfinite,
                         "first_nonfinite": state.first_nonfinite}}


def _from_items(items: dict) -> TrainState:
    c = items["counters"]
    return TrainState(step=c["step"], params=items["params"], opt_state=items["opt_state"],
                      ema=items["ema"], nonfinite=c["nonfinite"], first_nonfinite=c["first_nonfinite"])


def _finetune_params(config, model: EDSR | MDSR, model_config: ModelConfig | MDSRConfig, logger: Logger):
    """Fresh init with every matching parameter taken from ``config.train.init_from`` (an EDSR
    or an MDSR checkpoint, for an EDSR or an MDSR run; ``upsamplers_as``)."""
    source = config.train.init_from
    try:
        loaded_config, loaded, _ = checkpoint.restore_params(source, prefer_ema=True)
    except checkpoint.CheckpointNotFound as e:
        raise cli.UsageError(f"config.train.init_from: {e}") from None
    fresh = init_variables(model, jax.random.key(config.train.seed))
    loaded = upsamplers_as(jax.device_get(loaded), loaded_config, model_config)
    skip = ()
    if not isinstance(loaded_config, MDSRConfig) and not isinstance(model_config, MDSRConfig) \
            and loaded_config.scale != model_config.scale:
        # A different scale means a different upsampler: re-initialise it and the tail (the paper).
        skip = ("upsample_", "tail")
    merged, took, kept = merge_params(jax.device_get(fresh), loaded, skip)
    logger.say(f"fine-tuning from {source} ({loaded_config}): loaded {len(took)} arrays; "
               f"freshly initialised {len(kept)}: {', '.join(kept) if kept else 'none'}")
    return merged


def upsamplers_as(params, source: ModelConfig | MDSRConfig, target: ModelConfig | MDSRConfig):
    """``params`` of a ``source`` model with its upsampler renamed to where ``target`` keeps the
    same scale's, so that ``merge_params`` carries it over: EDSR ``upsample_{k}`` <-> MDSR
    ``upsample_x{s}/stage_{k}`` (EDSR -> MDSR: the EDSR's scale's branch; MDSR -> EDSR: the
    branch of the EDSR's scale, when the MDSR has it). Everything else (head, body, tail) has
    the same names in both; MDSR's pre-processing has no EDSR counterpart. Same-architecture
    pairs come back unchanged. ``params``: ``{"params": {...}}`` of NumPy arrays."""
    src_mdsr, dst_mdsr = isinstance(source, MDSRConfig), isinstance(target, MDSRConfig)
    if src_mdsr == dst_mdsr:
        return params
    inner = dict(params["params"])
    if dst_mdsr:  # EDSR -> MDSR
        stages = {k: inner.pop(k) for k in [k for k in inner if k.startswith("upsample_")]}
        if source.scale in target.scales:
            inner[f"upsample_x{source.scale}"] = {f"stage_{k.split('_', 1)[1]}": v for k, v in stages.items()}
    else:  # MDSR -> EDSR
        branch = inner.get(f"upsample_x{target.scale}")
        inner = {k: v for k, v in inner.items() if not k.startswith("upsample_x")}
        if branch is not None:
            inner.update({f"upsample_{k.split('_', 1)[1]}": v for k, v in branch.items()})
    return {**params, "params": inner}


# --------------------------------------------------------------------------- CLI


def build_parser() -> cli.ArgumentParser:
    """The training command's options. ``--config.FIELD=VALUE`` overrides are not declared
    here: ``parse_args`` takes them out first and hands them to ml_collections."""
    p = cli.ArgumentParser(
        prog="python -m edsr_jax.train",
        description="Train EDSR (resumes when the workdir holds a checkpoint).",
        epilog="Override any field of the config with --config.FIELD=VALUE (or --config.FIELD "
               "VALUE), e.g. --config.optim.lr=2e-4 --config.train.steps=1000; values are "
               "parsed by the field's type (ml_collections config_flags).")
    p.add_argument("--config", required=True, metavar="FILE",
                   help="experiment config file (experiments/*.py) defining get_config()")
    p.add_argument("--workdir", required=True, metavar="DIR",
                   help="run folder: checkpoints, TensorBoard events, metrics.jsonl; re-running "
                        "with the same workdir resumes")
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() (cluster auto-detection, or the "
                        "options below)")
    p.add_argument("--coordinator_address", metavar="HOST:PORT",
                   help="address of process 0 (multi-host; implies --distributed)")
    p.add_argument("--num_processes", type=int, metavar="N", help="number of processes (multi-host)")
    p.add_argument("--process_id", type=int, metavar="I", help="this process's index (multi-host)")
    p.add_argument("--cpu_collectives", action="store_true",
                   help="gloo collectives between CPU processes (multi-process runs without "
                        "accelerators)")
    return p


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(overrides, rest)``: the ``--config.FIELD[=VALUE]`` arguments (a value given as the
    next argument joined as ``=VALUE``) and everything else, each in order."""
    overrides, rest = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            if "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                i += 1
                arg = f"{arg}={argv[i]}"
            overrides.append(arg)
        else:
            rest.append(arg)
        i += 1
    return overrides, rest


def load_config(path: str, overrides: Sequence[str] = ()):
    """The ``ml_collections.ConfigDict`` of config file ``path`` (``get_config()``; ``FILE:ARG``
    passes ARG) with ``--config.FIELD=VALUE`` overrides applied by ml_collections, which parses
    each value by the field's type. Raises ``cli.UsageError`` (one line) for a missing or
    broken file, an unknown field or a value of the wrong type."""
    from absl import flags
    from ml_collections import config_flags

    def one_line(e: BaseException) -> str:
        return " ".join(str(e).split())

    file = Path(path)
    if not file.is_file() and not (":" in path and Path(path.rsplit(":", 1)[0]).is_file()):
        raise cli.UsageError(f"--config {path}: no such file")
    argv = ["edsr_jax.train", f"--config={path}", *overrides]
    # ml_collections loads the file as module "config_config" with load_module, which reuses a
    # module of that name left by an earlier load: names the file lacks would come from there
    sys.modules.pop("config_config", None)
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "experiment config file", flag_values=fv,
                                    sys_argv=argv)
    try:
        fv(argv)
        return fv.config
    except flags.Error as e:
        raise cli.UsageError(one_line(e)) from None
    except (KeyError, AttributeError) as e:  # ml_collections: an override of an unknown field
        if "get_config" in str(e):
            raise cli.UsageError(f"--config {path}: defines no get_config() (an experiment config is a "
                                 "Python file whose get_config() returns an ml_collections.ConfigDict)") from None
        raise cli.UsageError(_unknown_field(path, overrides)) from None
    except Exception as e:  # the config file itself failed: SyntaxError, its own errors, ...
        raise cli.UsageError(f"--config {path}: {type(e).__name__}: {one_line(e)}") from None


def _unknown_field(path: str, overrides: Sequence[str]) -> str:
    """The message for the first override naming a field the config of ``path`` lacks:
    ``unknown config field --config.optim.lrr: config.optim has no field 'lrr' (did you mean 'lr'?)``."""
    import difflib

    base = load_config(path)
    for arg in overrides:
        name = arg.split("=")[0]
        node, where = base, "config"
        for part in name.removeprefix("--config.").split("."):
            keys = list(node.keys()) if hasattr(node, "keys") else []
            if part not in keys:
                close = difflib.get_close_matches(part, keys, n=1)
                return (f"unknown config field {name}: {where} has no field {part!r}"
                        + (f" (did you mean {close[0]!r}?)" if close else ""))
            node, where = node[part], f"{where}.{part}"
    return f"unknown config field among {', '.join(a.split('=')[0] for a in overrides)}"


def parse_args(argv: Sequence[str] | None = None):
    """Parse the training command line: ``(options, config)``, the options of ``build_parser``
    and the config file with its overrides (``load_config``). Bad options raise
    ``cli.UsageError``; ``--help`` prints the help and exits 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides, rest = _split_overrides(argv)
    args = build_parser().parse_args(rest)
    return args, load_config(args.config, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """The training CLI: parse, join the cluster when asked, and train. Returns 0, or 1 when
    training stopped on non-finite values (usage errors: ``cli.UsageError``, exit 2)."""
    args, config = parse_args(argv)
    if args.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.distributed or args.coordinator_address:
        jax.distributed.initialize(coordinator_address=args.coordinator_address,
                                   num_processes=args.num_processes, process_id=args.process_id)
    try:
        train(config, args.workdir)
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except checkpoint.CheckpointMismatch as e:
        raise cli.UsageError(str(e)) from None
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
