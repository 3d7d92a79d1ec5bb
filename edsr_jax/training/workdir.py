"""A training workdir's own files, checked before a run writes and kept true to its checkpoints.

A workdir holds ``checkpoints/`` (``checkpoint``), ``train.lock`` (``io.run_lock``), the log
``metrics.jsonl`` (one JSON record per evaluation, ``run_log``) and ``tb/`` (TensorBoard events).

- ``check``, before anything is written: ``checkpoints`` or ``tb`` that is not a folder, and
  a log file that is a symbolic link pointing out of the workdir (nothing is ever written
  through it), are one ``cli.UsageError`` line each.
- ``start_logs``, once the run knows the step it starts from:

  - a fresh start (no checkpoint: a new workdir, or ``checkpoints/`` removed) in a workdir
    holding an earlier run's logs sets them aside whole under numbered names that were free
    (``metrics.1.jsonl``, ``metrics.superseded.1.jsonl``, ``tb.1``; nothing is replaced) and
    starts new ones, and says so: one log never mixes two runs;
  - a resume from step S moves the records of steps after S to ``metrics.superseded.jsonl``:
    they were logged by weights the run no longer continues from (a fallback from a damaged
    newest step, or a kill between a record and its checkpoint), and the steps after S are
    trained and logged again. ``metrics.jsonl`` then holds each step once, along the history
    of the weights it has; the superseded records are kept, verbatim, and said. TensorBoard
    hides the superseded events itself (``run_log.Logger.start``: ``purge_step``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from edsr_jax.io import cli, outputs
from edsr_jax.io.run_lock import LOCK_NAME
from edsr_jax.training.checkpoint import CHECKPOINT_DIR

METRICS = "metrics.jsonl"
SUPERSEDED = "metrics.superseded.jsonl"
EVENTS = "tb"
LOGS = (METRICS, SUPERSEDED, EVENTS)  # what a fresh start sets aside together
WRITTEN = (*LOGS, LOCK_NAME)  # the files a run writes into, besides its checkpoints


def check(workdir: str | os.PathLike) -> None:
    """``cli.UsageError`` (one line naming the file) when ``workdir`` cannot hold a run's files:
    ``checkpoints`` or ``tb`` exists and is not a folder (a broken link included), or a file
    the run writes (``metrics.jsonl``, ``metrics.superseded.jsonl``, ``tb``, ``train.lock``)
    is a symbolic link that leads out of the workdir. A new workdir passes."""
    workdir = Path(workdir)
    for name in (CHECKPOINT_DIR, EVENTS):
        path = workdir / name
        if (path.exists() or path.is_symlink()) and not path.is_dir():
            what = "a broken symbolic link" if path.is_symlink() and not path.exists() else "a file"
            raise cli.UsageError(f"--workdir {workdir}: {path} is {what}, not the run's {name} folder; "
                                 "move it away or use another --workdir")
    base = workdir.resolve()
    for name in WRITTEN:
        path = workdir / name
        if path.is_symlink():
            target = path.resolve()
            if target != base and base not in target.parents:
                raise cli.UsageError(
                    f"--workdir {workdir}: {path} is a symbolic link to {os.readlink(path)}, outside the "
                    "workdir; a run writes its logs only inside its workdir, never through such a link "
                    "(remove the link, or use another --workdir)")


def start_logs(workdir: str | os.PathLike, step: int, *, fresh: bool, say: Callable[[str], None]) -> None:
    """Make the logs of ``workdir`` those of a run starting at ``step`` (see the module
    docstring): ``fresh`` (no checkpoint restored) sets an earlier run's logs aside, else
    the records of steps after ``step`` move to ``metrics.superseded.jsonl``. Each change is
    one ``note:`` line through ``say``; a full disk is ``outputs.WriteError``. Call it from
    the one process that writes the logs, holding the workdir's lock, after ``check``."""
    workdir = Path(workdir)
    if fresh:
        _set_aside(workdir, say)
    else:
        _supersede_after(workdir, int(step), say)


def numbered(name: str, n: int) -> str:
    """``metrics.jsonl`` -> ``metrics.N.jsonl``, ``tb`` -> ``tb.N``: the name of set-aside logs."""
    suffix = Path(name).suffix
    return f"{name[:len(name) - len(suffix)]}.{n}{suffix}"


def _holds_something(path: Path) -> bool:
    if path.is_symlink():
        return True
    if path.is_dir():
        return any(path.iterdir())
    return path.is_file() and path.stat().st_size > 0


def _set_aside(workdir: Path, say: Callable[[str], None]) -> None:
    """A fresh start: the earlier run's logs get the first number free for all of them."""
    present = [name for name in LOGS if _holds_something(workdir / name)]
    if not present:
        return
    n = 1
    while any((workdir / numbered(name, n)).exists() or (workdir / numbered(name, n)).is_symlink()
              for name in LOGS):
        n += 1
    kept = []
    for name in present:
        target = workdir / numbered(name, n)
        try:
            outputs.rename_new(workdir / name, target)
        except OSError as e:
            raise outputs.write_error(target, e, "(setting the earlier run's log aside)") from None
        kept.append(target.name + ("/" if target.is_dir() else ""))
    say(f"note: {workdir} holds no checkpoint: this run starts from step 0 with a new {METRICS} "
        f"and {EVENTS}/; the earlier run's logs are kept as {', '.join(kept)}")


def record_step(line: bytes) -> int | None:
    """The ``"step"`` of one ``metrics.jsonl`` line, or None (a torn or foreign line)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _supersede_after(workdir: Path, step: int, say: Callable[[str], None]) -> None:
    """A resume from ``step``: records of later steps go to ``metrics.superseded.jsonl``
    (appended first, each line once, so a kill in between loses none), then ``metrics.jsonl``
    is rewritten without them (atomically; lines that are no record stay where they are)."""
    path = workdir / METRICS
    real = path.resolve() if path.is_symlink() else path  # a link inside the workdir (``check``)
    try:
        lines = real.read_bytes().splitlines(keepends=True)
    except FileNotFoundError:
        return
    except OSError as e:
        raise cli.UsageError(f"{path}: cannot be read ({outputs.describe_os_error(e)})") from None
    after = [(s := record_step(ln)) is not None and s > step for ln in lines]
    later = [ln for ln, a in zip(lines, after) if a]
    if not later:
        return
    keep = [ln for ln, a in zip(lines, after) if not a]
    superseded = workdir / SUPERSEDED
    try:
        done = set(superseded.read_bytes().splitlines())
    except FileNotFoundError:
        done = set()
    except OSError as e:
        raise cli.UsageError(f"{superseded}: cannot be read ({outputs.describe_os_error(e)})") from None
    new = [ln.rstrip(b"\r\n") for ln in later if ln.rstrip(b"\r\n") not in done]
    if new:
        outputs.append_line(superseded, b"\n".join(new).decode("utf-8", "replace"))
    outputs.atomic_write(real, b"".join(keep), overwrite=True)
    steps = sorted({record_step(ln) for ln in later})
    say(f"note: {METRICS} held {len(later)} record(s) of step(s) after {step} "
        f"({', '.join(map(str, steps))}), logged by weights this run does not continue from; "
        f"moved them to {SUPERSEDED} (those steps are trained again)")
