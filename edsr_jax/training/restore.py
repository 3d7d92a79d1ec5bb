"""Reading checkpoints, one mechanism for the trainer and every tool (``restore_newest``).

Each step is validated as it is read (every required item present and readable, shapes and
tree structure as expected, config readable); a step that fails is named with its item in a
warning and the next older step is tried. Nothing here ever starts a run afresh: when no
step restores, ``CheckpointDamaged`` lists what was wrong with each. The trainer resumes
with ``restore_newest``; tools load weights with ``restore_params`` /
``restore_for_inference`` (the best step by PSNR, else the newest; the layout and its
errors are ``checkpoint``'s).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from edsr_jax.nets.edsr import ModelConfig
from edsr_jax.training.checkpoint import (CheckpointDamaged, CheckpointNotFound, ItemDamaged, candidates,
                                          model_config_from_dict, quiet_failed_reads, ranked_steps,
                                          saved_items, step_numbers)
from edsr_jax.training.state import init_variables


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
    quiet_failed_reads()
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
                quiet_failed_reads()
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


def restore_step(manager: ocp.CheckpointManager, step: int, abstract_state: dict, *,
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


def step_config(manager: ocp.CheckpointManager, step: int) -> dict:
    """The JSON config saved with checkpoint ``step`` of ``manager``."""
    return read_item(Path(manager.directory) / str(step), "config", ocp.args.JsonRestore())


def _restore_checked(directory: Path, steps: list[int], explicit: bool, abstract_state, **kw):
    """``restore_newest`` over ``steps``; an explicitly named step folder is never replaced
    by another: its damage is an error naming the item."""
    if explicit:
        kw.pop("say", None)
        quiet_failed_reads()
        try:
            state, config, notes = read_step(directory / str(steps[0]), abstract_state, **kw)
        except ItemDamaged as e:
            quiet_failed_reads()
            raise CheckpointDamaged(f"{directory / str(steps[0])}: item '{e.item}' {e.reason}") from None
        return steps[0], state, config, notes
    return restore_newest(directory, abstract_state, steps=steps, relist=lambda: ranked_steps(directory), **kw)


def _abstract_params(config):
    """Shapes and dtypes of the variables of ``config``'s model (EDSR or MDSR), placed on the
    first local device: what ``restore_params`` reads into."""
    shapes = jax.eval_shape(lambda: init_variables(config.build(), jax.random.key(0)))
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
