"""Training: ``python -m edsr_jax.train --config experiments/X.py --workdir runs/X``.

One mesh over every device of every process (axis ``data``); the global batch is sharded
over it, params and optimizer state are replicated, and ``jax.jit`` inserts the gradient
all-reduce. The step functions are pure; ``train`` is the loop around them: data,
evaluation, logging and Orbax checkpoints. Re-running the same command resumes.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from edsr_jax import checkpoint, cli, onednn_conv, xla_options
from edsr_jax import config as config_lib
from edsr_jax.model import EDSR, ModelConfig

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


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


def create_train_state(model: EDSR, tx: optax.GradientTransformation, key: jax.Array,
                       use_ema: bool, params=None) -> TrainState:
    """Fresh state; ``params`` (e.g. fine-tuning weights) replace the random init when given."""
    if params is None:
        params = model.init(key, jnp.zeros((1, 8, 8, 3), jnp.float32))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema=params if use_ema else None, nonfinite=jnp.zeros((), jnp.int32),
                      first_nonfinite=jnp.full((), -1, jnp.int32))


def train_step(state: TrainState, batch: dict, *, model: EDSR, tx: optax.GradientTransformation,
               loss: str = "l1", charbonnier_eps: float = 1e-3,
               ema_decay: float = 0.0) -> tuple[TrainState, dict]:
    """One optimiser step on ``batch = {"lr": (B,p,p,3) uint8, "hr": (B,p*s,p*s,3) uint8}``.

    A non-finite loss or gradient leaves params, optimizer state and EMA unchanged and
    is counted in ``state.nonfinite``. Returns ``(state, {"loss", "grad_norm"})``.
    """
    lr = batch["lr"].astype(jnp.float32)
    hr = batch["hr"].astype(jnp.float32)

    def loss_of(params):
        return pixel_loss(model.apply(params, lr), hr, loss, charbonnier_eps)

    value, grads = jax.value_and_grad(loss_of)(state.params)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)

    def update(state):
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema
        if ema is not None:
            ema = jax.tree_util.tree_map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
        return params, opt_state, ema

    # A branch, not a select of new and old values: the update runs fused once and nothing is
    # copied when it applies (EDSR's Adam with the guard: 248 -> 70 ms on 2 CPU cores).
    params, opt_state, ema = jax.lax.cond(
        finite, update, lambda state: (state.params, state.opt_state, state.ema), state)
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


# --------------------------------------------------------------------------- set-up


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh named ``data`` over every device of every process."""
    return jax.make_mesh((jax.device_count(),), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,))


