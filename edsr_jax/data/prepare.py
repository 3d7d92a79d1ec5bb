"""Prepare a training set in the DIV2K layout from a folder of HR images (the library of
``python -m edsr_jax.prepare``). For image number ``i`` (1-based, in name order of ``HR_DIR``)
and scale ``s``, ``prepare`` writes::

    OUT/HR/0001.png                      HR, cropped to a multiple of lcm(scales)
    OUT/LR_<name>/X<s>/0001x<s>.png      its degraded LR
    OUT/manifest.json                    settings and, per output, source, tile box,
                                         spec, sampled parameters, seed and paths
                                         (``edsr_jax.data.manifest``)

With tiling each tile is its own pair, ``0001_01.png``, ``0001_02.png`` ... (row-major):
``{"grid": [2, 2]}`` cuts every image into a 2 x 2 grid (a poster cut in four), and
``{"size": N, "overlap": K}`` cuts N x N tiles every N - K pixels, the last row and column of
tiles flush with the image's edges. Every HR tile is cropped (bottom and right) to a
multiple of every requested scale.

The spec (see ``edsr_jax.degradation.degrade``) is written once for all scales with its resize
factor left open, ``"blur(0.5,1.5) > bicubic > jpeg(30,90)"`` (or ``bicubic(S)``); each
scale fills it in. The name defaults to the operator names joined by ``_`` (``bicubic``,
``blur_bicubic_jpeg``). Random parameters use a generator seeded from ``(seed, image number,
tile number, scale)``: outputs do not depend on the number of workers.

A second LR variant (another spec and name, or other scales) is added to an existing OUT by
running again with another name and the same tiling: the HR files are shared, not written
again, and the variant's LR folder and records are kept in the manifest under ``variants``
(its scales must divide the HR crop: a multiple of the first variant's scales).

Re-running resumes: finished outputs (file present and recorded in the manifest) are
skipped; a file present but not recorded (an interrupted run) is kept when it holds
exactly what would be written and reported as a conflict otherwise. Nothing is
overwritten without ``overwrite``, and an OUT made with other settings is refused.

One ``prepare`` per OUT at a time (``io.run_lock``: ``OUT/prepare.lock``, there while it runs;
a second one, e.g. adding another variant meanwhile, is one error line). Worker processes end with their parent,
however it ends (``_worker_init``: the kernel's parent-death signal on Linux, a watchdog on
the parent's pid elsewhere), so a killed ``prepare`` leaves nothing running or writing; the
temporary files a kill leaves (``.tmp-*``) are removed by the next run. Interrupted
(Ctrl-C, SIGTERM), it lets the running images finish, saves the manifest and stops.
"""

from __future__ import annotations

import contextlib
import errno
import math
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edsr_jax.data import manifest as manifest_lib
from edsr_jax.degradation.degrade import SCALES, Mixture, SpecError, parse
from edsr_jax.io import cli
from edsr_jax.io.images import ImageError, image_folder, read_rgb, write_image


# ----------------------------------------------------------------------------- tiling

