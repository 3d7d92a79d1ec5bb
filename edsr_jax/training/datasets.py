"""A run's data, from ``config.data``: the LR variant of prepared pairs (``resolve_lr_name``),
the training batches of a scale (``train_dataset``), the degradation that made them
(``training_spec``, ``augmentation_note``) and the validation set (``validation_set``).

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
    from edsr_jax.data import manifest

    d = config.data
    if d.lr_name:
        return None
    if d.source != "paired" or not isinstance(d.train, str) or not Path(d.train).is_dir():
        d.lr_name = "bicubic"  # unused by these sources; stored as runs always stored it
        return None
    try:
        names = manifest.lr_variants(d.train)
    except ValueError as e:
        raise cli.UsageError(f"config.data.train: {e}") from None
    if names is None:
        d.lr_name = "bicubic"
        return None
    if len(names) != 1:
        raise cli.UsageError(f"config.data.lr_name: {d.train} holds {len(names)} LR variants "
                             f"({', '.join(names)}); choose one, e.g. --config.data.lr_name={names[0]}")
    d.lr_name = names[0]
    return f"data.lr_name={names[0]!r}: the only LR variant of {d.train} (its manifest.json)"


def train_dataset(config, process_index: int, process_count: int, scale: int | None = None):
    """This process's training batches (a Grain IterDataset) from ``config.data``:
    ``{"lr": (B, p, p, 3), "hr": (B, p*s, p*s, 3)}`` uint8 in [0, 255], ``p =
    data.patch_size`` LR pixels at every scale (as EDSR-PyTorch's multi-scale loader).

    ``scale``: the EDSR's own scale when None; for an MDSR one of ``model.scales`` (its pairs:
    the ``X<scale>`` folder of a prepared set, or HR degraded on the fly at that scale), with
    a data seed of its own (``data.scale_seed``).
    Raises ``cli.UsageError`` for a missing folder or a source that does not fit the data."""
    from edsr_jax.data import samples
    from edsr_jax.data import sources as data

    d = config.data
    seed = int(config.train.seed)
    if scale is None:
        scale = int(config.model.scale)
    elif config_lib.is_mdsr(config):
        seed = data.scale_seed(seed, scale)
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
    return data.make_train_dataset(
        source, patch_size=int(d.patch_size), batch_size=int(d.batch_size), seed=seed,
        patches_per_image=int(d.patches_per_image), num_workers=int(d.num_workers),
        process_index=process_index, process_count=process_count)


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
    quarter turns as augmentation (``degrade.Pipeline.symmetries``), else None."""
    from edsr_jax.degradation import degrade

    spec = training_spec(config, scale)
    if not spec:
        return None
    pipe = degrade.parse(spec, scale=scale)
    kept = pipe.symmetries
    if len(kept) == 8:
        return None
    names = {0: "identity", degrade.HALF_TURN: "half turn", degrade.TRANSPOSE: "transpose"}
    return (f"augmentation: LR made by '{pipe.spec}' stays aligned with its HR under {len(kept)} of the 8 "
            f"flips and quarter turns ({', '.join(names.get(k, str(k)) for k in kept)}); only those are used")


def validation_set(config, report: Callable[[str], None] | None = None,
                   scale: int | None = None) -> Evaluator:
    """The validation images of ``config.data`` loaded once (``evaluator.Evaluator``) at
    ``scale`` (default: the EDSR's ``model.scale``; an MDSR run makes one per scale).

    Images that cannot be scored go to ``report`` (``"skipped: ..."``); raises
    ``cli.UsageError`` when the folder is missing, the spec is bad or no image is usable."""
    from edsr_jax.data import samples
    from edsr_jax.degradation import degrade

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