def compile_train_step(model: EDSR, tx, config, mesh: jax.sharding.Mesh, state_shape,
                       compiler_options: dict | None = None) -> Callable:
    """``train_step`` jitted with replicated state, ``data``-sharded batch, state donated.

    ``compiler_options`` default to ``xla_options.compiler_options`` of the mesh's platform
    (pass ``{}`` for XLA's own defaults)."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    state_sharding = jax.tree_util.tree_map(lambda _: replicated, state_shape)
    step = functools.partial(train_step, model=model, tx=tx, loss=config.optim.loss,
                             charbonnier_eps=config.optim.charbonnier_eps,
                             ema_decay=float(config.train.ema))
    if compiler_options is None:
        compiler_options = xla_options.compiler_options(
            mesh.devices.flat[0].platform, int(config.data.batch_size) // mesh.size)
    return jax.jit(step, in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding, replicated), donate_argnums=(0,),
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


def build_data(config, process_index: int, process_count: int):
    """Training dataset (Grain IterDataset) and validation pairs from the config."""
    from edsr_jax import data, sample_data

    d = config.data
    scale = int(config.model.scale)
    cache = d.cache_dir or None
    train_src = sample_data.resolve(d.train, "train")
    if isinstance(train_src, str) and not Path(train_src).is_dir():
        raise cli.UsageError(f"config.data.train = {train_src!r}: no such folder")
    if d.source == "paired":
        if not isinstance(train_src, str):
            raise cli.UsageError("config.data.source = 'paired' needs config.data.train to be a folder")
        source = data.PairedFolderSource(train_src, scale, lr_name=d.lr_name, cache_dir=cache)
    else:
        source = data.HROnlySource(train_src, scale, spec=d.spec or None, cache_dir=cache)
    dataset = data.make_train_dataset(
        source, patch_size=int(d.patch_size), batch_size=int(d.batch_size), seed=int(config.train.seed),
        patches_per_image=int(d.patches_per_image), num_workers=int(d.num_workers),
        process_index=process_index, process_count=process_count)
    val_src = sample_data.resolve(d.val, "val")
    if isinstance(val_src, str) and not Path(val_src).is_dir():
        raise cli.UsageError(f"config.data.val = {val_src!r}: no such folder")
    val = data.validation_pairs(val_src, scale, spec=d.val_spec or None,
                                max_images=int(d.val_max_images) or None)
    return dataset, val


# --------------------------------------------------------------------------- evaluation


def bicubic_baseline(val_pairs, scale: int) -> dict:
    """Mean ``{"bicubic_psnr", "bicubic_ssim"}`` of MATLAB bicubic upscaling on the validation
    pairs (the papers' protocol); fixed for a run, so computed once."""
    from edsr_jax.evaluate import bicubic_upscale, score_image

    scores = np.asarray([score_image(hr, scale, bicubic_upscale, lr)[:2] for _, lr, hr in val_pairs])
    return {"bicubic_psnr": float(scores[:, 0].mean()), "bicubic_ssim": float(scores[:, 1].mean())}


def evaluate(model_config: ModelConfig, params, val_pairs, baseline: dict,
             dtype: str = "float32") -> dict:
    """PSNR / SSIM (Y channel, border = scale) of the model on whole validation images.

    Returns ``{"psnr", "ssim", "images"}``, the ``baseline`` entries (``bicubic_baseline``)
    and ``"sample"``: (lr, sr, hr) uint8 of the first image for image panels.
    """
    from edsr_jax.evaluate import score_image
    from edsr_jax.infer import Upscaler

    upscaler = Upscaler(model_config, params, dtype=dtype)
    s = model_config.scale
    rows, sample = [], None
    for _, lr, hr in val_pairs:
        p, ss, _, sr = score_image(hr, s, lambda x, _: upscaler(x), lr)
        rows.append((p, ss))
        if sample is None:
            sample = (lr, sr, hr)
    mean = np.mean(np.asarray(rows, np.float64), axis=0)
    return {"psnr": float(mean[0]), "ssim": float(mean[1]), **baseline, "images": len(rows),
            "sample": sample}


# --------------------------------------------------------------------------- the loop


class Logger:
    """Progress bar, TensorBoard events and ``metrics.jsonl``; silent off process 0."""

    def __init__(self, workdir: Path, total: int, start: int, enabled: bool):
        self.enabled = enabled
        self.bar = self.tb = None
        self.jsonl = workdir / "metrics.jsonl"
        if enabled:
            from tqdm import tqdm
            from tensorboardX import SummaryWriter

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                            file=sys.stderr, mininterval=1.0)
            self.tb = SummaryWriter(str(workdir / "tb"))

    def say(self, text: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar else print)(text, file=sys.stderr)

    def train(self, step: int, scalars: dict, advanced: int) -> None:
        if not self.enabled:
            return
        self.bar.update(advanced)
        self.bar.set_postfix(loss=f"{scalars['loss']:.3f}", lr=f"{scalars['lr']:.2e}",
                             patches_s=f"{scalars['patches_per_s']:.1f}")
        for k, v in scalars.items():
            self.tb.add_scalar(f"train/{k}", v, step)

    def eval(self, step: int, result: dict) -> None:
        if not self.enabled:
            return
        record = {k: v for k, v in result.items() if k != "sample"}
        record = {"step": step, **record, "time": time.time()}
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(record) + "\n")
        for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim"):
            self.tb.add_scalar(f"eval/{k}", result[k], step)
        if result.get("sample") is not None:
            from edsr_jax.evaluate import bicubic_upscale

            lr, sr, hr = result["sample"]
            s = hr.shape[0] // lr.shape[0]
            bic = bicubic_upscale(lr, s)
            near = np.repeat(np.repeat(lr, s, axis=0), s, axis=1)[: hr.shape[0], : hr.shape[1]]
            panel = np.concatenate([near, bic, sr, hr], axis=1)
            self.tb.add_image("eval/lr_bicubic_sr_hr", panel, step, dataformats="HWC")
        self.say(f"step {step}: PSNR {result['psnr']:.2f} dB (bicubic {result['bicubic_psnr']:.2f}), "
                 f"SSIM {result['ssim']:.4f} (bicubic {result['bicubic_ssim']:.4f}) "
                 f"on {result['images']} images")

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.tb.close()


