"""The manifest of a prepared folder (``OUT/manifest.json``, written by
``edsr_jax.data.prepare``): what made each LR variant, and what a resumed run may skip.

Layout: ``{"format", "settings", "sources", "outputs"}`` for the folder's first LR variant
and, per added variant, ``"variants": {name: {"settings", "sources", "outputs"}}``.
``settings`` holds the spec (and the canonical spec per scale), name, scales, tiling and
seed; ``sources`` one record per HR image (index, status, size, notes, the stems of its
outputs); ``outputs`` one record per stem (source, tile box, HR path, and per scale the LR
path, spec, sampled parameters and seed). Training reads it with ``lr_variants`` and
``lr_variant_spec``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

from edsr_jax.io import cli
from edsr_jax.io.images import IMAGE_SUFFIXES

MANIFEST = "manifest.json"
FORMAT = "edsr-jax-prepare/1"
COMPARED = ("scales", "specs", "name", "tiling", "seed")  # settings a resumed run must share


def save(out: Path, manifest: dict) -> None:
    """Write ``out/manifest.json`` atomically (``outputs.atomic_write``; a full disk is one
    ``error:`` line and leaves the previous manifest)."""
    from edsr_jax.io import outputs

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise outputs.write_error(out, e) from None
    outputs.atomic_write(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n",
                         overwrite=True)


def lr_variant_spec(root: str | os.PathLike, name: str, scale: int | None) -> str | None:
    """The degradation spec that made ``root/LR_<name>/X<scale>`` (e.g. ``"nearest(2) >
    jpeg(30,60)"``), from the prepared folder's manifest; ``scale`` None: the spec as given to
    ``prepare --spec`` (its resize left open, e.g. ``"nearest > jpeg(30,60)"``, for every
    scale). None when ``root`` has no manifest or it does not record that variant. ValueError
    naming an unreadable manifest."""
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
    if scale is None:
        return settings.get("spec")
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


def load(out: Path, settings, sources: list[Path], overwrite: bool) -> dict:
    """The manifest of ``out`` to continue from (a fresh one when there is none or with
    ``overwrite``) for a run with ``settings`` (``prepare.Settings``) over the HR files
    ``sources``; UsageError for a folder not made by prepare, made with other settings, or
    whose HR files changed."""
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
        diff = []  # another LR variant of the same HR tiles (``variant`` checks it)
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


def variant(manifest: dict, settings):
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


def source_finished(manifest: dict, out: Path, name: str, overwrite: bool) -> bool:
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


def finished_paths(manifest: dict, out: Path, name: str) -> frozenset[str]:
    """The output paths (relative to ``out``) the manifest records for source ``name`` and
    that exist: a resumed run leaves them as they are."""
    info = manifest["sources"].get(name, {})
    paths = set()
    for stem in info.get("outputs", []):
        rec = manifest["outputs"].get(stem)
        if rec:
            paths.add(rec["hr"])
            paths.update(lr["path"] for lr in rec["lr"].values())
    return frozenset(p for p in paths if (out / p).exists())
