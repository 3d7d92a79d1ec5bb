"""Everything Orbax: training checkpoints, their config, and loading weights for inference.

A training workdir holds ``checkpoints/<step>/`` with the items

- ``params`` / ``opt_state`` / ``ema`` (optional): the train state pytrees,
- ``meta``: ``{"step": int}``,
- ``data_iter``: the Grain iterator state (one file per JAX process),
- ``config``: JSON ``{"model": ModelConfig fields, "experiment": full config, "note": str}``.

Orbax writes each step into a temporary directory and renames it when complete, so a
killed save never looks like a checkpoint. ``save_params_checkpoint`` writes the same
layout with only ``params``, ``meta`` and ``config`` (an imported or exported model).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from edsr_jax.model import ModelConfig

CHECKPOINT_DIR = "checkpoints"
PSNR_KEY = "psnr"


class CheckpointMismatch(ValueError):
    """A checkpoint whose architecture differs from the requested one; lists the fields."""


class CheckpointNotFound(FileNotFoundError):
    """No complete checkpoint at the given path; the message names the path."""


def quiet_orbax_logs() -> None:
    """Hide Orbax's info/warning chatter (e.g. saves without a metric) from the console."""
    logging.getLogger("absl").setLevel(logging.ERROR)


def make_manager(directory: str | Path, *, keep_last: int = 2, keep_best: int = 1,
                 read_only: bool = False) -> ocp.CheckpointManager:
    """A CheckpointManager that keeps the newest ``keep_last`` steps and the best
    ``keep_best`` by validation PSNR (``metrics={"psnr": float}`` passed to ``save``).

    Saves are asynchronous; stray temporary directories of interrupted saves are removed.
    """
    quiet_orbax_logs()
    keep = [policies.LatestN(max(1, keep_last))]
    if keep_best > 0:
        keep.append(policies.BestN(get_metric_fn=lambda m: m[PSNR_KEY], n=keep_best,
                                   keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(keep),
        best_fn=lambda m: m[PSNR_KEY], best_mode="max",
        cleanup_tmp_directories=not read_only, read_only=read_only,
        create=not read_only, enable_async_checkpointing=True)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: dict, *, config: dict,
         data_iter=None, metrics: dict | None = None) -> None:
    """Start an async save of ``state`` (``{"params", "opt_state", "ema"?}`` pytrees) at ``step``.

    ``config`` is the JSON-able description (``{"model": ..., "experiment": ...}``);
    ``data_iter`` a Grain iterator whose position is saved too; ``metrics`` e.g.
    ``{"psnr": 30.1}`` ranks the step for keep-best.
    """
    import grain

    items = {name: ocp.args.StandardSave(tree) for name, tree in state.items() if tree is not None}
    items["meta"] = ocp.args.JsonSave({"step": int(step)})
    items["config"] = ocp.args.JsonSave(config)
    if data_iter is not None:
        items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    manager.save(int(step), args=ocp.args.Composite(**items), metrics=metrics, force=True)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: dict, *,
            data_iter=None) -> tuple[dict, dict]:
    """Restore the train state saved at ``step`` into the shapes/shardings of ``abstract_state``
    (a pytree of ``jax.ShapeDtypeStruct``); set ``data_iter``'s position in place.

    Returns ``(state, config)``.
    """
    import grain

    present = saved_items(Path(manager.directory) / str(step))
    items = {name: ocp.args.StandardRestore(tree) for name, tree in abstract_state.items()
             if tree is not None and name in present}
    items["config"] = ocp.args.JsonRestore()
    if data_iter is not None and "data_iter" in present:
        items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = manager.restore(int(step), args=ocp.args.Composite(**items))
    state = {name: restored[name] if name in items else None for name in abstract_state}
    return state, restored["config"]


def saved_items(step_dir: Path) -> set[str]:
    """Names of the items stored in one checkpoint step directory."""
    return {p.name for p in Path(step_dir).iterdir() if p.is_dir()}


