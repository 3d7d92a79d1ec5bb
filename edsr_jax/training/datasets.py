"""A run's data, from ``config.data``: the LR variant of prepared pairs (``resolve_lr_name``),
where the damage is made and how patches are cut (``resolve_input``), the training batches of a
scale (``train_dataset``), the degradation that made them (``training_spec``,
``augmentation_note``, ``device_damage``) and the validation set (``validation_set``), whose LR
is made with the training damage unless ``data.val_spec`` says otherwise (``resolve_val_spec``).

Bad folders, specs or manifests are ``cli.UsageError`` lines naming the config field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from edsr_jax.evaluation.evaluator import Evaluator
from edsr_jax.io import cli
from edsr_jax.io.images import ImageError
from edsr_jax.training import config as config_lib


def resolve_lr_name(config) -> str | None:
    """Fill in ``config.data.lr_name`` when it is "" and the source is "paired": the only LR
    variant recorded in the training folder's ``manifest.json`` (``prepare``), or "bicubic"
    for a folder without a manifest (DIV2K as distributed). The run stores the resolved name,
    so a variant added to the folder later never changes what a resumed run reads.
    Returns a line saying what was chosen (None when nothing was); UsageError when the
    manifest records several variants (naming them) or cannot be read."""
    d = config.data
    if d.lr_name:
        return None
    d.lr_name, from_manifest = _lr_variant(config)
    if not from_manifest:
        return None
    return f"data.lr_name={d.lr_name!r}: the only LR variant of {d.train} (its manifest.json)"


def _lr_variant(config) -> tuple[str, bool]:
    """``(name, read from the manifest)``: the LR variant ``resolve_lr_name`` fills in for an
    empty ``data.lr_name``, without changing the config. "bicubic" for sources other than a
    prepared folder (unused there; stored as runs always stored it) and for a folder without a
    manifest. UsageError when the manifest records several variants or cannot be read."""
    from edsr_jax.data import manifest

    d = config.data
    if d.source != "paired" or not isinstance(d.train, str) or not Path(d.train).is_dir():
        return "bicubic", False
    try:
        names = manifest.lr_variants(d.train)
    except ValueError as e:
        raise cli.UsageError(f"config.data.train: {e}") from None
    if names is None:
        return "bicubic", False
    if len(names) != 1:
        raise cli.UsageError(f"config.data.lr_name: {d.train} holds {len(names)} LR variants "
                             f"({', '.join(names)}); choose one, e.g. --config.data.lr_name={names[0]}")
    return names[0], True


# data.degrade_on="auto" for LR made from HR images, per platform: the device everywhere. On
# GPUs and TPUs the host cannot keep up (BENCHMARKS.md "Input rate": 10-26 cores per H100 for the
# host path); on CPUs the device path is the faster one too (the damage is a few vectorised
# passes in the step against per-patch Python on the host; ``benchmarks/degrade_on.py``).
DEGRADE_ON_AUTO = {"cpu": "device", "gpu": "device", "tpu": "device"}


def resolve_input(config, stored_experiment: dict | None, platform: str) -> str:
    """Fill in ``data.loader`` and ``data.degrade_on`` when "auto" and return the run's line
    saying where its damage is made.

    ``stored_experiment``: the experiment config stored with the run's newest checkpoint when
    resuming (a resumed run keeps its choices, ``config.stored_meaning``), else None: then
    ``loader`` is "block" and ``degrade_on`` is ``DEGRADE_ON_AUTO[platform]`` for HR data,
    "host" for prepared pairs. Raises ``cli.UsageError`` when the spec has an operator the
    device path lacks and the device was asked for."""
    d = config.data
    stored = config_lib.stored_meaning(stored_experiment)["data"] if stored_experiment else None
    how = {}
    for field, fresh in (("loader", "block"),
                         ("degrade_on", DEGRADE_ON_AUTO.get(platform, "host") if d.source == "hr" else "host")):
        asked = d.get(field, "auto")
        how[field] = f"data.{field}={asked}" + ("" if asked != "auto" else
                                               ", as the run being resumed" if stored else f" on {platform}")
        d[field] = asked if asked != "auto" else stored.get(field, fresh) if stored else fresh
    per_scale = {s: training_spec(config, s) for s in config_lib.train_scales(config)}
    specs = ", ".join(dict.fromkeys(repr(x) if x else "spec not recorded" for x in per_scale.values()))
    if d.degrade_on == "device":
        from edsr_jax.degradation import device

        for s, spec in per_scale.items():
            try:
                device.validate_spec(spec, s)
            except ValueError as e:
                raise cli.UsageError(f"config.data.spec: {e}") from None
        return (f"damage: {specs} made on the device inside the train step from HR crops, per patch "
                f"keys from (seed, patch index) ({how['degrade_on']}); {d.loader} loader")
    if d.source == "paired":
        return (f"damage: prepared pairs LR_{d.lr_name} of {d.train} ({specs}), "
                f"read by the host ({how['degrade_on']}); {d.loader} loader")
    return f"damage: {specs} made on the host by the loader, per patch ({how['degrade_on']}); {d.loader} loader"


def device_damage(config, scale: int | None = None):
    """The ``step.DeviceDamage`` of a run with ``data.degrade_on == "device"`` at ``scale`` (the
    EDSR's own when None), else None: its spec (``training_spec``) and the key seed of its
    stream (``train.seed``; an MDSR's scales each their ``data.scale_seed``)."""
    from edsr_jax.training.step import DeviceDamage

    if config.data.get("degrade_on") != "device":
        return None
    scale, seed = _stream(config, scale)
    return DeviceDamage(training_spec(config, scale), scale, seed)


def _stream(config, scale: int | None) -> tuple[int, int]:
    """``(scale, seed)`` of a training stream: the EDSR's ``model.scale`` when ``scale`` is None,
    and ``train.seed``, an MDSR's scales each with their own (``data.scale_seed``)."""
    from edsr_jax.data import sources as data

    seed = int(config.train.seed)
    if scale is None:
        return int(config.model.scale), seed
    return scale, data.scale_seed(seed, scale) if config_lib.is_mdsr(config) else seed


def train_dataset(config, process_index: int, process_count: int, scale: int | None = None):
    """This process's training batches (a Grain IterDataset) from ``config.data``:
    ``{"lr": (B, p, p, 3), "hr": (B, p*s, p*s, 3)}`` uint8 in [0, 255], ``p =
    data.patch_size`` LR pixels at every scale (as EDSR-PyTorch's multi-scale loader); with
    ``data.degrade_on == "device"`` HR crops and their patch indices instead, ``{"hr": (B, p*s,
    p*s, 3) uint8, "index": (B, 2) uint32}`` (``blocks.index_words``) for ``DeviceDamage``. The
    block loader (``data.loader == "block"``) adds ``"symmetry": (B,) int32``: the flip or turn
    of each patch, applied by the step. ``data.loader`` and ``data.degrade_on`` must be resolved
    (``resolve_input``).

    ``scale``: the EDSR's own scale when None; for an MDSR one of ``model.scales`` (its pairs:
    the ``X<scale>`` folder of a prepared set, or HR degraded on the fly at that scale), with
    a data seed of its own (``data.scale_seed``).
    Raises ``cli.UsageError`` for a missing folder or a source that does not fit the data."""
    from edsr_jax.data import samples
    from edsr_jax.data import sources as data

    d = config.data
    scale, seed = _stream(config, scale)
    cache = d.cache_dir or None
    train_src = samples.resolve(d.train, "train")
    if isinstance(train_src, str) and not Path(train_src).is_dir():
        raise cli.UsageError(f"config.data.train = {train_src!r}: no such folder")
    if d.source == "paired":
        if not isinstance(train_src, str):
            raise cli.UsageError("config.data.source = 'paired' needs config.data.train to be a folder")
        source = data.PairedFolderSource(train_src, scale, lr_name=d.lr_name, cache_dir=cache,
                                         spec=training_spec(config, scale))
    else:
        source = data.HROnlySource(train_src, scale, spec=d.spec or None, cache_dir=cache)
    kw = dict(patch_size=int(d.patch_size), batch_size=int(d.batch_size), seed=seed,
              patches_per_image=int(d.patches_per_image), num_workers=int(d.num_workers),
              process_index=process_index, process_count=process_count)
    if d.loader == "patch":
        return data.make_train_dataset(source, **kw)
    from edsr_jax.data import blocks

    if d.degrade_on == "device":
        return blocks.make_hr_dataset(source, block=int(d.block), augment="device", **kw).map(_index_as_words)
    return blocks.make_block_dataset(source, block=int(d.block), augment="device", **kw)


def _index_as_words(batch: dict) -> dict:
    """``batch["index"] (B,) int64`` as ``(B, 2) uint32`` words (a device without int64)."""
    from edsr_jax.data import blocks

    return {**batch, "index": blocks.index_words(batch["index"])}


def training_spec(config, scale: int) -> str | None:
    """The degradation that makes the training LR at ``scale``: ``data.spec`` (bicubic when
    empty) for HR-only data; for prepared pairs the spec their manifest records for
    ``data.lr_name`` (None when there is no manifest, e.g. DIV2K as distributed)."""
    d = config.data
    if d.source != "paired":
        return d.spec or f"bicubic({scale})"
    from edsr_jax.data import manifest

    return manifest.lr_variant_spec(d.train, d.lr_name, scale)


def augmentation_note(config, scale: int) -> str | None:
    """A line for the log when the training degradation allows fewer than the 8 flips and
    quarter turns as augmentation (``degrade.Pipeline.symmetries``), else None. Damage made
    on the device comes after the flip or turn of the HR crop: all 8 stay, no line."""
    from edsr_jax.degradation import degrade

    spec = training_spec(config, scale)
    if not spec or config.data.get("degrade_on") == "device":
        return None
    pipe = degrade.parse(spec, scale=scale)
    kept = pipe.symmetries
    if len(kept) == 8:
        return None
    names = {0: "identity", degrade.HALF_TURN: "half turn", degrade.TRANSPOSE: "transpose"}
    return (f"augmentation: LR made by '{pipe.spec}' stays aligned with its HR under {len(kept)} of the 8 "
            f"flips and quarter turns ({', '.join(names.get(k, str(k)) for k in kept)}); only those are used")


def _lr_name(config) -> str:
    """``data.lr_name`` as ``resolve_lr_name`` fills it in, without changing the config ("" when
    that would be an error, which ``resolve_lr_name`` then reports)."""
    if config.data.lr_name:
        return config.data.lr_name
    try:
        return _lr_variant(config)[0]
    except cli.UsageError:
        return ""


def training_damage(config) -> tuple[str | None, str]:
    """``(spec, where)``: the degradation that makes the training LR, as one spec for every
    scale the run trains (its resize left open when it was given so), and where it was read
    ("data.spec", "the manifest of DIR for LR_<name>"); ``(None, where)`` when it is plain
    MATLAB bicubic at every scale or unknown (no manifest)."""
    from edsr_jax.data import manifest
    from edsr_jax.degradation import degrade

    d = config.data
    if d.source == "paired":
        name = _lr_name(config)
        where = f"the manifest of {d.train} for LR_{name}"
        if not name or not isinstance(d.train, str) or not Path(d.train).is_dir():
            return None, where
        try:
            spec = manifest.lr_variant_spec(d.train, name, None)
        except ValueError:
            return None, where
    else:
        spec, where = d.spec, "data.spec"
    if not spec or not spec.strip():
        return None, where
    try:
        plain = all(degrade.parse(spec, scale=s) == degrade.parse("bicubic", scale=s)
                    for s in config_lib.train_scales(config))
    except ValueError:
        return None, where
    return (None if plain else spec), where


def resolve_val_spec(config) -> str | None:
    """Fill in ``config.data.val_spec`` when it is "": the training damage
    (``training_damage``), so a run trained on damaged LR is validated on the same damage;
    it stays "" (MATLAB bicubic) for bicubic training data. The run stores the resolved spec.
    Returns the line announcing it (None when nothing was filled in)."""
    d = config.data
    if d.val_spec:
        return None
    spec, where = training_damage(config)
    if spec is None:
        return None
    d.val_spec = spec
    return (f"validation: data.val_spec={spec!r}, the training damage ({where}); "
            "--config.data.val_spec=bicubic validates on MATLAB bicubic LR instead")


def validation_set(config, report: Callable[[str], None] | None = None,
                   scale: int | None = None) -> Evaluator:
    """The validation images of ``config.data`` loaded once (``evaluator.Evaluator``) at
    ``scale`` (default: the EDSR's ``model.scale``; an MDSR run makes one per scale), their
    LR made with ``data.val_spec``, filled in first by ``resolve_val_spec`` (the training
    damage; its line goes to ``report``, default stderr).

    Images that cannot be scored go to ``report`` (``"skipped: ..."``); raises
    ``cli.UsageError`` when the folder is missing, the spec is bad or no image is usable."""
    import sys

    from edsr_jax.data import samples
    from edsr_jax.degradation import degrade

    note = resolve_val_spec(config)
    if note:
        (report or (lambda line: print(line, file=sys.stderr)))(note)
    d = config.data
    val_src = samples.resolve(d.val, "val")
    if isinstance(val_src, str) and not Path(val_src).is_dir():
        raise cli.UsageError(f"config.data.val = {val_src!r}: no such folder")
    try:
        return Evaluator.from_images(val_src, int(config.model.scale if scale is None else scale),
                                     spec=d.val_spec or None,
                                     max_images=int(d.val_max_images) or None, report=report)
    except degrade.SpecError as e:
        raise cli.UsageError(f"config.data.val_spec: {e}") from None
    except ImageError as e:
        raise cli.UsageError(f"config.data.val: {e}") from None