class StopRequest:
    """Turns SIGTERM / SIGINT into a flag the loop checks between steps."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


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


def train(config, workdir: str | Path) -> dict:
    """Train (or resume) the experiment ``config`` in ``workdir``; returns the last eval result.

    Raises ``cli.UsageError`` for bad config or data, before anything is compiled.
    """
    workdir = Path(workdir)
    checkpoint.quiet_orbax_logs()
    try:
        config_lib.validate(config, jax.device_count())
    except ValueError as e:
        raise cli.UsageError(str(e)) from None
    model_config = config_lib.model_config(config)
    process_index, process_count = jax.process_index(), jax.process_count()
    main_process = process_index == 0
    n_params = sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(
        jax.eval_shape(lambda: model_config.build().init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))))
    check_workdir(workdir, need_bytes=n_params * 4 * (4 if config.train.ema else 3) * 3)
    from edsr_jax.images import ImageError

    try:
        dataset, val_pairs = build_data(config, process_index, process_count)
    except (ValueError, FileNotFoundError, ImageError) as e:
        raise cli.UsageError(str(e)) from None
    dtype = DTYPES[config.model.dtype]
    mesh = make_mesh()
    try:
        conv_backend = onednn_conv.choose_backend(
            config.train.conv_backend, mesh.devices.flat[0].platform, mesh.size, dtype)
    except ValueError as e:
        raise cli.UsageError(str(e)) from None
    model = model_config.build(dtype=dtype, conv_backend=conv_backend)
    tx, schedule = make_optimizer(config.optim, int(config.train.steps))
    use_ema = config.train.ema > 0
    init = functools.partial(create_train_state, model, tx, use_ema=use_ema)
    state_shape = jax.eval_shape(init, jax.random.key(config.train.seed))
    step_fn = compile_train_step(model, tx, config, mesh, state_shape)
    batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state_sharding = jax.tree_util.tree_map(lambda _: replicated, state_shape)

    from edsr_jax.feed import DeviceFeed

    feed = DeviceFeed(iter(dataset), batch_sharding)
    manager = checkpoint.make_manager(workdir / checkpoint.CHECKPOINT_DIR,
                                      keep_last=config.train.keep_last, keep_best=config.train.keep_best)
    saved_config = {"model": model_config.to_dict(), "experiment": config.to_dict()}
    logger = Logger(workdir, int(config.train.steps), 0, main_process)
    logger.say(f"{mesh.size} {mesh.devices.flat[0].platform} device(s), {config.model.dtype}, "
               f"convolutions by {'oneDNN' if conv_backend == 'onednn' else 'XLA'} "
               f"(train.conv_backend={config.train.conv_backend})")
    latest = manager.latest_step()
    if latest is not None:
        stored = checkpoint.step_config(manager, latest)
        checkpoint.check_model_config(stored.get("model", {}), model_config,
                                      str(workdir / checkpoint.CHECKPOINT_DIR / str(latest)))
        abstract = jax.tree_util.tree_map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state_shape, state_sharding)
        restored, _ = checkpoint.restore(manager, latest, _as_items(abstract), data_iter=feed)
        state = _from_items(restored)
        logger.say(f"resuming from step {int(state.step)} (checkpoint in {manager.directory})")
    else:
        params = None  # a fresh init, or the fine-tuning weights replicated over the mesh
        if config.train.init_from:
            params = replicate(_finetune_params(config, model, model_config, logger), mesh)
        make = jax.jit(lambda key, p: init(key, params=p), out_shardings=state_sharding)
        state = make(jax.random.key(config.train.seed), params)
    start = int(state.step)
    if logger.bar is not None:
        logger.bar.n = start
        logger.bar.refresh()

    total = int(config.train.steps)
    t = config.train
    last_eval: dict = {}
    local_batch = int(config.data.batch_size) // process_count
    tick, tick_step = time.perf_counter(), start
    step = start
    saved_step = start
    baseline = None  # bicubic scores of the validation images, at the first evaluation
    budget_s, started, out_of_time = float(t.max_minutes) * 60.0, time.monotonic(), False
    try:
        with StopRequest() as stop:
            while step < total and stop.signal is None and not out_of_time:
                batch = next(feed)
                state, metrics = step_fn(state, batch)
                step += 1
                out_of_time = budget_s > 0 and step % t.log_every == 0 and _agree(
                    time.monotonic() - started > budget_s)
                done = step == total or out_of_time
                if step % t.log_every == 0 or done:
                    loss = float(metrics["loss"])
                    skipped = _check_finite(state, t.nan_policy)
                    now = time.perf_counter()
                    rate = (step - tick_step) * local_batch * process_count / max(now - tick, 1e-9)
                    logger.train(step, {"loss": loss, "grad_norm": float(metrics["grad_norm"]),
                                        "lr": float(schedule(step)), "patches_per_s": rate,
                                        "skipped_steps": skipped}, step - tick_step)
                    tick, tick_step = now, step
                result = None
                if step % t.eval_every == 0 or done:
                    _check_finite(state, t.nan_policy)
                    weights = state.ema if use_ema else state.params
                    if baseline is None:
                        baseline = bicubic_baseline(val_pairs, model_config.scale)
                    result = evaluate(model_config, local_copy(weights), val_pairs, baseline,
                                      config.model.dtype)
                    logger.eval(step, result)
                    last_eval = result
                if step % t.checkpoint_every == 0 or done or stop.signal is not None:
                    _check_finite(state, t.nan_policy)
                    checkpoint.save(manager, step, _as_items(state), config=saved_config, data_iter=feed,
                                    metrics={"psnr": result["psnr"]} if result else None)
                    saved_step = step
            if stop.signal is not None and saved_step != step:  # the signal came during a save
                checkpoint.save(manager, step, _as_items(state), config=saved_config, data_iter=feed)
    except NonFiniteError:
        manager.wait_until_finished()  # the last good checkpoint must finish writing
        manager.close()
        feed.close()
        logger.close()
        raise
    manager.wait_until_finished()
    manager.close()
    feed.close()
    if out_of_time:
        logger.say(f"time budget of {t.max_minutes:g} min used up at step {step}; checkpoint saved. "
                   "Re-run the same command to continue.")
    if stop.signal is not None:
        logger.say(f"stopped by signal {stop.signal} at step {step}; checkpoint saved. "
                   "Re-run the same command to resume.")
    logger.close()
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


def _finetune_params(config, model: EDSR, model_config: ModelConfig, logger: Logger):
    """Fresh init with every matching parameter taken from ``config.train.init_from``."""
    source = config.train.init_from
    try:
        loaded_config, loaded, _ = checkpoint.restore_params(source, prefer_ema=True)
    except checkpoint.CheckpointNotFound as e:
        raise cli.UsageError(f"config.train.init_from: {e}") from None
    fresh = model.init(jax.random.key(config.train.seed), jnp.zeros((1, 8, 8, 3)))
    # A different scale means a different upsampler: re-initialise it and the tail (the paper).
    skip = ("upsample_", "tail") if loaded_config.scale != model_config.scale else ()
    merged, took, kept = merge_params(jax.device_get(fresh), jax.device_get(loaded), skip)
    logger.say(f"fine-tuning from {source} ({loaded_config}): loaded {len(took)} arrays; "
               f"freshly initialised {len(kept)}: {', '.join(kept) if kept else 'none'}")
    return merged


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
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "experiment config file", flag_values=fv,
                                    sys_argv=argv)
    try:
        fv(argv)
        return fv.config
    except flags.Error as e:
        raise cli.UsageError(one_line(e)) from None
    except (KeyError, AttributeError) as e:  # ml_collections: an override of an unknown field
        import re

        hint = re.search(r'Did you mean "[^"]*" instead of "[^"]*"\?', str(e))
        names = [a.split("=")[0] for a in overrides]
        raise cli.UsageError(f"unknown config field among {', '.join(names)}"
                             + (f" ({hint.group(0)})" if hint else "")) from None
    except Exception as e:  # the config file itself failed: SyntaxError, its own errors, ...
        raise cli.UsageError(f"--config {path}: {type(e).__name__}: {one_line(e)}") from None


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