def config_differences(saved: dict, wanted: dict) -> list[str]:
    """Lines ``field: checkpoint=A, config=B`` for every differing model field."""
    keys = sorted(set(saved) | set(wanted))
    return [f"{k}: checkpoint={saved.get(k)!r}, config={wanted.get(k)!r}"
            for k in keys if saved.get(k) != wanted.get(k)]


def check_model_config(saved: dict, wanted: ModelConfig, where: str) -> None:
    """Raise CheckpointMismatch listing the fields where ``saved`` differs from ``wanted``."""
    diffs = config_differences(saved, wanted.to_dict())
    if diffs:
        raise CheckpointMismatch(
            f"checkpoint {where} was made for another model:\n  " + "\n  ".join(diffs)
            + "\n(use another --workdir, or change the config back)")


def locate(path: str | Path) -> tuple[Path, int]:
    """Resolve a workdir, its ``checkpoints`` folder or one step folder to
    ``(manager_directory, step)``; the step is the best by PSNR when known, else the newest.

    Raises CheckpointNotFound naming the path when nothing complete is there.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFound(f"{path}: no such checkpoint or workdir")
    if path.name.isdigit() and (path / "config").is_dir():
        return path.parent, int(path.name)
    directory = path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path
    manager = make_manager(directory, read_only=True)
    step = manager.best_step()
    if step is None:
        step = manager.latest_step()
    if step is None:
        raise CheckpointNotFound(f"{path}: holds no complete checkpoint")
    return directory, int(step)


def step_config(manager: ocp.CheckpointManager, step: int) -> dict:
    """The JSON config saved with checkpoint ``step`` of ``manager``."""
    return manager.restore(int(step), args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]


def read_config(path: str | Path) -> dict:
    """The JSON config stored with the checkpoint at ``path`` (see ``locate``)."""
    directory, step = locate(path)
    return step_config(make_manager(directory, read_only=True), step)


def _abstract_params(config: ModelConfig):
    import jax.numpy as jnp

    model = config.build()
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def restore_params(path: str | Path, *, prefer_ema: bool = True) -> tuple[ModelConfig, Any, dict]:
    """Load weights from a workdir or checkpoint: ``(ModelConfig, params, config)``.

    The EMA weights are returned when the run kept them and ``prefer_ema``; params are
    NumPy-backed jax arrays on the first local device, float32.
    """
    directory, step = locate(path)
    manager = make_manager(directory, read_only=True)
    config = step_config(manager, step)
    try:
        model_config = ModelConfig(**config["model"])
    except (KeyError, TypeError) as e:
        raise CheckpointMismatch(f"{directory / str(step)}: config has no valid model entry ({e})") from None
    present = saved_items(directory / str(step))
    name = "ema" if prefer_ema and "ema" in present else "params"
    restored = manager.restore(step, args=ocp.args.Composite(
        **{name: ocp.args.StandardRestore(_abstract_params(model_config))}))
    return model_config, restored[name], config


def restore_for_inference(path: str | Path) -> tuple[ModelConfig, Any]:
    """``(ModelConfig, params)`` for inference from a workdir or checkpoint (EMA when kept)."""
    model_config, params, _ = restore_params(path, prefer_ema=True)
    return model_config, params


def save_params_checkpoint(path: str | Path, model_config: ModelConfig, params, *,
                           note: str = "", experiment: dict | None = None) -> Path:
    """Write ``params`` as an ordinary checkpoint (step 0) under ``path/checkpoints``.

    ``params`` is the variables dict of ``model.init`` (``{"params": {...}}``), float32.
    Usable by fine-tuning, upscale, evaluate and export. Refuses (FileExistsError) when
    ``path`` already holds a checkpoint. Returns the step directory.
    """
    if not isinstance(params, dict) or set(params) != {"params"}:
        raise ValueError("save_params_checkpoint expects the variables of model.init: {'params': {...}}")
    path = Path(path)
    directory = path / CHECKPOINT_DIR
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{path}: already holds checkpoints; choose an empty folder")
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
    manager = make_manager(directory)
    config = {"model": model_config.to_dict(), "experiment": experiment or {}, "note": note}
    save(manager, 0, {"params": params}, config=config)
    manager.wait_until_finished()
    manager.close()
    return directory / "0"
