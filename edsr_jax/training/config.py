"""The experiment configuration: its fields, defaults and validation.

Experiment files in ``experiments/`` start from ``base_config()`` and change fields;
every field can be overridden on the command line (``--config.optim.lr=2e-4``).
"""

from __future__ import annotations

import ml_collections

from edsr_jax import SCALES
from edsr_jax.nets import mdsr
from edsr_jax.nets import edsr as model
from edsr_jax.nets.edsr import ModelConfig, preset
from edsr_jax.nets.onednn_conv import CONV_BACKENDS  # train.conv_backend: "auto", "xla", "onednn"

LOSSES = ("l1", "l2", "charbonnier")
DTYPES = tuple(model.DTYPES)  # names of the compute dtypes
NAN_POLICIES = ("stop", "skip")
SCHEDULES = ("step", "cosine")
SOURCES = ("hr", "paired")
DEGRADE_ON = ("auto", "host", "device")  # data.degrade_on: where the training LR is made
LOADERS = ("auto", "block", "patch")  # data.loader: how the host cuts patches
GRAD_REDUCE_DTYPES = ("float32", "compute")  # train.grad_reduce_dtype: the gradients' all-reduce
ARCHS = ("edsr", "mdsr")  # model.arch: EDSR (one scale, model.scale) or MDSR (model.scales)
SCALE_ORDERS = ("random", "cycle")  # train.scale_order (data.ScaleOrder): how an MDSR run picks each step's scale


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by every experiment (EDSR-baseline x2, the paper's optimiser)."""
    c = ml_collections.ConfigDict()
    c.name = "edsr_baseline_x2"  # the experiment's name (logs, metrics.jsonl)

    c.model = ml_collections.ConfigDict()
    c.model.arch = "edsr"  # "edsr", or "mdsr": the multi-scale network (edsr_jax/nets/mdsr.py)
    c.model.scale = 2  # EDSR's scale; 0 for MDSR, whose scales are model.scales
    c.model.scales = ()  # MDSR only: the scales it serves and trains, e.g. (2, 3, 4)
    c.model.num_blocks = 16  # residual blocks (EDSR-baseline 16, EDSR 32)
    c.model.num_features = 64  # feature channels (EDSR-baseline 64, EDSR 256)
    c.model.res_scale = 1.0  # residual scaling in each block (EDSR 0.1)
    c.model.dtype = "float32"  # compute dtype; params stay float32

    c.data = ml_collections.ConfigDict()
    c.data.source = "hr"  # "hr": HR images, LR made on the fly; "paired": DIV2K-layout folder
    c.data.train = "builtin"  # folder, or "builtin" for the sample photographs
    c.data.spec = ""  # degradation spec for source "hr"; "" means bicubic(scale)
    # LR_<lr_name> subfolder of a "paired" folder; "": the only variant its manifest records.
    # A folder without a manifest (DIV2K as distributed) is read as "bicubic".
    c.data.lr_name = ""
    c.data.val = "builtin"  # folder of HR images, or "builtin"
    # degradation of the validation LR; "": the training damage (announced). That is data.spec,
    # or the spec a prepared folder's manifest records for data.lr_name; MATLAB bicubic when the
    # training LR is plain bicubic.
    c.data.val_spec = ""
    c.data.val_max_images = 10  # validate on the first N images of data.val; 0: all
    c.data.patch_size = 48  # LR patch side; HR patch is patch_size * scale
    c.data.batch_size = 16  # global batch over all devices and processes
    c.data.patches_per_image = 1  # random crops cut from an image each time it is read
    c.data.num_workers = 0  # Grain worker processes for the loader; 0: in this process
    # where the training LR is made: "device", "host" or "auto". "device": the loader sends HR
    # crops and their global patch indices and the train step degrades them with degrade_batch
    # (keys from (seed, index)); "host": the loader degrades each patch, or reads prepared
    # pairs; "auto": the device for LR made from HR (data.source "hr") on every platform
    # (measured faster, BENCHMARKS.md), the host for prepared pairs. A resumed run keeps where
    # its damage was made.
    c.data.degrade_on = "auto"
    # how the host cuts patches: "block", "patch" or "auto". "block": data.block patches of one
    # image per record, cut as array ops (data/blocks.py); "patch": one patch per record (the
    # loader of runs made before the block loader); "auto": "block" for a new run, what a
    # resumed run used.
    c.data.loader = "auto"
    c.data.block = 8  # block loader: patches cut from each image drawn (a batch of 16 holds 2 images)
    # decoded-image cache; "": $EDSR_JAX_CACHE, else ~/.cache/edsr_jax/decoded. One
    # H x W x 3 uint8 .npy per distinct training image file, never pruned (data/cache.py).
    c.data.cache_dir = ""

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-4  # Adam learning rate (the peak of the cosine schedule)
    c.optim.b1 = 0.9  # Adam beta1
    c.optim.b2 = 0.999  # Adam beta2
    c.optim.eps = 1e-8  # Adam epsilon
    # learning-rate schedule: "step" (the paper) or "cosine". "step": lr * decay_factor every
    # decay_every steps; "cosine": linear warm-up over warmup_steps, then cosine decay to 0
    # (for short runs, where ending at a low learning rate matters most).
    c.optim.schedule = "step"
    c.optim.decay_every = 200_000  # "step" schedule: lr times decay_factor every this many steps
    c.optim.decay_factor = 0.5  # "step" schedule: the factor applied every decay_every steps
    c.optim.warmup_steps = 0  # "cosine" schedule: steps of linear warm-up to optim.lr
    c.optim.cosine_steps = 0  # "cosine" schedule: the step at which it reaches 0; 0: train.steps
    c.optim.clip_norm = 0.0  # 0 disables gradient clipping
    c.optim.loss = "l1"  # "l1" (the paper), "l2" or "charbonnier"
    c.optim.charbonnier_eps = 1e-3  # epsilon of the Charbonnier loss

    c.train = ml_collections.ConfigDict()
    c.train.steps = 300_000  # total optimiser steps of the run
    c.train.seed = 0  # seeds the initial weights and the data order
    c.train.log_every = 100  # steps between progress-bar and TensorBoard updates
    c.train.eval_every = 5_000  # steps between validations (PSNR/SSIM against bicubic)
    c.train.checkpoint_every = 5_000  # steps between checkpoints (and at the end, and on a signal)
    c.train.keep_last = 2  # newest checkpoints kept
    c.train.keep_best = 1  # checkpoints kept for the best validation PSNR (MDSR: mean over scales)
    c.train.ema = 0.0  # EMA decay of the weights; 0 disables it
    c.train.nan_policy = "stop"  # "stop" or "skip" on a non-finite loss or gradient
    c.train.init_from = ""  # checkpoint to fine-tune from (e.g. the x2 model for x3/x4)
    c.train.max_minutes = 0.0  # wall-clock budget of one invocation (checked every log_every steps); 0: none
    # the train step's convolutions: "auto", "xla" or "onednn". "auto": oneDNN on one CPU
    # device in float32 where built (edsr_jax/nets/onednn_conv.py), else XLA.
    c.train.conv_backend = "auto"
    # the dtype the devices' gradients are summed in: "float32" (default), or "compute" (the
    # compute dtype: a bfloat16 model's gradients summed in bfloat16, half the all-reduce bytes,
    # 8 bits of mantissa). One device or float32 compute: nothing to choose.
    c.train.grad_reduce_dtype = "float32"
    # MDSR: how each step's scale is chosen, "random" or "cycle". Every step trains one scale
    # on a batch of that scale only (the paper's scheme): "random" draws it uniformly, seeded by
    # (train.seed, step); "cycle" takes model.scales in turn. Either is a function of the
    # step, so a resumed run continues the same sequence.
    c.train.scale_order = "random"
    # True: resuming with another validation protocol or training data starts a new protocol.
    # Resuming with another validation protocol (data.val, data.val_spec, data.val_max_images)
    # or other training data (data.source, data.train, data.spec, data.lr_name) is refused
    # unless this is True: then the run starts a new protocol (metrics.jsonl records and the
    # best-checkpoint ranking compare only PSNRs of the same protocol).
    c.train.new_protocol = False
    return c


def paper_config(preset_name: str, scale: int) -> ml_collections.ConfigDict:
    """The paper's recipe for a named architecture (``edsr_baseline`` or ``edsr``) at ``scale``:
    DIV2K-layout training data in ``data/DIV2K``, Set5 validation, LR patch 48, batch 16,
    Adam (0.9, 0.999, 1e-8), lr 1e-4 halved every 200k steps, 300k steps, L1 loss.
    EDSR x3/x4 start from the trained x2 model in ``runs/edsr_x2`` (``train.init_from``)."""
    c = base_config()
    m = preset(preset_name, scale)
    c.name = f"{preset_name}_x{scale}"
    c.model.scale, c.model.num_blocks = m.scale, m.num_blocks
    c.model.num_features, c.model.res_scale = m.num_features, m.res_scale
    c.data.source = "paired"
    c.data.train = "data/DIV2K"
    c.data.val = "data/Set5"
    if preset_name == "edsr" and scale != 2:
        c.train.init_from = "runs/edsr_x2"
    return c


def mdsr_paper_config(preset_name: str) -> ml_collections.ConfigDict:
    """The official recipe for MDSR (``mdsr_baseline`` or ``mdsr``, scales 2, 3 and 4):
    DIV2K-layout training data in ``data/DIV2K`` (prepared X2, X3 and X4 pairs), Set5
    validation at each scale, LR patch 48 at every scale (HR 96 / 144 / 192), batch 16 of
    one scale per step drawn at random, Adam (0.9, 0.999, 1e-8), lr 1e-4 halved every 200k
    steps, 650k steps (EDSR-PyTorch's MDSR template: 650 epochs of 1000 updates), L1 loss."""
    c = base_config()
    m = mdsr.preset(preset_name)
    c.name = preset_name
    c.model.arch = "mdsr"
    c.model.scale = 0
    c.model.scales = tuple(m.scales)
    c.model.num_blocks, c.model.num_features = m.num_blocks, m.num_features
    c.data.source = "paired"
    c.data.train = "data/DIV2K"
    c.data.val = "data/Set5"
    c.train.steps = 650_000
    c.train.scale_order = "random"
    return c


def is_mdsr(config: ml_collections.ConfigDict) -> bool:
    """Whether the experiment trains an MDSR (``model.arch == "mdsr"``)."""
    return config.model.get("arch", "edsr") == "mdsr"


def train_scales(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """The scales a run trains and validates: ``(model.scale,)`` for EDSR, ``model.scales``
    for MDSR."""
    if is_mdsr(config):
        return tuple(int(s) for s in config.model.scales)
    return (int(config.model.scale),)


def model_config(config: ml_collections.ConfigDict) -> ModelConfig | mdsr.MDSRConfig:
    """The architecture part of an experiment config: a ``ModelConfig`` (EDSR) or an
    ``mdsr.MDSRConfig`` (``model.arch == "mdsr"``)."""
    m = config.model
    if is_mdsr(config):
        return mdsr.MDSRConfig(train_scales(config), int(m.num_blocks), int(m.num_features))
    return ModelConfig(int(m.scale), int(m.num_blocks), int(m.num_features), float(m.res_scale))


def validate(config: ml_collections.ConfigDict, device_count: int = 1) -> None:
    """Raise ValueError naming the first bad field (``config.data.patch_size``...)."""

    def need(ok: bool, field: str, what: str) -> None:
        value = config
        for part in field.split("."):
            value = value[part]
        if not ok:
            raise ValueError(f"config.{field} = {value!r}: {what}")

    m, d, o, t = config.model, config.data, config.optim, config.train
    need(m.get("arch", "edsr") in ARCHS, "model.arch", f"must be one of {ARCHS}")
    if is_mdsr(config):
        scales = m.scales
        need(isinstance(scales, (tuple, list)) and len(scales) > 0
             and all(isinstance(s, int) and not isinstance(s, bool) and s in SCALES for s in scales)
             and len(set(scales)) == len(scales), "model.scales",
             f"must be distinct values from {SCALES} for an MDSR, e.g. (2, 3, 4)")
        need(m.scale == 0, "model.scale", "must be 0 for an MDSR (model.arch='mdsr'): it trains "
             "every scale of model.scales")
        need(m.res_scale == 1.0, "model.res_scale", "must be 1.0 for an MDSR (it has no residual scaling)")
    else:
        need(m.scale in SCALES, "model.scale", f"must be one of {SCALES}")
        need(not m.get("scales", ()), "model.scales", "is for an MDSR only (model.arch='mdsr'); "
             "an EDSR trains model.scale")
    model_config(config).validate()
    need(m.dtype in DTYPES, "model.dtype", f"must be one of {DTYPES}")
    need(d.source in SOURCES, "data.source", f"must be one of {SOURCES}")
    need(isinstance(d.patch_size, int) and d.patch_size > 0, "data.patch_size", "must be a positive integer")
    need(isinstance(d.batch_size, int) and d.batch_size > 0, "data.batch_size", "must be a positive integer")
    need(d.batch_size % device_count == 0, "data.batch_size",
         f"must be divisible by the number of devices ({device_count})")
    need(d.patches_per_image >= 1, "data.patches_per_image", "must be >= 1")
    need(d.num_workers >= 0, "data.num_workers", "must be >= 0")
    need(d.get("degrade_on", "auto") in DEGRADE_ON, "data.degrade_on", f"must be one of {DEGRADE_ON}")
    need(d.get("loader", "auto") in LOADERS, "data.loader", f"must be one of {LOADERS}")
    need(d.get("degrade_on", "auto") != "device" or d.source == "hr", "data.degrade_on",
         "'device' makes the LR from HR images (data.source='hr'); prepared pairs "
         "(data.source='paired') were degraded by prepare and are read as they are: use 'host' or 'auto'")
    need(d.get("degrade_on", "auto") != "device" or d.get("loader", "auto") != "patch", "data.degrade_on",
         "'device' needs the block loader (data.loader='block' or 'auto'), not 'patch'")
    need(o.lr > 0, "optim.lr", "must be > 0")
    need(0 <= o.b1 < 1, "optim.b1", "must be in [0, 1)")
    need(0 <= o.b2 < 1, "optim.b2", "must be in [0, 1)")
    need(o.schedule in SCHEDULES, "optim.schedule", f"must be one of {SCHEDULES}")
    need(o.decay_every > 0, "optim.decay_every", "must be > 0")
    need(isinstance(o.warmup_steps, int) and o.warmup_steps >= 0, "optim.warmup_steps",
         "must be an integer >= 0")
    need(isinstance(o.cosine_steps, int) and o.cosine_steps >= 0, "optim.cosine_steps",
         "must be an integer >= 0 (0 means train.steps)")
    need(o.schedule != "cosine" or o.warmup_steps < (o.cosine_steps or t.steps), "optim.warmup_steps",
         "must be smaller than the cosine's length (optim.cosine_steps, or train.steps)")
    need(0 < o.decay_factor <= 1, "optim.decay_factor", "must be in (0, 1]")
    need(o.clip_norm >= 0, "optim.clip_norm", "must be >= 0 (0 disables clipping)")
    need(o.loss in LOSSES, "optim.loss", f"must be one of {LOSSES}")
    need(t.steps > 0, "train.steps", "must be > 0")
    for field in ("log_every", "eval_every", "checkpoint_every"):
        need(t[field] > 0, f"train.{field}", "must be > 0")
    need(t.max_minutes >= 0, "train.max_minutes", "must be >= 0 (0 means no time budget)")
    need(t.keep_last >= 1, "train.keep_last", "must be >= 1")
    need(0 <= t.ema < 1, "train.ema", "must be in [0, 1) (0 disables EMA)")
    need(t.nan_policy in NAN_POLICIES, "train.nan_policy", f"must be one of {NAN_POLICIES}")
    need(t.conv_backend in CONV_BACKENDS, "train.conv_backend", f"must be one of {CONV_BACKENDS}")
    need(t.get("grad_reduce_dtype", "float32") in GRAD_REDUCE_DTYPES, "train.grad_reduce_dtype",
         f"must be one of {GRAD_REDUCE_DTYPES}")
    need(t.get("scale_order", "random") in SCALE_ORDERS, "train.scale_order", f"must be one of {SCALE_ORDERS}")
    _validate_ranges(config, need)


INT32_MAX = 2**31 - 1  # step counters and seeds are int32 on the device


def _validate_ranges(config: ml_collections.ConfigDict, need) -> None:
    """Values that the checks above let through but that make no sense: non-finite or
    negative floats, integers beyond what the program can count, negative keep counts and
    image limits, unparsable degradation specs, a cache folder that is a file."""
    import math
    from pathlib import Path

    def finite(field: str, ok_range: str = "") -> None:
        value = config
        for part in field.split("."):
            value = value[part]
        need(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
             field, "must be a finite number" + (f" ({ok_range})" if ok_range else ""))

    def integer(field: str, low: int, high: int, what: str = "") -> None:
        value = config
        for part in field.split("."):
            value = value[part]
        need(isinstance(value, int) and not isinstance(value, bool) and low <= value <= high, field,
             f"must be an integer in [{low}, {high}]" + (f" ({what})" if what else ""))

    m, d, o, t = config.model, config.data, config.optim, config.train
    for field in ("model.res_scale", "optim.lr", "optim.b1", "optim.b2", "optim.eps", "optim.decay_factor",
                  "optim.clip_norm", "optim.charbonnier_eps", "train.ema", "train.max_minutes"):
        finite(field)
    need(m.res_scale > 0, "model.res_scale", "must be > 0")
    need(o.eps > 0, "optim.eps", "must be > 0 (Adam divides by sqrt(v) + eps)")
    need(o.charbonnier_eps > 0, "optim.charbonnier_eps", "must be > 0")
    integer("data.patch_size", 1, 4096, "LR pixels")
    integer("data.batch_size", 1, 1 << 20)
    integer("data.patches_per_image", 1, 1 << 16)
    integer("data.num_workers", 0, 1024)
    integer("data.block", 1, 4096, "patches cut from each image drawn")
    integer("data.val_max_images", 0, INT32_MAX, "0 means all")
    integer("optim.decay_every", 1, INT32_MAX)
    integer("optim.warmup_steps", 0, INT32_MAX)
    integer("optim.cosine_steps", 0, INT32_MAX)
    for field in ("steps", "log_every", "eval_every", "checkpoint_every"):
        integer(f"train.{field}", 1, INT32_MAX)
    integer("train.seed", 0, INT32_MAX)
    integer("train.keep_last", 1, 1 << 20)
    integer("train.keep_best", 0, 1 << 20, "0 keeps no best-PSNR checkpoint beyond the newest")
    for field, spec in (("data.spec", d.spec), ("data.val_spec", d.val_spec)):
        need(isinstance(spec, str), field, "must be a string")
        if spec and not spec.strip():
            need(False, field, "is blank; use '' for MATLAB bicubic, or a spec such as 'bicubic'")
        if spec.strip():
            from edsr_jax.degradation.degrade import parse

            for scale in train_scales(config):  # MDSR: the spec must fit every scale
                try:
                    parse(spec, scale=scale)
                except ValueError as e:
                    need(False, field, "not a valid degradation spec" + (
                        f" at x{scale}" if is_mdsr(config) else "") + f" ({e})")
    if d.cache_dir:
        cache = Path(d.cache_dir)
        need(not cache.exists() or cache.is_dir(), "data.cache_dir", "exists and is not a folder")


# ---------------------------------------------------------------------------- resuming

PROTOCOL_FIELDS = ("data.val", "data.val_spec", "data.val_max_images")  # what PSNRs are measured on
DATA_FIELDS = ("data.source", "data.train", "data.spec", "data.lr_name")  # what the model learns from
# How the patches are cut and where the damage is made: a change at resume keeps the protocol
# (the same data, the same damage) but starts the data order afresh (another stream of patches).
STREAM_FIELDS = ("data.loader", "data.block", "data.degrade_on")
# What a stored config that lacks a field (or left it "auto") meant: runs made before the
# field existed cut one patch per record, made their damage on the host and let XLA sum the
# gradients in the compute dtype.
STORED_MEANING = {"data.loader": "patch", "data.degrade_on": "host", "train.grad_reduce_dtype": "compute"}
NOT_COMPARED = ("train.new_protocol",)  # a request, not a property of the run
# Values that mean the same run: validation LR by MATLAB bicubic is written "" (before the
# trainer filled "" in with the training damage) or "bicubic" (how to ask for it since).
SAME_VALUE = {"data.val_spec": {"": "bicubic"}}


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; tuples become lists (as a stored JSON config
    holds them, so ``model.scales`` (2, 3, 4) equals its stored [2, 3, 4])."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def stored_meaning(stored: dict) -> dict:
    """The experiment config stored with a checkpoint (nested dict), with the fields of
    ``STORED_MEANING`` that it lacks or left "auto" replaced by what that run used."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in stored.items()}
    for field, meant in STORED_MEANING.items():
        group, name = field.split(".")
        if isinstance(out.get(group), dict) and out[group].get(name, "auto") == "auto":
            out[group][name] = meant
    return out


def differences(stored: dict, current: dict) -> list[tuple[str, object, object]]:
    """``[(field, stored value, current value)]`` of every experiment field that differs
    (fields missing on one side, e.g. added by a newer version, count as differences only
    when the other side is not the default)."""
    a, b = flatten(stored), flatten(current)
    defaults = flatten(base_config().to_dict())
    out = []
    for key in sorted(set(a) | set(b)):
        if key in NOT_COMPARED:
            continue
        old, new = a.get(key, defaults.get(key)), b.get(key, defaults.get(key))
        same = SAME_VALUE.get(key, {})
        if old != new and (not same or same.get(old, old) != same.get(new, new)):
            out.append((key, old, new))
    return out


class ProtocolChange(ValueError):
    """Resuming would change the validation protocol or the training data without
    ``train.new_protocol``; the message names the fields."""


def resume_changes(stored: dict, current: dict, allow_new_protocol: bool) -> tuple[list[str], bool]:
    """Compare the config stored with a run's checkpoint to the one it is resumed with.

    Returns ``(lines "field: A -> B", starts_new_protocol)``. Raises ProtocolChange (one
    line) when a protocol or data field changed and ``allow_new_protocol`` is False.
    """
    diffs = differences(stored, current)
    lines = [f"{k}: {old!r} -> {new!r}" for k, old, new in diffs]
    protocol = [(k, old, new) for k, old, new in diffs if k in PROTOCOL_FIELDS + DATA_FIELDS]
    if protocol and not allow_new_protocol:
        what = ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in protocol)
        raise ProtocolChange(
            f"config changed since this run's checkpoints: {what}; earlier validation scores and the best "
            "checkpoint would no longer compare. Pass --config.train.new_protocol=True to start a new "
            "protocol in this workdir, change it back, or use another --workdir")
    return lines, bool(protocol)