def _starts(length: int, size: int, stride: int) -> list[int]:
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def tile_boxes(h: int, w: int, tiling: dict | None, multiple: int) -> list[tuple[int, int, int, int]]:
    """Tile boxes ``(top, left, bottom, right)`` of an ``h x w`` image, row-major.

    ``tiling``: None (the whole image), ``{"grid": [rows, cols]}`` or
    ``{"size": n, "overlap": k}``. Each box's height and width are cropped to a
    multiple of ``multiple``. Returns ``[]`` when the image is smaller than one tile.
    """
    def crop(y0, x0, y1, x1):
        return y0, x0, y0 + (y1 - y0) // multiple * multiple, x0 + (x1 - x0) // multiple * multiple

    if tiling is None:
        boxes = [crop(0, 0, h, w)]
    elif "grid" in tiling:
        rows, cols = tiling["grid"]
        ys = [r * h // rows for r in range(rows + 1)]
        xs = [c * w // cols for c in range(cols + 1)]
        boxes = [crop(ys[r], xs[c], ys[r + 1], xs[c + 1]) for r in range(rows) for c in range(cols)]
    else:
        n, k = tiling["size"], tiling["overlap"]
        if h < n or w < n:
            return []
        boxes = [crop(y, x, y + n, x + n) for y in _starts(h, n, n - k) for x in _starts(w, n, n - k)]
    if any(b[2] <= b[0] or b[3] <= b[1] for b in boxes):
        return []
    return boxes


# ----------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class Settings:
    """What a prepared folder is made with; a resumed run must match ``manifest.COMPARED``."""

    spec: str
    name: str
    scales: tuple[int, ...]
    tiling: dict | None
    seed: int
    specs: dict[str, str] = field(default_factory=dict)  # canonical spec per scale
    hr_multiple: int | None = None  # an added LR variant: the HR crop of the folder's first

    @property
    def multiple(self) -> int:
        """HR tiles are cropped to a multiple of this: lcm of the scales (of the first variant)."""
        return self.hr_multiple or math.lcm(*self.scales)

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "specs": self.specs, "name": self.name,
                "scales": list(self.scales), "tiling": self.tiling, "seed": self.seed}


def make_settings(spec: str, scales: Sequence[int], name: str | None, tiling: dict | None,
                  seed: int) -> Settings:
    """Validated settings; raises ``cli.UsageError`` naming the option at fault."""
    scales = tuple(sorted(set(int(s) for s in scales)))
    bad = [s for s in scales if s not in SCALES]
    if not scales or bad:
        raise cli.UsageError(f"--scales: each must be one of {', '.join(map(str, SCALES))}"
                             + (f", got {bad[0]}" if bad else ""))
    specs = {}
    for s in scales:
        try:
            specs[str(s)] = parse(spec, scale=s).spec
        except SpecError as e:
            raise cli.UsageError(f"--spec: {e}") from None
    if name is None:
        pipe = parse(spec, scale=scales[0])
        name = "mixture" if isinstance(pipe, Mixture) else "_".join(st.op for st in pipe.steps)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise cli.UsageError(f"--name {name!r}: use letters, digits, '_', '-' or '.'")
    if not 0 <= int(seed) < 2**63:
        raise cli.UsageError(f"--seed {_short(seed)}: must be an integer in [0, 2**63)")
    if tiling is not None and "size" in tiling:
        n, k = tiling["size"], tiling["overlap"]
        if n > MAX_SIDE:
            raise cli.UsageError(f"--tile-size {_short(n)}: must be at most {MAX_SIDE} pixels")
        mult = math.lcm(*scales)
        if n < 1 or n % mult:
            raise cli.UsageError(f"--tile-size {n}: must be a positive multiple of every scale "
                                 f"(lcm {mult})")
        if not 0 <= k < n:
            raise cli.UsageError(f"--overlap {k}: must be at least 0 and less than --tile-size {n}")
    return Settings(spec, name, scales, tiling, int(seed), specs)


MAX_SIDE = 1 << 16  # larger than any image this program reads (images.py refuses > 16384)


def _short(value) -> str:
    """A number for a message, its digits elided when there are thousands of them."""
    text = str(value)
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} digits)"


def output_seed(seed: int, index: int, tile: int, scale: int) -> list[int]:
    """Entropy of the generator for one LR output (recorded in the manifest)."""
    return [int(seed), int(index), int(tile), int(scale)]


# ----------------------------------------------------------------------------- worker

@lru_cache(maxsize=16)
def _pipeline(spec: str, scale: int):
    return parse(spec, scale=scale)


def _stem(index: int, tile: int, n_tiles: int, width: int) -> str:
    if n_tiles == 1 and tile == 1:
        return f"{index:0{width}d}"
    return f"{index:0{width}d}_{tile:0{max(2, len(str(n_tiles)))}d}"


