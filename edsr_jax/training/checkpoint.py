"""The checkpoint format: a training workdir's checkpoint folder, writing it, finding its steps.

A training workdir holds ``checkpoints/<step>/`` with the items

- ``params`` / ``opt_state`` / ``ema`` (optional): the train state pytrees,
- ``meta``: ``{"step": int}``,
- ``data_iter``: the Grain iterator state (one file per JAX process),
- ``config``: JSON ``{"model": ModelConfig fields, "experiment": full config, "note": str}``.

Orbax writes each step into a temporary directory and renames it when complete, so a
killed save never looks like a checkpoint. ``save_params_checkpoint`` writes the same
layout with only ``params``, ``meta`` and ``config`` (an imported or exported model).

Here: the manager and its keep policy (``make_manager``), asynchronous saves (``save``,
``wait``), the steps of a folder in the order a tool tries them (``step_numbers``,
``ranked_steps``, ``candidates``), what a folder is when it is no run (``not_a_run_folder``),
the model record of ``config`` (``model_config_to_dict``, ``check_model_config``) and the
errors of every checkpoint path. Reading, validated step by step with fallback to older
steps, is ``restore``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from edsr_jax.nets.edsr import ModelConfig

CHECKPOINT_DIR = "checkpoints"
PSNR_KEY = "psnr"


class CheckpointMismatch(ValueError):
    """A checkpoint whose architecture differs from the requested one; lists the fields."""


class CheckpointNotFound(FileNotFoundError):
    """No complete checkpoint at the given path; the message names the path."""


class CheckpointDamaged(ValueError):
    """No step of a checkpoint folder could be read completely; the message names each
    step tried and the item that failed."""


class ItemDamaged(Exception):
    """One item of one step could not be read (``item``, ``reason``)."""

    def __init__(self, item: str, reason: str):
        super().__init__(f"{item}: {reason}")
        self.item, self.reason = item, reason


def quiet_orbax_logs() -> None:
    """Hide Orbax's chatter (e.g. saves without a metric) from the console, and its logged
    tracebacks of failed background writes: those errors reach our code again (from
    ``save``/``wait_until_finished``), which reports them in one line."""
    import warnings

    logging.getLogger("absl").setLevel(logging.CRITICAL)
    # After a failed save (a full disk), Orbax's save coroutines that never ran are reported
    # at exit ("coroutine '...CheckpointHandler.async_save' was never awaited"): the failure
    # itself is reported once, as a WriteError.
    warnings.filterwarnings("ignore", message=r"coroutine '\w*CheckpointHandler\.async_save' was never awaited",
                            category=RuntimeWarning)
    quiet_failed_reads()


def make_manager(directory: str | Path, *, keep_last: int = 2, keep_best: int = 1,
                 read_only: bool = False, protocol: int | Callable[[], int] = 0) -> ocp.CheckpointManager:
    """A CheckpointManager that keeps the newest ``keep_last`` steps and the best
    ``keep_best`` by validation PSNR (``metrics={"psnr": float, "protocol": int}`` passed to
    ``save``). Only steps scored under the current validation ``protocol`` (a number, or a
    function giving it) compete for best: a PSNR measured another way never evicts one of
    this protocol (it ranks below all of them).

    Saves are asynchronous; stray temporary directories of interrupted saves are removed.
    """
    quiet_orbax_logs()
    current = protocol if callable(protocol) else (lambda: protocol)

    def score(m: dict) -> float:
        return float(m[PSNR_KEY]) if int(m.get("protocol", 0)) == current() else float("-inf")

    keep = [policies.LatestN(max(1, keep_last))]
    if keep_best > 0:
        keep.append(policies.BestN(get_metric_fn=score, n=keep_best,
                                   keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(keep),
        best_fn=score, best_mode="max",
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
    try:
        manager.save(int(step), args=ocp.args.Composite(**items), metrics=metrics, force=True)
    except Exception as e:  # this save, or the previous async one, could not be written
        _raise_write_failure(manager, e)


def wait(manager: ocp.CheckpointManager) -> None:
    """Wait for the async save in flight; a failed one (e.g. a full disk) becomes one
    ``outputs.WriteError`` line naming the folder and the newest complete step."""
    try:
        manager.wait_until_finished()
    except Exception as e:
        _raise_write_failure(manager, e)


def close(manager: ocp.CheckpointManager) -> None:
    """Close ``manager``; its last background write failing there (a full disk: Orbax's
    metadata is written on close) is the same one ``WriteError`` line as in ``wait``."""
    try:
        manager.close()
    except Exception as e:
        _raise_write_failure(manager, e)


def _raise_write_failure(manager: ocp.CheckpointManager, e: Exception) -> None:
    from edsr_jax.io import outputs

    text = str(e)
    if isinstance(e, OSError) or "No space left" in text or "RESOURCE_EXHAUSTED" in text or "os_error_code" in text:
        steps = step_numbers(manager.directory)
        reason = "no space left on device" if ("No space left" in text or "RESOURCE_EXHAUSTED" in text) else \
            (outputs.describe_os_error(e) if isinstance(e, OSError) else " ".join(text.split())[:120])
        raise outputs.WriteError(
            f"{manager.directory}: could not write a checkpoint ({reason}); the newest complete one is "
            + (f"step {steps[0]}" if steps else "none") + " (an unfinished save is never resumed from)") from None
    raise e


def saved_items(step_dir: Path) -> set[str]:
    """Names of the items stored in one checkpoint step directory."""
    return {p.name for p in Path(step_dir).iterdir() if p.is_dir()}


def step_numbers(directory: str | Path) -> list[int]:
    """The committed steps in a checkpoint folder, newest first (Orbax's temporary folders of
    unfinished saves have no plain number as name and are never listed)."""
    try:
        names = [p.name for p in Path(directory).iterdir() if p.is_dir()]
    except (FileNotFoundError, NotADirectoryError):  # none yet; a file in its place holds none
        return []
    return sorted((int(n) for n in names if n.isdigit()), reverse=True)


def step_metrics(step_dir: str | Path) -> dict | None:
    """The metrics saved with one step (``{"psnr": ..., "protocol": ...}``), or None."""
    import json

    try:
        value = json.loads((Path(step_dir) / "metrics" / "metrics").read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) and isinstance(value.get(PSNR_KEY), (int, float)) else None


def ranked_steps(directory: str | Path) -> list[int]:
    """Steps in the order a tool should try them: the best by validation PSNR under the newest
    validation protocol first (when any step was scored), then the others newest first."""
    steps = step_numbers(directory)
    scored = {s: m for s in steps if (m := step_metrics(Path(directory) / str(s))) is not None}
    if not scored:
        return steps
    protocol = max(int(m.get("protocol", 0)) for m in scored.values())
    same = [s for s, m in scored.items() if int(m.get("protocol", 0)) == protocol]
    best = max(same, key=lambda s: (scored[s][PSNR_KEY], s))
    return [best] + [s for s in steps if s != best]


def quiet_failed_reads() -> None:
    """After a failed TensorStore read, Orbax's thread callbacks and its abandoned read
    coroutines report unraisable exceptions ("Event loop is closed", "Encountered error
    while reading array index") long after the error was handled; keep those off the
    console (any other unraisable exception still goes to the previous hook)."""
    import sys

    previous = sys.unraisablehook
    if getattr(previous, "_edsr_quiet", False):
        return

    def hook(u):
        if u.exc_type is RuntimeError and "Event loop is closed" in str(u.exc_value):
            return
        code = getattr(u.object, "cr_code", None)  # a read coroutine of Orbax dropped after the error
        if code is not None and "orbax" in code.co_filename:
            return
        previous(u)

    hook._edsr_quiet = True
    sys.unraisablehook = hook
    # The sibling reads and writes of a failed one end as "Task exception was never retrieved"
    # or "_GatheringFuture exception was never retrieved" (asyncio names the future's class).
    # A failed write's sibling (a plain Future) names Orbax only in its traceback.
    logging.getLogger("asyncio").addFilter(
        lambda r: not (str(r.msg).split("\n", 1)[0].endswith("exception was never retrieved")
                       and _names_orbax(r)))


def _names_orbax(record: logging.LogRecord) -> bool:
    """True when a log record's message or the traceback it carries passes through Orbax."""
    import traceback

    if "orbax" in record.getMessage():
        return True
    exc = record.exc_info[1] if record.exc_info else None
    while exc is not None:
        if any("orbax" in f.filename for f in traceback.extract_tb(exc.__traceback__)):
            return True
        exc = exc.__context__ or exc.__cause__
    return False


def config_differences(saved: dict, wanted: dict) -> list[str]:
    """Lines ``field: checkpoint=A, config=B`` for every differing model field."""
    keys = sorted(set(saved) | set(wanted))
    return [f"{k}: checkpoint={saved.get(k)!r}, config={wanted.get(k)!r}"
            for k in keys if saved.get(k) != wanted.get(k)]


def check_model_config(saved: dict, wanted, where: str) -> None:
    """Raise CheckpointMismatch listing the fields where ``saved`` (a checkpoint's
    ``config["model"]``) differs from ``wanted`` (a ``ModelConfig`` or an ``mdsr.MDSRConfig``;
    an MDSR checkpoint differs from an EDSR config in ``arch``)."""
    diffs = config_differences(saved, model_config_to_dict(wanted))
    if diffs:
        raise CheckpointMismatch(
            f"checkpoint {where} was made for another model:\n  " + "\n  ".join(diffs)
            + "\n(use another --workdir, or change the config back)")


def candidates(path: str | Path) -> tuple[Path, list[int], bool]:
    """Resolve a workdir, its ``checkpoints`` folder or one step folder to
    ``(checkpoint_directory, steps to try in order, explicit)``: one step folder gives that
    step only (``explicit``); otherwise ``ranked_steps`` (best by PSNR first, then newest).

    Raises CheckpointNotFound naming the path when nothing is there.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFound(f"{path}: no such checkpoint or workdir")
    if not path.is_dir():
        raise CheckpointNotFound(f"{path}: is a file, not a checkpoint or workdir (a folder)")
    if path.name.isdigit() and path.is_dir() and path.parent.name != "" and (
            (path / "config").is_dir() or (path / "params").is_dir() or (path / "_CHECKPOINT_METADATA").exists()):
        return path.parent, [int(path.name)], True
    directory = path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path
    steps = ranked_steps(directory)
    if not steps:
        raise CheckpointNotFound(f"{path}: holds no complete checkpoint")
    return directory, steps, False


def not_a_run_folder(path: str | Path) -> str | None:
    """What ``path`` is when it cannot be a training workdir, else None (also for a new or
    empty folder, or a run's own workdir):

    a run's ``checkpoints`` folder, one checkpoint step, one item of a step, an Orbax
    temporary folder, a dataset or image folder, or a params-only checkpoint
    (``export --from-torch``, ``save_params_checkpoint``: no optimiser state to resume);
    or a new folder inside one of the checkpoint kinds."""
    path = Path(path)
    what = _checkpoint_kind(path)
    if what:
        return what
    for parent in list(path.absolute().parents)[:4]:
        what = _checkpoint_kind(parent)
        if what:
            return f"inside {parent}, {what}"
    if not path.is_dir():
        return None
    names = {p.name for p in path.iterdir()}
    if "HR" in names and any(n.startswith("LR_") for n in names):
        return "a dataset folder (DIV2K layout, e.g. made by prepare), not a run"
    from edsr_jax.io.images import is_image_file

    if any(is_image_file(n) for n in names):
        return "a folder of images, not a run"
    ck = path / CHECKPOINT_DIR
    steps = step_numbers(ck)
    if steps and all(not (ck / str(s) / "opt_state").exists() and not (ck / str(s) / "counters").exists()
                     for s in steps):
        return ("a params-only checkpoint (an imported or exported model, no optimiser state); "
                f"fine-tune from it with --config.train.init_from={path} and a new --workdir")
    return None


def _checkpoint_kind(path: Path) -> str | None:
    """``path`` as a piece of a checkpoint (a checkpoints folder, a step, an item, a
    temporary folder), or None."""
    try:
        names = {p.name for p in path.iterdir()} if path.is_dir() else set()
    except OSError:
        return None
    if not names:
        return None
    if _is_step(path, names):
        return f"a checkpoint step folder (of {path.parent})"
    if names & {"_METADATA", "manifest.ocdbt", "_sharding"} or "metadata" in names and "commit_success.txt" in names:
        return f"one item of a checkpoint step ({path.parent})"
    if ".orbax-checkpoint-tmp" in path.name:
        return "an unfinished (temporary) checkpoint folder"
    if any(_is_step(path / str(s)) for s in step_numbers(path)[:3]):
        return "a run's checkpoints folder; pass the run's workdir (its parent) instead"
    return None


def _is_step(path: Path, names: set[str] | None = None) -> bool:
    """A folder Orbax wrote as one checkpoint step (by its metadata file or its items)."""
    if names is None:
        try:
            names = {p.name for p in path.iterdir()}
        except OSError:
            return False
    return "_CHECKPOINT_METADATA" in names or (path.name.isdigit() and len(names & {"params", "config", "meta"}) >= 2)


def locate(path: str | Path) -> tuple[Path, int]:
    """``(checkpoint_directory, step)`` a tool would read first (see ``candidates``)."""
    directory, steps, _ = candidates(path)
    return directory, steps[0]


MDSR_ARCH = "mdsr"  # config["model"]["arch"] of an MDSR checkpoint (EDSR's has no "arch")


def model_config_to_dict(config) -> dict:
    """The ``config["model"]`` record of a ``ModelConfig`` (EDSR: its fields, unchanged) or an
    ``MDSRConfig`` (its fields plus ``"arch": "mdsr"``)."""
    from edsr_jax.nets import mdsr

    if isinstance(config, mdsr.MDSRConfig):
        return {"arch": MDSR_ARCH, **config.to_dict()}
    return config.to_dict()


def model_config_from_dict(d: dict):
    """Inverse of ``model_config_to_dict``: ``MDSRConfig`` when ``d["arch"] == "mdsr"``, else
    ``ModelConfig(**d)`` (TypeError/ValueError for an unknown field or architecture)."""
    from edsr_jax.nets import mdsr

    arch = d.get("arch")
    if arch is None:
        return ModelConfig(**d)
    if arch != MDSR_ARCH:
        raise ValueError(f"unknown model architecture {arch!r} (this program builds EDSR and MDSR)")
    fields = {k: v for k, v in d.items() if k != "arch"}
    return mdsr.MDSRConfig(**{**fields, "scales": tuple(fields.get("scales", ()))}).validate()


def save_params_checkpoint(path: str | Path, model_config: ModelConfig, params, *,
                           note: str = "", experiment: dict | None = None) -> Path:
    """Write ``params`` as an ordinary checkpoint (step 0) under ``path/checkpoints``.

    ``params`` is the variables dict of ``model.init`` (``{"params": {...}}``), float32.
    ``model_config``: a ``ModelConfig`` (EDSR) or an ``mdsr.MDSRConfig`` (stored with
    ``"arch": "mdsr"``, see ``model_config_to_dict``).
    Usable by fine-tuning, upscale, evaluate and export. Refuses (FileExistsError) when
    ``path`` exists and is not an empty folder. The folder is written under a temporary name
    and renamed when complete (``outputs.atomic_dir``), so a failure (e.g. a full disk,
    ``outputs.WriteError``) leaves nothing behind that blocks a retry. Returns the step directory.
    """
    from edsr_jax.io import outputs

    if not isinstance(params, dict) or set(params) != {"params"}:
        raise ValueError("save_params_checkpoint expects the variables of model.init: {'params': {...}}")
    path = Path(path)
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):
        what = "already holds checkpoints" if (path / CHECKPOINT_DIR).exists() else "exists and is not an empty folder"
        raise FileExistsError(f"{path}: {what}; choose a new or empty folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise outputs.write_error(path.parent, e) from None
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
    config = {"model": model_config_to_dict(model_config), "experiment": experiment or {}, "note": note}
    with outputs.atomic_dir(path) as tmp:
        manager = make_manager(tmp / CHECKPOINT_DIR)
        try:
            save(manager, 0, {"params": params}, config=config)
            manager.wait_until_finished()
        except OSError:
            raise
        except Exception as e:  # Orbax/TensorStore wrap OS errors (a full disk) in their own types
            if "No space left" in str(e) or "ENOSPC" in str(e):
                raise OSError(28, "No space left on device") from None
            raise
        finally:
            manager.close()
    return path / CHECKPOINT_DIR / "0"
