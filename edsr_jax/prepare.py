"""Prepare a training set in the DIV2K layout from a folder of HR images.

    python -m edsr_jax.prepare HR_DIR --out DIR [--scales 2 3 4] [--spec "bicubic"]
        [--name NAME] [--tiles RxC | --tile-size N [--overlap K]] [--seed 0]
        [--workers K] [--overwrite]

writes, for image number ``i`` (1-based, in name order of ``HR_DIR``) and scale ``s``::

    OUT/HR/0001.png                      HR, cropped to a multiple of lcm(scales)
    OUT/LR_<name>/X<s>/0001x<s>.png      its degraded LR
    OUT/manifest.json                    settings and, per output, source, tile box,
                                         spec, sampled parameters, seed and paths

With tiling each tile is its own pair, ``0001_01.png``, ``0001_02.png`` ... (row-major):
``--tiles 2x2`` cuts every image into a 2 x 2 grid (a poster cut in four), and
``--tile-size N --overlap K`` cuts N x N tiles every N - K pixels, the last row and
column of tiles flush with the image's edges. Every HR tile is cropped (bottom and right)
to a multiple of every requested scale.

The spec (see ``edsr_jax.degradation.degrade``) is written once for all scales with its resize
factor left open, ``"blur(0.5,1.5) > bicubic > jpeg(30,90)"`` (or ``bicubic(S)``); each
scale fills it in. ``--name`` defaults to the operator names joined by ``_``
(``bicubic``, ``blur_bicubic_jpeg``). Random parameters use a generator seeded from
``(seed, image number, tile number, scale)``: outputs do not depend on ``--workers``.

A second LR variant (another ``--spec`` / ``--name``, or other scales) is added to an existing
OUT by running again with another ``--name`` and the same tiling: the HR files are shared,
not written again, and the variant's LR folder and records are kept in the manifest under
``variants`` (its scales must divide the HR crop: a multiple of the first variant's scales).

Re-running resumes: finished outputs (file present and recorded in the manifest) are
skipped; a file present but not recorded (an interrupted run) is kept when it holds
exactly what would be written and reported as a conflict otherwise. Nothing is
overwritten without ``--overwrite``, and an OUT made with other settings is refused.
Unreadable images are listed at the end and make the exit code 1.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edsr_jax.io import cli
from edsr_jax.degradation.degrade import SCALES, SpecError, parse
from edsr_jax.io.images import IMAGE_SUFFIXES, ImageError, image_folder, read_rgb, write_image

MANIFEST = "manifest.json"
FORMAT = "edsr-jax-prepare/1"
COMPARED = ("scales", "specs", "name", "tiling", "seed")  # settings a resumed run must share


# ----------------------------------------------------------------------------- tiling

def parse_tiles(text: str) -> tuple[int, int]:
    """``"RxC"`` (e.g. ``"2x2"``, ``"3x4"``) -> ``(rows, cols)``; raises ValueError."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(f"--tiles {text!r}: expected ROWSxCOLS with positive numbers, e.g. 2x2")
    if max(len(m.group(1)), len(m.group(2))) > 4 or max(int(m.group(1)), int(m.group(2))) > 1024:
        raise ValueError(f"--tiles {text[:40]!r}: at most 1024 rows and columns")
    return int(m.group(1)), int(m.group(2))


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
    """What a prepared folder is made with; a resumed run must match ``COMPARED``."""

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
        name = "_".join(st.op for st in parse(spec, scale=scales[0]).steps)
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
    write_image(path, arr, overwrite=overwrite)
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


# ----------------------------------------------------------------------------- manifest

def _save_manifest(out: Path, manifest: dict) -> None:
    """Write ``out/manifest.json`` atomically (``outputs.atomic_write``; a full disk is one
    ``error:`` line and leaves the previous manifest)."""
    from edsr_jax.io import outputs

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise outputs.write_error(out, e) from None
    outputs.atomic_write(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n",
                         overwrite=True)