def _put(out: Path, rel: str, arr: np.ndarray, finished: set[str], overwrite: bool,
         counts: dict[str, int], conflicts: list[str]) -> None:
    """Write ``arr`` to ``out/rel`` unless finished; adopt an identical unrecorded file.
    The path must stay under ``out`` (a linked folder inside it pointing out is refused)."""
    from edsr_jax.io import outputs

    path = outputs.inside(out, rel, option="--out")
    if rel in finished and path.exists() and not overwrite:
        counts["done"] += 1
        return
    if path.exists() and not overwrite:
        try:
            same = np.array_equal(read_rgb(path), arr)
        except ImageError:
            same = False
        if same:
            counts["adopted"] += 1
        else:
            conflicts.append(f"{path}: exists and differs from what this run makes "
                             "(pass --overwrite to replace it)")
        return
    try:
        write_image(path, arr, overwrite=overwrite)
    except FileExistsError as e:  # outputs.TakenMeanwhile: another process wrote it since the check
        conflicts.append(str(e))
        return
    counts["written"] += 1


def process_source(path: str, index: int, out: str, settings: Settings, width: int,
                   finished: frozenset[str], overwrite: bool) -> dict[str, Any]:
    """Read one HR image, tile it, write its HR tiles and LR images. Runs in a worker.

    Returns ``{"source", "index", "status" ("ok" | "small" | "unreadable"), "message",
    "notes", "size", "records" {stem: record}, "counts", "conflicts"}``.
    """
    path, out_dir = Path(path), Path(out)
    result: dict[str, Any] = {"source": path.name, "index": index, "status": "ok", "message": "",
                              "notes": [], "size": None, "records": {}, "conflicts": [],
                              "counts": {"written": 0, "done": 0, "adopted": 0}}
    try:
        img = read_rgb(path, result["notes"])
    except ImageError as e:
        result.update(status="unreadable", message=str(e))
        return result
    h, w = img.shape[:2]
    result["size"] = [h, w]
    boxes = tile_boxes(h, w, settings.tiling, settings.multiple)
    if not boxes:
        t, m = settings.tiling, settings.multiple
        if t is None:
            why = f"is smaller than {m}x{m} (a multiple of every scale)"
        elif "grid" in t:
            why = f"cut {t['grid'][0]}x{t['grid'][1]} gives tiles smaller than {m}x{m}"
        else:
            why = f"is smaller than one {t['size']}x{t['size']} tile"
        result.update(status="small", message=f"{path}: {w}x{h} {why}; skipped")
        return result
    for t, (y0, x0, y1, x1) in enumerate(boxes, start=1):
        stem = _stem(index, t, len(boxes), width)
        hr = np.ascontiguousarray(img[y0:y1, x0:x1])
        rec: dict[str, Any] = {"source": path.name, "index": index, "tile": t,
                               "box": [y0, x0, y1, x1], "hr": f"HR/{stem}.png", "lr": {}}
        _put(out_dir, rec["hr"], hr, finished, overwrite, result["counts"], result["conflicts"])
        for s in settings.scales:
            seed = output_seed(settings.seed, index, t, s)
            pipe = _pipeline(settings.spec, s)
            lr, params = pipe(hr, np.random.default_rng(seed), return_params=True)
            rel = f"LR_{settings.name}/X{s}/{stem}x{s}.png"
            _put(out_dir, rel, lr, finished, overwrite, result["counts"], result["conflicts"])
            rec["lr"][str(s)] = {"path": rel, "spec": pipe.spec, "seed": seed, "params": params}
        result["records"][stem] = rec
    return result


