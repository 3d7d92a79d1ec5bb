"""One training run: ``train(config, workdir, upscaler=Upscaler)`` trains (or resumes) an experiment.

``Run`` sets a run up once (mesh and shardings, model, optimiser, compiled step, batch feed,
checkpoint manager, validation set) and ``loop`` steps it, with logging (``run_log``),
evaluation (``evaluator``) and Orbax checkpoints at their intervals. ``train`` is the two,
closed through one ``ExitStack``. Re-running the same command resumes.

Validation applies the weights with the ``upscaler`` the caller passes
(``inference.infer.Upscaler``, as the train command does): inference reads what training
writes, so the training wing does not import inference.

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
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from edsr_jax.io import cli, outputs, run_lock
from edsr_jax.io.images import ImageError
from edsr_jax.nets import onednn_conv, xla_options
from edsr_jax.nets.edsr import DTYPES, count_params
from edsr_jax.nets.mdsr import MDSRConfig
from edsr_jax.training import checkpoint, restore
from edsr_jax.training import workdir as workdir_files
from edsr_jax.training import config as config_lib
from edsr_jax.training.datasets import (augmentation_note, device_damage, resolve_input, resolve_lr_name,
                                        train_dataset, validation_set)
from edsr_jax.training.finetune import finetune_params, load_source
from edsr_jax.training.optim import make_optimizer
from edsr_jax.training.run_log import Logger, StopRequest
from edsr_jax.training.sharding import local_copy, make_mesh, make_shardings, replicate, sharded_state
from edsr_jax.training.state import (TrainState, can_flatten, create_train_state, init_variables, to_flat,
                                     to_tree, tree_of)
from edsr_jax.training.step import check_finite, compile_train_step, shards_state


class Run:
    """One training run, set up once: config, mesh and shardings, model, optimiser, compiled
    step, validation set, batch feed, checkpoint manager, logger.

    ``Run(config, workdir, stack, upscaler)`` checks the config and the data (``cli.UsageError``)
    before it compiles anything or writes to ``workdir``; everything that needs closing
    (feed thread, checkpoint manager, logger) is registered on ``stack``, so it is closed
    on every way out. ``restore_or_init`` gives the first state; ``train_step``,
    ``log_train``, ``evaluate`` and ``save`` are what the loop calls.

    For an MDSR (``mdsr`` True) ``scales`` are its scales, ``evaluators`` one validation set
    per scale, ``feed`` a ``feed.MultiScaleFeed`` (batches carry their ``"scale"``) and
    ``train_step`` runs ``compiled_step`` at the batch's scale; the loop is the same.

    ``upscaler`` applies the weights to the validation images: ``upscaler(model_config,
    params, dtype=..., scale=...)`` maps ``(H, W, 3)`` uint8 to ``(s*H, s*W, 3)`` uint8, and
    ``.at_scale(s)`` gives an MDSR's other scales (``inference.infer.Upscaler``).
    """

    def __init__(self, config, workdir: Path, stack: contextlib.ExitStack, upscaler: Callable):
        self.config, self.workdir = config, Path(workdir)
        self.upscaler = upscaler
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
        workdir_files.check(self.workdir)  # checkpoints / tb not folders, log files linked out of it
        self.init_source = load_source(config, self.workdir)  # train.init_from, read before writing
        check_workdir(self.workdir, need_bytes=n_params * 4 * (4 if config.train.ema else 3) * 3)
        self.previous_holder = None
        if self.main_process:  # one trainer per workdir, taken before anything is written there
            try:
                self.previous_holder = stack.enter_context(run_lock.RunLock(self.workdir)).previous
            except (run_lock.WorkdirBusy, OSError) as e:
                raise cli.UsageError(str(e)) from None
            outputs.check_appendable(self.workdir / "metrics.jsonl")
        note = resolve_lr_name(config)
        self.damage_line = self._check_resumable()  # resolves data.loader and data.degrade_on too
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
        tree_shape = jax.eval_shape(self.init, jax.random.key(config.train.seed))
        # The state the step takes: the tree, or its flat form where the platform's step updates
        # that in one pass (xla_options.StepFormulation.flat_state); checkpoints hold the tree.
        self.formulation = xla_options.step_formulation(self.mesh.devices.flat[0].platform)
        # On several devices the flat arrays may be split over them (StepFormulation.shard_update):
        # padded to a multiple of the device count, each device keeps and updates its share.
        self.flat = self.formulation.flat_state and can_flatten(tree_shape.params)
        self.multiple = self.mesh.size if self.flat and self.formulation.shard_update else 1
        order = self.formulation.kernel_order
        state_shape = (jax.eval_shape(lambda s: to_flat(s, order, self.multiple), tree_shape)
                       if self.flat else tree_shape)
        self.shardings = make_shardings(self.mesh, state_shape,
                                        shard_flat=shards_state(self.formulation, self.mesh, state_shape))
        tree_sharding = make_shardings(self.mesh, tree_shape).state
        same = lambda s: s  # noqa: E731
        self.to_step_form = (jax.jit(lambda s: to_flat(s, order, self.multiple),
                                     out_shardings=self.shardings.state) if self.flat else same)
        # the weights evaluation reads: a tree, whole on every device
        self.weights_of = jax.jit(tree_of, out_shardings=self.shardings.replicated) if self.flat else same
        self.to_tree = jax.jit(to_tree, out_shardings=tree_sharding) if self.flat else same
        damage = None  # the LR comes with the batch, or is made in the step (one per MDSR scale)
        if config.data.degrade_on == "device":
            damage = {s: device_damage(config, s) for s in self.scales} if self.mdsr else device_damage(config)
        self.compiled_step = compile_train_step(self.model, self.tx, config, self.mesh, state_shape,
                                                shardings=self.shardings, damage=damage,
                                                formulation=self.formulation)
        self.train_step = self._scaled_step if self.mdsr else self.compiled_step
        self.abstract_state = jax.tree_util.tree_map(  # the tree form: what checkpoints hold
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), tree_shape, tree_sharding)
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
        if self.flat:
            self.logger.say("train state kept flat: parameters, Adam moments and EMA one array each, "
                            "updated in one pass (xla_options.StepFormulation.flat_state)"
                            + (f", each split over the {self.mesh.size} devices (shard_update)"
                               if sharded_state(self.shardings) else "") + "; checkpoints hold the usual trees")
        self.logger.say(self.damage_line)
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
        counters and data position; ``restore.restore_newest``), or a fresh state
        (fine-tuning weights from ``config.train.init_from`` when set) when it holds none.

        Config changes since the checkpoint are printed; a changed validation protocol or
        training data needs ``train.new_protocol`` (else ``cli.UsageError``)."""
        directory = self.workdir / checkpoint.CHECKPOINT_DIR
        resumed = bool(checkpoint.step_numbers(directory))
        if resumed:
            state = self._resume(directory)
        elif directory.is_dir() and any(p.name.endswith(".damaged") for p in directory.iterdir()):
            raise cli.UsageError(f"--workdir {self.workdir}: holds only damaged checkpoints "
                                 f"({directory}/*.damaged); nothing is started over them: move them away "
                                 "to start afresh, or use another --workdir")
        else:
            params = None  # a fresh init, or the fine-tuning weights replicated over the mesh
            if self.config.train.init_from:
                params = replicate(finetune_params(self.config, self.model, self.model_config,
                                                   self.logger.say, self.init_source), self.mesh)
            make = jax.jit(lambda key, p: self.init(key, params=p, flat=self.flat, multiple=self.multiple,
                                                    kernel_order=self.formulation.kernel_order),
                           out_shardings=self.shardings.state)
            state = make(jax.random.key(self.config.train.seed), params)
        self.logger.start(int(state.step), fresh=not resumed)  # logs kept true to the step started from
        self._tick = (time.perf_counter(), int(state.step))
        return state

    def _check_resumable(self) -> str:
        """Before anything is built or written: the newest readable stored config must be of
        this architecture, and the protocol / data may change only with ``train.new_protocol``
        (``cli.UsageError``, one line). ``_resume`` checks the step it restores again.
        Resolves ``data.loader`` and ``data.degrade_on`` ("auto": a resumed run keeps its
        choices) and returns the line saying where the damage is made."""
        directory = self.workdir / checkpoint.CHECKPOINT_DIR
        stored, where = None, None
        for step in checkpoint.step_numbers(directory):
            try:
                item = restore.read_item(directory / str(step), "config", checkpoint.ocp.args.JsonRestore())
            except checkpoint.ItemDamaged:
                continue
            if isinstance(item, dict):
                stored, where = item, directory / str(step)
                break
        line = resolve_input(self.config, stored and stored.get("experiment", {}), jax.devices()[0].platform)
        if stored is not None:
            checkpoint.check_model_config(stored.get("model", {}), self.model_config, str(where))
            try:
                config_lib.resume_changes(config_lib.stored_meaning(stored.get("experiment", {})),
                                          self.config.to_dict(), bool(self.config.train.new_protocol))
            except config_lib.ProtocolChange as e:
                raise cli.UsageError(str(e)) from None
        return line

    def _resume(self, directory: Path) -> TrainState:
        """Restore with fallback over damaged steps; adapt to config changes and say each."""
        plan: dict = {}

        def check(stored: dict) -> None:
            checkpoint.check_model_config(stored.get("model", {}), self.model_config, str(directory))
            experiment = config_lib.stored_meaning(stored.get("experiment", {}))
            lines, new = config_lib.resume_changes(experiment, self.config.to_dict(),
                                                   bool(self.config.train.new_protocol))
            old_data = config_lib.flatten(experiment)
            now = config_lib.flatten(self.config.to_dict())
            plan.update(lines=lines, new=new, protocol=int(stored.get("protocol", 0)),
                        data_changed=any(old_data.get(k, now.get(k)) != now.get(k)
                                         for k in config_lib.DATA_FIELDS + config_lib.STREAM_FIELDS),
                        ema_stored=float(stored.get("experiment", {}).get("train", {}).get("ema", 0.0)))

        try:
            step, restored, _, notes = restore.restore_newest(
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
            say("note: the training data, or how its patches are cut or damaged, changed; the data order "
                "starts afresh from this step")
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
        state = self.to_step_form(_from_items(restored))
        say(f"resuming from step {int(state.step)} (checkpoint in {self.manager.directory})")
        return state

    def log_train(self, step: int, state: TrainState, metrics: dict) -> None:
        """Loss, gradient norm, learning rate and patches/s since the last call; stops on a
        non-finite step when ``train.nan_policy`` is "stop" (``NonFiniteError``)."""
        skipped = check_finite(state, self.config.train.nan_policy)
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
        check_finite(state, self.config.train.nan_policy)
        weights = local_copy(self.weights_of(state.ema if self.use_ema else state.params))
        if not self.mdsr:
            upscaler = self.upscaler(self.model_config, weights, dtype=self.config.model.dtype)
            result = {**self.evaluator(lambda lr, _: upscaler(lr)), **self.evaluator.baseline,
                      "protocol": self.protocol}
            self.logger.eval(step, result)
            return result
        upscaler = self.upscaler(self.model_config, weights, dtype=self.config.model.dtype,
                                 scale=self.scales[0])
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
        return self.compiled_step(state, {k: v for k, v in batch.items() if k != "scale"}, batch["scale"])

    def save(self, step: int, state: TrainState, result: dict | None = None) -> None:
        """Start an async checkpoint of ``state`` and the data position (ranked by ``result``'s PSNR)."""
        check_finite(state, self.config.train.nan_policy)
        checkpoint.save(self.manager, step, _as_items(self.to_tree(state)), config=self.saved_config, data_iter=self.feed,
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
        checkpoint.close(manager)


def train(config, workdir: str | Path, *, upscaler: Callable) -> dict:
    """Train (or resume) the experiment ``config`` in ``workdir``; returns the last eval result.
    ``upscaler``: what validation applies the weights with (``inference.infer.Upscaler``; see
    ``Run``).

    A run that reaches ``train.steps`` ends with its summary (``summary.summary_lines``: best
    PSNR against bicubic, checkpoints, wall time, next commands); one that had reached it
    already says "already finished at step N" with the summary, trains nothing and returns {}.

    Raises ``cli.UsageError`` for bad config or data, before anything is compiled; the feed,
    checkpoint manager and logger are closed however the loop ends.
    """
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        run = Run(config, Path(workdir), stack, upscaler)
        state = run.restore_or_init()
        if int(state.step) >= int(config.train.steps):
            _say_summary(run, workdir, int(state.step), None, already=True)
            return {}
        stop = stack.enter_context(StopRequest())
        result = loop(run, state, stop)
        if run.finished:
            _say_summary(run, workdir, int(config.train.steps), time.monotonic() - started)
        return result


def _say_summary(run: Run, workdir, step: int, wall_s: float | None, already: bool = False) -> None:
    from edsr_jax.training.summary import summary_lines

    if run.main_process:
        for line in summary_lines(workdir, run.config, step=step, protocol=run.protocol, wall_s=wall_s,
                                  already=already):
            run.logger.say(line)


def loop(run: Run, state: TrainState, stop: StopRequest) -> dict:
    """Steps from ``state`` to ``train.steps``, a signal or the time budget, with logging,
    evaluation and checkpoints at their intervals; returns the last eval result ({} if none).
    Sets ``run.finished`` when it reached ``train.steps`` (its checkpoints written)."""
    t = run.config.train
    total, step = int(t.steps), int(state.step)
    saved, last_eval, out_of_time, started = step, {}, False, time.monotonic()
    run.finished = False
    if step < total:
        run.logger.open_bar()
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
    if out_of_time and step < total:
        run.logger.say(f"time budget of {t.max_minutes:g} min used up at step {step}; checkpoint saved. "
                       "Re-run the same command to continue.")
    elif stop.signal is not None and step < total:
        run.logger.say(f"stopped by signal {stop.signal} at step {step}; checkpoint saved. "
                       "Re-run the same command to resume.")
    run.finished = step >= total
    if run.finished and run.logger.bar is not None:
        run.logger.bar.close()  # the summary follows below the finished bar
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