def lr_variant_spec(root: str | os.PathLike, name: str, scale: int) -> str | None:
    """The degradation spec that made ``root/LR_<name>/X<scale>`` (e.g. ``"nearest(2) >
    jpeg(30,60)"``), from the prepared folder's manifest; None when ``root`` has no manifest
    or it does not record that variant. ValueError naming an unreadable manifest."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        variants = {manifest["settings"]["name"]: manifest["settings"],
                    **{k: v["settings"] for k, v in manifest.get("variants", {}).items()}}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: unreadable manifest ({e.__class__.__name__})") from None
    settings = variants.get(name)
    if settings is None:
        return None
    return settings.get("specs", {}).get(str(scale)) or settings.get("spec")


def lr_variants(root: str | os.PathLike) -> list[str] | None:
    """The LR variants (``LR_<name>`` folders) a prepared folder's manifest records, the first
    prepared first; None when ``root`` has no manifest (e.g. DIV2K as distributed).
    Raises ValueError naming the manifest when it cannot be read."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        return [manifest["settings"]["name"], *manifest.get("variants", {})]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: unreadable manifest ({e.__class__.__name__})") from None


def _load_manifest(out: Path, settings: Settings, sources: list[Path], overwrite: bool) -> dict:
    """The manifest to continue from; refuses foreign or differently made folders."""
    fresh = {"format": FORMAT, "settings": settings.to_dict(), "sources": {}, "outputs": {}}
    path = out / MANIFEST
    if overwrite:
        return fresh
    if not path.exists():
        foreign = [d for d in [out / "HR", out / f"LR_{settings.name}"] if d.is_dir()
                   and any(p.is_file() for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)]
        if foreign:
            raise cli.UsageError(f"{foreign[0]} holds images but {path} is missing: it was not made "
                                 "by this program; choose another --out or pass --overwrite")
        return fresh
    try:
        manifest = json.loads(path.read_text())
        old = manifest["settings"]
        manifest["sources"], manifest["outputs"]  # noqa: B018 - both must be there
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise cli.UsageError(f"{path}: unreadable manifest ({e.__class__.__name__}); "
                             "pass --overwrite to start again") from None
    new = settings.to_dict()
    diff = [k for k in COMPARED if old.get(k) != new[k]]
    if diff and old.get("name") != new["name"] and old.get("tiling") == new["tiling"]:
        diff = []  # another LR variant of the same HR tiles (_variant checks it)
    if diff:
        k = diff[0]
        raise cli.UsageError(f"{out} was prepared with other settings ({k}: {old.get(k)!r}, now "
                             f"{new[k]!r}); use another --out or pass --overwrite")
    index = {p.name: i for i, p in enumerate(sources, start=1)}
    for name, info in manifest["sources"].items():
        if name in index and index[name] != info.get("index"):
            raise cli.UsageError(f"the files of the HR folder changed since {path} was written "
                                 f"({name} was image {info.get('index')}, now {index[name]}); "
                                 "use another --out or pass --overwrite")
    if old.get("name") == new["name"]:
        manifest["settings"] = new
    return manifest


def _variant(manifest: dict, settings: Settings) -> tuple[dict, Settings]:
    """``(view, settings)``: the part of the manifest that records ``settings.name``'s LR
    (``sources``, ``outputs``) and the settings to run with. The folder's first variant is
    the manifest itself; another is ``manifest["variants"][name]``, made on first use, with
    the first variant's HR crop. UsageError when its scales do not divide that crop or it
    was made with other settings."""
    first = manifest["settings"]
    if first["name"] == settings.name:
        return manifest, settings
    multiple = math.lcm(*first["scales"])
    if multiple % settings.multiple:
        raise cli.UsageError(f"--scales {' '.join(map(str, settings.scales))}: the HR images of this folder "
                             f"are cropped to a multiple of {multiple} (scales "
                             f"{' '.join(map(str, first['scales']))} of LR_{first['name']}); add LR "
                             "variants whose scales divide it, or use another --out")
    variants = manifest.setdefault("variants", {})
    new = settings.to_dict()
    if settings.name in variants:
        old = variants[settings.name]["settings"]
        diff = [k for k in COMPARED if old.get(k) != new[k]]
        if diff:
            k = diff[0]
            raise cli.UsageError(f"LR_{settings.name} was prepared with other settings ({k}: {old.get(k)!r}, "
                                 f"now {new[k]!r}); use another --name or pass --overwrite")
    else:
        variants[settings.name] = {"settings": new, "sources": {}, "outputs": {}}
    return variants[settings.name], replace(settings, hr_multiple=multiple)


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


