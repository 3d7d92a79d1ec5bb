"""Trained models shipped inside the package, so that upscaling works on a fresh install.

Each model is two files in ``edsr_jax/inference/weights/``: ``NAME.npz`` (the weights,
float16, keys ``params/<layer>/<kernel|bias>``) and ``NAME.json`` (its card: architecture,
training data, degradation, steps, and the scores measured from these very float16 weights).
They are made by ``pack`` (experiments/posters.py calls it) and read by ``load``; ``upscale``,
``evaluate`` and ``export`` take ``--model NAME``.

A card's ``training.spec`` is the damage the model was trained on, machine-readable (a
``degradation.degrade`` spec, resize factor open: ``"bicubic"``, ``"nearest > jpeg(30,60)"``;
alternatives ``"a | b"`` make a general model). ``--model auto`` (``inference/choice.py``)
chooses among the models whose card has one. Every function takes ``models_dir`` (default
``MODELS_DIR``, the shipped models), so research code and tests can use another folder.

``python -m edsr_jax.pretrained`` lists the models and their cards' scores.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

MODELS_DIR = Path(__file__).resolve().parent / "weights"
AUTO = "auto"  # --model auto: a built-in model chosen per image from its damage (inference/choice.py)
DEFAULT = AUTO  # what upscale runs when given neither --checkpoint nor --model
WEIGHTS_DTYPE = np.float16  # halves the files; scores on the cards are measured after rounding


def _dir(models_dir: str | os.PathLike | None) -> Path:
    return MODELS_DIR if models_dir is None else Path(models_dir)


def names(models_dir: str | os.PathLike | None = None) -> list[str]:
    """The shipped models' names, sorted (e.g. ``["photo-x2", "poster-x2"]``)."""
    folder = _dir(models_dir)
    return sorted(p.stem for p in folder.glob("*.json") if (folder / f"{p.stem}.npz").is_file())


def card(name: str, models_dir: str | os.PathLike | None = None) -> dict:
    """The card of model ``name``: a dict with ``name``, ``model`` (the architecture, as stored
    in checkpoints), ``summary`` (one line), ``training`` (with ``spec``, the damage trained
    on, where the card has it) and ``scores``. ValueError naming the known models (and
    ``auto``) when ``name`` is not one."""
    known = names(models_dir)
    if name not in known:
        raise ValueError(f"unknown built-in model {name!r}; choose from {', '.join(known) or '(none shipped)'}"
                         + (f", or {AUTO} (chosen per image)" if known else ""))
    return json.loads((_dir(models_dir) / f"{name}.json").read_text())


def training_spec(info: dict) -> str | None:
    """The damage a card's model was trained on: its ``training.spec`` (a degradation spec,
    resize factor open), or None for a card without one."""
    spec = info.get("training", {}).get("spec")
    return spec if isinstance(spec, str) and spec.strip() else None


def load(name: str, models_dir: str | os.PathLike | None = None) -> tuple[Any, dict]:
    """``(model_config, variables)`` of built-in model ``name``: ``variables`` is
    ``{"params": {...}}`` of float32 NumPy arrays (the float16 weights widened exactly), usable
    as ``model.apply(variables, x)`` with ``x`` ``(N, H, W, 3)`` float32 in [0, 255].
    ValueError for an unknown name or weights that do not match the card's checksum."""
    from flax import traverse_util  # here, not at the top: listing the models needs no JAX

    from edsr_jax.training import checkpoint

    info = card(name, models_dir)
    data = (_dir(models_dir) / f"{name}.npz").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != info["weights"]["sha256"]:
        raise ValueError(f"{_dir(models_dir) / (name + '.npz')}: checksum {digest[:12]}... does not match its "
                         f"card ({info['weights']['sha256'][:12]}...); the file is damaged, reinstall the package")
    with np.load(io.BytesIO(data)) as arrays:
        flat = {key: np.asarray(arrays[key], np.float32) for key in arrays.files}
    return checkpoint.model_config_from_dict(info["model"]), traverse_util.unflatten_dict(flat, sep="/")


def describe(name: str, models_dir: str | os.PathLike | None = None) -> str:
    """One line about model ``name``: its summary and Set5 PSNR (from the card)."""
    info = card(name, models_dir)
    set5 = info.get("scores", {}).get("Set5")
    score = f"; Set5 {set5['psnr']:.2f} dB" if set5 else ""
    return f"{name}: {info['summary']}{score}"


def pack(variables: dict, model_config, name: str, info: dict, out_dir: Path = MODELS_DIR, *,
         spec: str | None = None, overwrite: bool = False) -> Path:
    """Write ``out_dir/NAME.npz`` (``variables``' leaves rounded to float16) and its card
    ``NAME.json`` (``info`` plus ``name``, ``model`` and ``weights``: file, dtype, parameter
    count, sha256). ``variables``: ``{"params": {...}}`` float32. Returns the card's path.
    ``spec``: the damage the model was trained on (a degradation spec, e.g. ``"bicubic"``,
    ``"nearest > jpeg(30,60)"``, ``"bicubic | nearest > jpeg(30,90)"`` for a general model),
    stored as ``training.spec`` for ``--model auto`` (or taken from ``info["training"]["spec"]``);
    it must parse at the model's scale.
    Existing files of that name are replaced only with ``overwrite`` (else FileExistsError).
    Refuses (ValueError) a name that is not lower-case letters, digits and dashes (or is
    ``auto``), a spec that does not parse at the model's scale, and weights that do not fit
    float16 (an overflow would change the model)."""
    from flax import traverse_util

    from edsr_jax.degradation import degrade
    from edsr_jax.io import outputs
    from edsr_jax.training import checkpoint

    if not name or not all(c.islower() or c.isdigit() or c == "-" for c in name) or name == AUTO:
        raise ValueError(f"model name {name!r}: use lower-case letters, digits and '-', e.g. poster-x2"
                         + (f" ({AUTO} means a model chosen per image)" if name == AUTO else ""))
    spec = spec if spec is not None else training_spec(info)  # given, or already in info["training"]
    if spec is not None:
        try:
            for s in getattr(model_config, "scales", None) or (model_config.scale,):  # MDSR: each scale
                degrade.parse(spec, scale=s)
        except degrade.SpecError as e:
            raise ValueError(f"{name}: training spec: {e}") from None
        info = {**info, "training": {**info.get("training", {}), "spec": spec}}
    flat = {k: np.asarray(v, np.float32)
            for k, v in sorted(traverse_util.flatten_dict(variables, sep="/").items())}
    for key, value in flat.items():
        if not np.all(np.abs(value) <= np.finfo(WEIGHTS_DTYPE).max):
            raise ValueError(f"{name}: weight {key} does not fit float16 (max |w| {np.abs(value).max():.3g})")
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: v.astype(WEIGHTS_DTYPE) for k, v in flat.items()})
    data = buf.getvalue()
    full = {**info, "name": name, "model": checkpoint.model_config_to_dict(model_config),
            "weights": {"file": f"{name}.npz", "dtype": np.dtype(WEIGHTS_DTYPE).name,
                        "parameters": int(sum(v.size for v in flat.values())),
                        "sha256": hashlib.sha256(data).hexdigest()}}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs.atomic_write(out_dir / f"{name}.npz", data, overwrite=overwrite)
    card_path = out_dir / f"{name}.json"
    outputs.atomic_write(card_path, (json.dumps(full, indent=1) + "\n").encode(), overwrite=overwrite)
    return card_path
