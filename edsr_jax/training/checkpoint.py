"""Everything Orbax: training checkpoints, their config, and loading weights for inference.

A training workdir holds ``checkpoints/<step>/`` with the items

- ``params`` / ``opt_state`` / ``ema`` (optional): the train state pytrees,
- ``meta``: ``{"step": int}``,
- ``data_iter``: the Grain iterator state (one file per JAX process),
- ``config``: JSON ``{"model": ModelConfig fields, "experiment": full config, "note": str}``.

Orbax writes each step into a temporary directory and renames it when complete, so a
killed save never looks like a checkpoint. ``save_params_checkpoint`` writes the same
layout with only ``params``, ``meta`` and ``config`` (an imported or exported model).

Reading is one mechanism for the trainer and every tool (``restore_newest``): each step is
validated as it is read (every required item present and readable, shapes and tree
structure as expected, config readable); a step that fails is named with its item in a
warning and the next older step is tried. Nothing here ever starts a run afresh: when no
step restores, ``CheckpointDamaged`` lists what was wrong with each.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

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
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    _quiet_closed_loop_noise()


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


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: dict, *,
            data_iter=None) -> tuple[dict, dict]:
    """Restore the train state saved at ``step`` into the shapes/shardings of ``abstract_state``
    (a pytree of ``jax.ShapeDtypeStruct``); set ``data_iter``'s position in place.

    Exactly that step (no fallback; see ``restore_newest``). Returns ``(state, config)``;
    raises CheckpointDamaged naming the step and item when it does not read completely.
    """
    step_dir = Path(manager.directory) / str(step)
    try:
        state, config, _ = read_step(step_dir, abstract_state, data_iter=data_iter, optional=("ema",))
    except ItemDamaged as e:
        raise CheckpointDamaged(f"{step_dir}: item '{e.item}' {e.reason}") from None
    return state, config


def saved_items(step_dir: Path) -> set[str]:
    """Names of the items stored in one checkpoint step directory."""
    return {p.name for p in Path(step_dir).iterdir() if p.is_dir()}


# --------------------------------------------------------------------------- validated reading


def step_numbers(directory: str | Path) -> list[int]:
    """The committed steps in a checkpoint folder, newest first (Orbax's temporary folders of
    unfinished saves have no plain number as name and are never listed)."""
    try:
        names = [p.name for p in Path(directory).iterdir() if p.is_dir()]
    except FileNotFoundError:
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


def _reason(e: BaseException) -> str:
    """A one-line summary of a read error (Orbax/TensorStore messages run over many lines)."""
    text = " ".join(str(e).split())
    if isinstance(e, FileNotFoundError) or "NOT_FOUND" in text or "was not found" in text:
        return "missing or incomplete (a file of it is not there)"
    if "TensorStore" in text or "OUT_OF_RANGE" in text or "DATA_LOSS" in text:
        return "unreadable (a data file of it is truncated or corrupt)"
    if len(text) > 160:
        text = text[:157] + "..."
    return f"unreadable ({type(e).__name__}: {text})"


def _handler(args):
    import grain

    if isinstance(args, ocp.args.JsonRestore):
        return ocp.JsonCheckpointHandler()
    if isinstance(args, ocp.args.StandardRestore):
        return ocp.StandardCheckpointHandler()
    if isinstance(args, grain.checkpoint.CheckpointRestore):
        return grain.checkpoint.CheckpointHandler()
    raise TypeError(f"no handler for {type(args).__name__}")


def read_item(step_dir: str | Path, name: str, args=None):
    """Read one item of one step (``args``: an ``ocp.args`` restore; None: a raw pytree).

    Raises ItemDamaged naming the item when it is missing or cannot be read.
    """
    path = Path(step_dir) / name
    if not path.is_dir():
        raise ItemDamaged(name, "missing")
    handler = _handler(args) if args is not None else ocp.StandardCheckpointHandler()
    try:
        with ocp.Checkpointer(handler) as ckptr:
            path = path.absolute()  # Orbax refuses a relative path (`--checkpoint runs/x`)
            return ckptr.restore(path, args=args) if args is not None else ckptr.restore(path)
    except Exception as e:  # TensorStore, JSON and Orbax errors all mean: not usable
        raise ItemDamaged(name, _reason(e)) from None


def _check_tree(name: str, restored, abstract) -> None:
    """ItemDamaged when ``restored`` differs from ``abstract`` in structure, shape or dtype."""
    want = jax.tree_util.tree_flatten_with_path(abstract)[0]
    got = jax.tree_util.tree_flatten_with_path(restored)[0]
    if [p for p, _ in want] != [p for p, _ in got]:
        raise ItemDamaged(name, "its tree structure differs from the expected one")
    for (path, w), (_, g) in zip(want, got):
        if tuple(np.shape(g)) != tuple(w.shape) or np.dtype(g.dtype) != np.dtype(w.dtype):
            raise ItemDamaged(name, f"{jax.tree_util.keystr(path)} is {np.dtype(g.dtype).name}"
                                    f"{list(np.shape(g))}, expected {np.dtype(w.dtype).name}{list(w.shape)}")


def graft(stored, abstract):
    """Carry the arrays of ``stored`` (a raw pytree) into the structure of ``abstract`` where
    the paths agree up to a leading prefix (e.g. Adam's state with and without a gradient
    clipping stage in front of it); shapes must agree, values take the expected dtype and
    sharding.

    Returns the tree, or None when some leaf of ``abstract`` has no unique counterpart.
    """
    def keys(path):
        return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)

    flat = [(keys(p), v) for p, v in jax.tree_util.tree_flatten_with_path(stored)[0]]
    out = []
    for path, want in jax.tree_util.tree_flatten_with_path(abstract)[0]:
        k = keys(path)
        hits = [v for sk, v in flat if (sk[-len(k):] == k if len(sk) >= len(k) else k[-len(sk):] == sk)
                and tuple(np.shape(v)) == tuple(want.shape)]
        if len(hits) != 1:
            return None
        value = np.asarray(hits[0], dtype=want.dtype)
        sharding = getattr(want, "sharding", None)
        out.append(jax.make_array_from_callback(value.shape, sharding, lambda idx, v=value: v[idx])
                   if sharding is not None else value)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract), out)


def _quiet_closed_loop_noise() -> None:
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
    # The sibling reads of a failed one end as "Task exception was never retrieved".
    logging.getLogger("asyncio").addFilter(
        lambda r: not (str(r.msg).startswith("Task exception was never retrieved")
                       and "orbax" in r.getMessage()))


def read_step(step_dir: str | Path, abstract_state, *, data_iter=None, optional: Sequence[str] = (),
              graftable: Sequence[str] = (), check_config: Callable[[dict], None] | None = None
              ) -> tuple[dict, dict, list[str]]:
    """Read and validate one step: ``(state, config, notes)``.

    ``abstract_state`` is ``{item: pytree of jax.ShapeDtypeStruct or None}`` or a function
    ``(config, present_items) -> that dict``. Items in ``optional`` may be missing (their
    state entry is then None and a note says so); an item in ``graftable`` whose structure
    differs is carried over with ``graft`` when every array finds its place (a note says
    so). ``check_config(config)`` may raise (e.g. CheckpointMismatch), which is passed on.
    ``data_iter``'s position is set last, once everything else has been read; a step
    without a data-iterator item is used with a note. ``data_iter`` may also be a function
    ``config -> iterator or None`` (None: the position is not restored).

    Raises ItemDamaged naming the first item that is missing or unreadable.
    """
    import grain

    step_dir = Path(step_dir)
    if data_iter is not None and callable(data_iter) and not hasattr(data_iter, "get_state"):
        choose_iter, data_iter = data_iter, None
    else:
        choose_iter = None
    try:
        present = saved_items(step_dir)
    except OSError as e:
        raise ItemDamaged("(step folder)", _reason(e)) from None
    config = read_item(step_dir, "config", ocp.args.JsonRestore())
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ItemDamaged("config", "holds no model description")
    if check_config is not None:
        check_config(config)
    if choose_iter is not None:
        data_iter = choose_iter(config)
    if callable(abstract_state):
        try:
            abstract_state = abstract_state(config, present)
        except (KeyError, TypeError, ValueError) as e:
            raise ItemDamaged("config", f"does not describe a model this program builds ({e})") from None
    state, notes = {}, []
    for name, tree in abstract_state.items():
        if tree is None:
            state[name] = None
            continue
        if name not in present and name in optional:
            state[name] = None
            notes.append(f"{step_dir}: has no {name} item")
            continue
        try:
            state[name] = read_item(step_dir, name, ocp.args.StandardRestore(tree))
        except ItemDamaged as e:
            if name not in graftable or "tree structures do not match" not in e.reason:
                raise
            raw = read_item(step_dir, name)
            state[name] = graft(raw, tree)
            if state[name] is None:
                raise ItemDamaged(name, "has another structure than this config's (not carried over)") from None
            notes.append(f"{step_dir}: {name} carried over into the new structure (config change)")
        _check_tree(name, state[name], tree)
    if data_iter is not None:
        if "data_iter" in present:
            read_item(step_dir, "data_iter", grain.checkpoint.CheckpointRestore(data_iter))
        else:
            notes.append(f"{step_dir}: has no data_iter item; the data order from here on is not "
                         "exactly that of an uninterrupted run")
    return state, config, notes


def restore_newest(directory: str | Path, abstract_state, *, steps: Sequence[int] | None = None,
                   data_iter=None, optional: Sequence[str] = (), graftable: Sequence[str] = (),
                   check_config: Callable[[dict], None] | None = None,
                   say: Callable[[str], None] | None = None,
                   relist: Callable[[], list[int]] | None = None) -> tuple[int, dict, dict, list[str]]:
    """Restore the first step of ``steps`` (default: newest first) that reads completely:
    ``(step, state, config, notes)``. See ``read_step`` for the arguments.

    A step deleted while it is read (a running trainer's keep policy) is not damage: it is
    skipped silently, and when no listed step is left the folder is listed again
    (``relist``, default ``step_numbers``) for steps committed meanwhile.

    Each step that fails is reported through ``say`` (default: a ``warning:`` line on
    stderr) naming the step and the item; the next is tried. Raises CheckpointNotFound when
    the folder holds no step, CheckpointDamaged (listing every step's problem) when none
    reads.
    """
    directory = Path(directory)
    say = say or _warn
    _quiet_closed_loop_noise()
    relist = relist or (lambda: step_numbers(directory))
    steps = list(relist() if steps is None else steps)
    if not steps:
        raise CheckpointNotFound(f"{directory}: holds no complete checkpoint")
    problems, tried = [], set()
    for _ in range(20):  # rounds: a running trainer may delete steps and commit new ones meanwhile
        vanished = False
        for step in steps:
            if step in tried:
                continue
            tried.add(step)
            try:
                state, config, notes = read_step(directory / str(step), abstract_state, data_iter=data_iter,
                                                 optional=optional, graftable=graftable,
                                                 check_config=check_config)
            except ItemDamaged as e:
                _quiet_closed_loop_noise()
                if _vanishing(directory / str(step)):  # deleted by a trainer's keep policy: not damage
                    vanished = True
                    continue
                problems.append(f"step {step}: {e.item} {e.reason}")
                say(f"checkpoint step {step} in {directory} is damaged: item '{e.item}' {e.reason}; "
                    + ("trying the next older step" if step != steps[-1] else "no older step to try"))
                continue
            if problems:
                say(f"using checkpoint step {step} (the newest that reads completely)")
            return step, state, config, notes
        if not vanished:
            break
        steps = [s for s in relist() if s not in tried]
        if not steps:
            break
    if not problems:
        raise CheckpointNotFound(f"{directory}: holds no complete checkpoint (its steps were removed "
                                 "while being read)")
    raise CheckpointDamaged(f"{directory}: no checkpoint step reads completely ("
                            + "; ".join(problems) + "); nothing was started over it")


def _vanishing(step_dir: Path, wait_s: float = 0.3) -> bool:
    """True when ``step_dir`` is gone, or goes within ``wait_s`` (being deleted right now)."""
    import time

    end = time.monotonic() + wait_s
    while True:
        if not step_dir.is_dir():
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.02)


def _warn(text: str) -> None:
    import sys

    print(f"warning: {text}", file=sys.stderr)


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


def step_config(manager: ocp.CheckpointManager, step: int) -> dict:
    """The JSON config saved with checkpoint ``step`` of ``manager``."""
    return read_item(Path(manager.directory) / str(step), "config", ocp.args.JsonRestore())


def _restore_checked(directory: Path, steps: list[int], explicit: bool, abstract_state, **kw):
    """``restore_newest`` over ``steps``; an explicitly named step folder is never replaced
    by another: its damage is an error naming the item."""
    if explicit:
        kw.pop("say", None)
        _quiet_closed_loop_noise()
        try:
            state, config, notes = read_step(directory / str(steps[0]), abstract_state, **kw)
        except ItemDamaged as e:
            _quiet_closed_loop_noise()
            raise CheckpointDamaged(f"{directory / str(steps[0])}: item '{e.item}' {e.reason}") from None
        return steps[0], state, config, notes
    return restore_newest(directory, abstract_state, steps=steps, relist=lambda: ranked_steps(directory), **kw)


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


def _abstract_params(config):
    import jax.numpy as jnp

    from edsr_jax.nets import mdsr

    model = config.build()
    extra = (config.scales[0],) if isinstance(config, mdsr.MDSRConfig) else ()
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), *extra))
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def restore_params(path: str | Path, *, prefer_ema: bool = True,
                   say: Callable[[str], None] | None = None) -> tuple[ModelConfig, Any, dict]:
    """Load weights from a workdir or checkpoint: ``(ModelConfig, params, config)``; ``config``
    is the saved one with the ``step`` read added (``config["step"]``). An MDSR checkpoint
    (``config["model"]["arch"] == "mdsr"``, e.g. imported by ``export --from-torch``) gives an
    ``mdsr.MDSRConfig`` in place of the ``ModelConfig`` (``model_config_from_dict``).

    The EMA weights are returned when the run kept them and ``prefer_ema``; params are
    NumPy-backed jax arrays on the first local device, float32. The step read is the best
    by PSNR (else the newest); a step that does not read completely is named in a warning
    (``say``) and the next is tried (``restore_newest``). A step folder given explicitly is
    read or refused (CheckpointDamaged), never replaced.
    """
    directory, steps, explicit = candidates(path)

    def abstract(config, present):
        model_config = model_config_from_dict(config["model"])
        name = "ema" if prefer_ema and "ema" in present else "params"
        return {name: _abstract_params(model_config)}

    step, state, config, _ = _restore_checked(directory, steps, explicit, abstract, say=say)
    model_config = model_config_from_dict(config["model"])
    params = state["ema"] if state.get("ema") is not None else state["params"]
    return model_config, params, {**config, "step": int(step)}


def restore_for_inference(path: str | Path) -> tuple[ModelConfig, Any]:
    """``(ModelConfig, params)`` for inference from a workdir or checkpoint (EMA when kept);
    ``(MDSRConfig, params)`` for an MDSR checkpoint (``restore_params``)."""
    model_config, params, _ = restore_params(path, prefer_ema=True)
    return model_config, params


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