def _source_finished(manifest: dict, out: Path, name: str, overwrite: bool) -> bool:
    """True when the manifest records ``name`` as done and all its files exist."""
    info = manifest["sources"].get(name)
    if overwrite or info is None:
        return False
    if info.get("status") == "small":
        return True
    stems = info.get("outputs", [])
    for stem in stems:
        rec = manifest["outputs"].get(stem)
        if rec is None:
            return False
        if not all((out / p).exists() for p in [rec["hr"]] + [lr["path"] for lr in rec["lr"].values()]):
            return False
    return bool(stems)


def _finished_paths(manifest: dict, out: Path, name: str) -> frozenset[str]:
    info = manifest["sources"].get(name, {})
    paths = set()
    for stem in info.get("outputs", []):
        rec = manifest["outputs"].get(stem)
        if rec:
            paths.add(rec["hr"])
            paths.update(lr["path"] for lr in rec["lr"].values())
    return frozenset(p for p in paths if (out / p).exists())


def prepare(hr_dir: str | os.PathLike, out: str | os.PathLike, *, spec: str = "bicubic",
            scales: Sequence[int] = (2, 3, 4), name: str | None = None, tiling: dict | None = None,
            seed: int = 0, workers: int = 1, overwrite: bool = False,
            progress: bool = True) -> Summary:
    """Write the DIV2K-layout set (see the module docstring); returns a ``Summary``.

    ``tiling``: None, ``{"grid": [rows, cols]}`` or ``{"size": n, "overlap": k}``.
    Raises ``cli.UsageError`` for bad options, a missing or empty ``hr_dir``, or an
    ``out`` that holds other data.
    """
    from tqdm import tqdm

    settings = make_settings(spec, scales, name, tiling, seed)
    hr_dir, out = Path(hr_dir), Path(out)
    sources = image_folder(hr_dir)
    from edsr_jax.io import outputs

    outputs.inside(out, f"LR_{settings.name}", option="--name")  # also: not longer than NAME_MAX
    for folder in [out / "HR"] + [out / f"LR_{settings.name}" / f"X{s}" for s in settings.scales]:
        if folder.resolve() == hr_dir.resolve():
            raise cli.UsageError(f"--out {out}: its output folder {folder} is the input folder {hr_dir}; "
                                 "no input is ever overwritten")
    if workers < 1:
        raise cli.UsageError(f"--workers {workers}: must be at least 1")
    manifest = _load_manifest(out, settings, sources, overwrite)
    view, settings = _variant(manifest, settings)
    _save_manifest(out, manifest)

    summary = Summary(images=len(sources))
    width = max(4, len(str(len(sources))))
    tasks = []
    for i, src in enumerate(sources, start=1):
        if _source_finished(view, out, src.name, overwrite):
            summary.skipped_done += 1
            if view["sources"][src.name].get("status") == "small":
                summary.small.append(view["sources"][src.name].get("message", src.name))
            continue
        # an added variant's HR tiles are the first variant's: finished, never written again
        finished = (frozenset() if overwrite else
                    _finished_paths(view, out, src.name) | _finished_paths(manifest, out, src.name))
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
            _save_manifest(out, manifest)
            last_save = time.monotonic()

    try:
        if workers == 1 or len(tasks) <= 1:
            for task in tasks:
                collect(process_source(*task))
        else:
            # spawn, not fork: the caller may hold threads (JAX, tqdm) that fork would copy mid-lock.
            with ProcessPoolExecutor(max_workers=min(workers, len(tasks)),
                                     mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = [pool.submit(process_source, *task) for task in tasks]
                try:
                    for fut in as_completed(futures):
                        collect(fut.result())
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
    finally:
        bar.close()
        _save_manifest(out, manifest)
    return summary


def report(summary: Summary, out: Path) -> None:
    """Print the end-of-run summary to stdout (problems to stderr)."""
    print(f"{summary.written} written, {summary.done + summary.adopted} already present "
          f"({summary.adopted} recovered from an interrupted run), "
          f"{summary.skipped_done} of {summary.images} images already finished; "
          f"manifest: {out / MANIFEST}")
    if summary.notes:
        print(f"{len(summary.notes)} image(s) converted to RGB (see notes above)")
    for title, items in (("too small, skipped", summary.small),
                         ("unreadable, skipped", summary.unreadable),
                         ("conflicts, not written", summary.conflicts)):
        if items:
            print(f"{len(items)} {title}:", file=sys.stderr)
            for item in items:
                print(f"  {item}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    """The prepare command's options (a ``cli.ArgumentParser``: errors raise UsageError)."""
    from edsr_jax.degradation.degrade import SPEC_HELP

    p = cli.ArgumentParser(prog="python -m edsr_jax.prepare",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Write a DIV2K-layout training set (HR, LR_<name>/X<s>, "
                                       "manifest.json) from a folder of HR images.",
                           epilog=SPEC_HELP)
    p.add_argument("hr_dir", metavar="HR_DIR", help="folder of HR images")
    p.add_argument("--out", required=True, help="output folder (created when missing)")
    p.add_argument("--scales", type=int, nargs="+", default=[2, 3, 4],
                   help="downscale factors among 2 3 4 (default: 2 3 4)")
    p.add_argument("--spec", default="bicubic",
                   help="degradation spec with the resize factor left open, e.g. "
                        "'blur(0.5,1.5) > bicubic > jpeg(30,90)' (default: bicubic; grammar below)")
    p.add_argument("--name", default=None,
                   help="LR folder name LR_<name> (default: the spec's operator names joined by _)")
    p.add_argument("--tiles", default=None, metavar="RxC",
                   help="cut every image into a grid of R rows and C columns, e.g. 2x2")
    p.add_argument("--tile-size", type=int, default=None, metavar="N",
                   help="cut N x N tiles (N a multiple of every scale)")
    p.add_argument("--overlap", type=int, default=None, metavar="K",
                   help="overlap of --tile-size tiles in pixels (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled degradations (default 0)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="worker processes (default: CPU count, at most 8)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs and a manifest made with other settings")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The prepare CLI; returns ``summary.exit_code`` (0, or 1 when some image was skipped;
    usage errors: ``cli.UsageError``, exit 2)."""
    args = build_parser().parse_args(argv)
    tiling = None
    if args.tiles is not None:
        if args.tile_size is not None:
            raise cli.UsageError("--tiles and --tile-size exclude each other; give one")
        try:
            tiling = {"grid": list(parse_tiles(args.tiles))}
        except ValueError as e:
            raise cli.UsageError(str(e)) from None
    elif args.tile_size is not None:
        tiling = {"size": args.tile_size, "overlap": args.overlap or 0}
    elif args.overlap is not None:
        raise cli.UsageError("--overlap applies to --tile-size tiles; give --tile-size N too")
    summary = prepare(args.hr_dir, args.out, spec=args.spec, scales=args.scales, name=args.name,
                      tiling=tiling, seed=args.seed, workers=args.workers,
                      overwrite=args.overwrite, progress=not args.no_progress)
    report(summary, Path(args.out))
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(cli.run(main))