@contextlib.contextmanager
def _workers_ignore_sigint():
    """Start worker processes with SIGINT held back from their first instruction, so that a
    Ctrl-C to the process group while a worker is still importing prints no traceback from it
    (the parent handles Ctrl-C and stops the workers). On POSIX the signal is blocked in the
    parent for the moment the workers start: a blocked signal stays blocked across exec, and
    a Ctrl-C that comes meanwhile is delivered to the parent when the block ends, never lost.
    Elsewhere it is ignored for that moment. Only the main thread can do this."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if hasattr(signal, "pthread_sigmask"):
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _worker_init(parent: int) -> None:
    """Run in each worker as it starts: the worker dies with its parent (``parent``: its pid),
    however the parent ends. On Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` makes the kernel kill
    it; everywhere a daemon thread checks the parent's pid every 0.2 s. Ctrl-C is the
    parent's to handle (it lets the running images finish): the worker ignores SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the signal was asked for
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="parent-watchdog").start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(1)


def remove_temporaries(folders: Sequence[Path]) -> int:
    """Remove the writers' temporary files (``outputs.TEMP_PREFIX``) a killed run left in
    ``folders``; call only while holding the folder's lock. Returns how many were removed."""
    from edsr_jax.io.outputs import TEMP_PREFIX

    n = 0
    for folder in folders:
        for stale in folder.glob(f"{TEMP_PREFIX}*") if folder.is_dir() else ():
            try:
                stale.unlink()
                n += 1
            except OSError:
                pass
    return n


# ----------------------------------------------------------------------------- driver

@dataclass
class Summary:
    """Counts and problems of one run; ``exit_code`` is 1 when anything failed."""

    written: int = 0
    done: int = 0
    adopted: int = 0
    images: int = 0
    skipped_done: int = 0
    unreadable: list[str] = field(default_factory=list)
    small: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.unreadable or self.conflicts else 0


def prepare(hr_dir: str | os.PathLike, out: str | os.PathLike, *, spec: str = "bicubic",
            scales: Sequence[int] = (2, 3, 4), name: str | None = None, tiling: dict | None = None,
            seed: int = 0, workers: int = 1, overwrite: bool = False,
            progress: bool = True) -> Summary:
    """Write the DIV2K-layout set (see the module docstring); returns a ``Summary``.

    ``tiling``: None, ``{"grid": [rows, cols]}`` or ``{"size": n, "overlap": k}``.
    Raises ``cli.UsageError`` for bad options, a missing or empty ``hr_dir``, an ``out`` that
    is ``hr_dir``, holds other data or is in use by another ``prepare``; ``cli.Failed`` when a
    worker process was killed (what was done is recorded: re-running resumes).
    """
    settings = make_settings(spec, scales, name, tiling, seed)
    hr_dir, out = Path(hr_dir), Path(out)
    sources = image_folder(hr_dir)
    from edsr_jax.io import outputs

    outputs.inside(out, f"LR_{settings.name}", option="--name")  # also: not longer than NAME_MAX
    for folder in [out / "HR"] + [out / f"LR_{settings.name}" / f"X{s}" for s in settings.scales]:
        if folder.resolve() == hr_dir.resolve():
            raise cli.UsageError(f"--out {out}: its output folder {folder} is the input folder {hr_dir}; "
                                 "no input is ever overwritten")
    if out.resolve() == hr_dir.resolve():
        raise cli.UsageError(f"--out {out} is the input folder {hr_dir}; choose another folder "
                             "so the prepared set stays apart from its sources")
    if workers < 1:
        raise cli.UsageError(f"--workers {workers}: must be at least 1")
    from edsr_jax.io.run_lock import RunLock, WorkdirBusy

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise outputs.write_error(out, e) from None
    try:
        lock = RunLock(out, name=LOCK_NAME, option="--out", holder="prepare", remove=True).acquire()
    except (WorkdirBusy, OSError) as e:
        if isinstance(e, OSError) and e.errno == errno.ENAMETOOLONG:
            raise
        raise cli.UsageError(str(e)) from None
    try:
        return _prepare_locked(hr_dir, out, settings, sources, workers, overwrite, progress)
    finally:
        lock.release()


LOCK_NAME = "prepare.lock"


def _prepare_locked(hr_dir: Path, out: Path, settings: Settings, sources: list[Path], workers: int,
                    overwrite: bool, progress: bool) -> Summary:
    """``prepare`` once its options are checked and OUT's lock is held."""
    from tqdm import tqdm

    manifest = manifest_lib.load(out, settings, sources, overwrite)
    view, settings = manifest_lib.variant(manifest, settings)
    manifest_lib.save(out, manifest)
    remove_temporaries([out / "HR"] + [out / f"LR_{settings.name}" / f"X{s}" for s in settings.scales])

    summary = Summary(images=len(sources))
    width = max(4, len(str(len(sources))))
    tasks = []
    for i, src in enumerate(sources, start=1):
        if manifest_lib.source_finished(view, out, src.name, overwrite):
            summary.skipped_done += 1
            if view["sources"][src.name].get("status") == "small":
                summary.small.append(view["sources"][src.name].get("message", src.name))
            continue
        # an added variant's HR tiles are the first variant's: finished, never written again
        finished = (frozenset() if overwrite else
                    manifest_lib.finished_paths(view, out, src.name)
                    | manifest_lib.finished_paths(manifest, out, src.name))
        tasks.append((str(src), i, str(out), settings, width, finished, overwrite))

    bar = tqdm(total=len(tasks), desc=f"prepare x{'/'.join(map(str, settings.scales))}",
               unit="img", file=sys.stderr, disable=not progress)
    last_save = time.monotonic()

    def collect(res: dict) -> None:
        nonlocal last_save
        for note in res["notes"]:
            summary.notes.append(note)
            tqdm.write(f"note: {note}", file=sys.stderr)
        if res["status"] == "unreadable":
            summary.unreadable.append(res["message"])
            tqdm.write(f"skipped: {res['message']}", file=sys.stderr)
        elif res["status"] == "small":
            summary.small.append(res["message"])
            tqdm.write(f"warning: {res['message']}", file=sys.stderr)
        for c in res["conflicts"]:
            summary.conflicts.append(c)
            tqdm.write(f"conflict: {c}", file=sys.stderr)
        for k in ("written", "done", "adopted"):
            setattr(summary, k, getattr(summary, k) + res["counts"][k])
        if res["status"] != "unreadable":
            view["sources"][res["source"]] = {
                "index": res["index"], "status": res["status"], "size": res["size"],
                "notes": res["notes"], "message": res["message"], "outputs": sorted(res["records"])}
            if res["conflicts"]:  # not finished: try again next time
                view["sources"][res["source"]]["outputs"] = []
            else:
                view["outputs"].update(res["records"])
        bar.update(1)
        bar.set_postfix(written=summary.written)
        if time.monotonic() - last_save > 2.0:
            manifest_lib.save(out, manifest)
            last_save = time.monotonic()

    try:
        if workers == 1 or len(tasks) <= 1:
            for task in tasks:
                collect(process_source(*task))
        else:
            # spawn, not fork: the caller may hold threads (JAX, tqdm) that fork would copy mid-lock.
            with ProcessPoolExecutor(max_workers=min(workers, len(tasks)),
                                     mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_worker_init, initargs=(os.getpid(),)) as pool:
                n = min(workers, len(tasks))
                with _workers_ignore_sigint():  # the first submissions start every worker
                    futures = [pool.submit(process_source, *task) for task in tasks[:n]]
                futures += [pool.submit(process_source, *task) for task in tasks[n:]]
                try:
                    for fut in as_completed(futures):
                        collect(fut.result())
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
    except BrokenProcessPool:
        raise cli.Failed(f"a worker process of prepare ended abruptly (killed, or out of memory); "
                         f"{summary.written} file(s) written and recorded in {out / manifest_lib.MANIFEST}: "
                         "re-run the same command to resume") from None
    finally:
        bar.close()
        manifest_lib.save(out, manifest)
    return summary
