"""Fine-tuning: a fresh model's parameters with every matching array taken from another
checkpoint (``train.init_from``), an EDSR's or an MDSR's, at the same or another scale."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

from edsr_jax.io import cli
from edsr_jax.nets.edsr import EDSR, ModelConfig
from edsr_jax.nets.mdsr import MDSR, MDSRConfig
from edsr_jax.training import checkpoint
from edsr_jax.training.restore import restore_params
from edsr_jax.training.state import init_variables


def merge_params(fresh, loaded, skip: Sequence[str] = ()) -> tuple[Any, list[str], list[str]]:
    """Take every leaf of ``loaded`` whose path and shape match ``fresh``, except layers
    whose name starts with one of ``skip`` (e.g. ``("upsample_", "tail")``).

    Returns ``(params, loaded_paths, kept_fresh_paths)`` (paths as ``params/head/kernel``).
    """
    flat_loaded = {jax.tree_util.keystr(p, simple=True, separator="/"): v
                   for p, v in jax.tree_util.tree_flatten_with_path(loaded)[0]}
    took, fresh_kept = [], []

    def pick(path, value):
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        other = flat_loaded.get(name)
        layer = name.split("/")[1] if name.count("/") >= 2 else name
        if other is not None and not layer.startswith(tuple(skip)) and tuple(other.shape) == tuple(value.shape):
            took.append(name)
            return np.asarray(other, dtype=value.dtype)
        fresh_kept.append(name)
        return np.asarray(value)

    merged = jax.tree_util.tree_map_with_path(pick, fresh)
    return merged, took, fresh_kept


def load_source(config, workdir: str | Path | None = None):
    """The weights ``config.train.init_from`` names, ``(model config, {"params": ...})``
    (``restore_params``: EMA when kept; a damaged step falls back to an older one with a
    warning), read before a run writes anything; None when ``init_from`` is not set or
    ``workdir`` already holds checkpoint steps (a resume does not use it).

    ``cli.UsageError`` naming ``config.train.init_from`` when it is no folder, holds no
    checkpoint, no step of it reads completely, or its model record is unknown."""
    source = config.train.init_from
    if not source or (workdir is not None and checkpoint.step_numbers(Path(workdir) / checkpoint.CHECKPOINT_DIR)):
        return None
    try:
        loaded_config, loaded, _ = restore_params(source, prefer_ema=True)
    except (checkpoint.CheckpointNotFound, checkpoint.CheckpointDamaged) as e:
        raise cli.UsageError(f"config.train.init_from: {e}") from None
    except (TypeError, ValueError) as e:  # the stored model record is not one this program builds
        raise cli.UsageError(f"config.train.init_from: {source}: {e}") from None
    return loaded_config, loaded


def finetune_params(config, model: EDSR | MDSR, model_config: ModelConfig | MDSRConfig,
                    say: Callable[[str], None], source_weights=None):
    """Fresh init (seed ``train.seed``) with every matching parameter taken from
    ``config.train.init_from`` (an EDSR or an MDSR checkpoint, for an EDSR or an MDSR run;
    ``upsamplers_as``); a different EDSR scale re-initialises the upsampler and the tail.
    ``source_weights``: what ``load_source`` read, else it is read here.
    Host (NumPy) variables ``{"params": ...}``; what was loaded and what was not goes to
    ``say``. ``cli.UsageError`` when ``init_from`` holds no readable checkpoint."""
    source = config.train.init_from
    loaded_config, loaded = source_weights or load_source(config)
    fresh = init_variables(model, jax.random.key(config.train.seed))
    loaded = upsamplers_as(jax.device_get(loaded), loaded_config, model_config)
    skip = ()
    if not isinstance(loaded_config, MDSRConfig) and not isinstance(model_config, MDSRConfig) \
            and loaded_config.scale != model_config.scale:
        # A different scale means a different upsampler: re-initialise it and the tail (the paper).
        skip = ("upsample_", "tail")
    merged, took, kept = merge_params(jax.device_get(fresh), loaded, skip)
    say(f"fine-tuning from {source} ({loaded_config}): loaded {len(took)} arrays; "
        f"freshly initialised {len(kept)}: {', '.join(kept) if kept else 'none'}")
    return merged


def upsamplers_as(params, source: ModelConfig | MDSRConfig, target: ModelConfig | MDSRConfig):
    """``params`` of a ``source`` model with its upsampler renamed to where ``target`` keeps the
    same scale's, so that ``merge_params`` carries it over: EDSR ``upsample_{k}`` <-> MDSR
    ``upsample_x{s}/stage_{k}`` (EDSR -> MDSR: the EDSR's scale's branch; MDSR -> EDSR: the
    branch of the EDSR's scale, when the MDSR has it). Everything else (head, body, tail) has
    the same names in both; MDSR's pre-processing has no EDSR counterpart. Same-architecture
    pairs come back unchanged. ``params``: ``{"params": {...}}`` of NumPy arrays."""
    src_mdsr, dst_mdsr = isinstance(source, MDSRConfig), isinstance(target, MDSRConfig)
    if src_mdsr == dst_mdsr:
        return params
    inner = dict(params["params"])
    if dst_mdsr:  # EDSR -> MDSR
        stages = {k: inner.pop(k) for k in [k for k in inner if k.startswith("upsample_")]}
        if source.scale in target.scales:
            inner[f"upsample_x{source.scale}"] = {f"stage_{k.split('_', 1)[1]}": v for k, v in stages.items()}
    else:  # MDSR -> EDSR
        branch = inner.get(f"upsample_x{target.scale}")
        inner = {k: v for k, v in inner.items() if not k.startswith("upsample_x")}
        if branch is not None:
            inner.update({f"upsample_{k.split('_', 1)[1]}": v for k, v in branch.items()})
    return {**params, "params": inner}
