"""``--model auto``'s calibration: which built-in model scored best on images diagnosed alike.

``choice.distance`` compares an image's damage with each model's training damage; it does not
know how the models actually score. The calibration does. ``experiments/auto_choice.py``
measures it on images held out from every built-in model's training data and from
``experiments/prescribe.py``'s table. It is a table of each calibration image's diagnosis
``features`` and every built-in model's PSNR on that image.

An image gets the model with the highest mean PSNR over the ``k`` calibration images whose
features are nearest to its own (Euclidean distance after per-feature ``weights``). One feature
describes the content rather than the damage: the share of flat tiles
(``estimators.flat_share``), and one the choice also reads, the share of busy tiles that two
levels explain (``estimators.two_level_share``: text and shapes on flat colour). Drawn content
(posters, slides) and photographs want different models under the same damage: on drawn content
under a filtered downscale ``general-x2`` (trained on posters too) beats ``photo-x2`` by 1-5 dB.

The table is used only when it covers exactly the models being chosen from (``covers``): the
built-ins at its scale as shipped. A model added, retrained or renamed without re-running the
experiment falls back to the distance rule.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

FILE = "choice_calibration.json"  # beside the built-in models' cards (pretrained.MODELS_DIR)
FEATURES = ("pixel dropping p", "JPEG strength (100 - q) / 70", "blur / 4 (HR px)", "noise / 10 (0-255)",
            "flat share", "two-level share")


def features(seen) -> np.ndarray:
    """``(6,) float64`` of a ``choice.Seen``: P(pixel dropping) in [0, 1]; JPEG strength
    ``(100 - q) / 70`` (0 without JPEG); blur sigma / 4 (HR pixels, 0 below what ``diagnose``
    reports); noise sigma / 10 (0-255, 0 below it); the share of flat tiles and the share of
    two-level tiles, each in [0, 1] (0 when unknown). The units are ``choice``'s
    (``BLUR_UNIT``, ``NOISE_UNIT``)."""
    jpeg = 0.0 if seen.jpeg is None else (100.0 - seen.jpeg) / 70.0
    flat = seen.flat if np.isfinite(seen.flat) else 0.0
    two = seen.two_level if np.isfinite(seen.two_level) else 0.0
    return np.array([seen.p_nearest, jpeg, seen.blur / 4.0, seen.noise / 10.0, flat, two], np.float64)


@dataclass(frozen=True)
class Ranking:
    """The models ranked for one image: ``means``, model -> mean PSNR (dB) over the ``k``
    nearest calibration images, best first; ``wins``, model -> on how many of them it scored
    best."""

    means: dict[str, float]
    wins: dict[str, int]
    k: int

    @property
    def best(self) -> str:
        """The model with the highest mean PSNR."""
        return next(iter(self.means))


@dataclass(frozen=True)
class Calibration:
    """``scale``; ``models``, the built-in models measured; ``features`` ``(N, 6)`` (``features``
    of each calibration image's diagnosis); ``psnr`` ``(N, len(models))`` in dB; ``k``,
    neighbours per choice; ``weights`` ``(6,)`` per feature; ``source``, how it was made."""

    scale: int
    models: tuple[str, ...]
    features: np.ndarray
    psnr: np.ndarray
    k: int
    weights: tuple[float, ...]
    source: str = ""

    def covers(self, names: Sequence[str], scale: int) -> bool:
        """True when the table was measured for exactly the models ``names`` at ``scale`` (its
        blends, ``"A+B"``, of those models only)."""
        from edsr_jax.inference.blend import members

        measured = {m for name in self.models for m in members(name)}
        return int(scale) == self.scale and set(names) == measured

    def rank(self, x: np.ndarray, exclude: np.ndarray | None = None) -> Ranking:
        """The ``Ranking`` for features ``x`` ``(6,)``; ``exclude``, an ``(N,)`` bool mask of
        calibration rows to leave out (cross-validation)."""
        w = np.asarray(self.weights, np.float64)
        d = np.sqrt((((self.features - x) * w) ** 2).sum(axis=1))
        if exclude is not None:
            d = np.where(exclude, np.inf, d)
        near = np.argsort(d, kind="stable")[: self.k]
        scores = self.psnr[near]
        means = scores.mean(axis=0)
        wins = np.bincount(scores.argmax(axis=1), minlength=len(self.models))
        order = sorted(range(len(self.models)), key=lambda i: (-means[i], self.models[i]))
        return Ranking({self.models[i]: float(means[i]) for i in order},
                       {self.models[i]: int(wins[i]) for i in order}, len(near))

    def to_json(self) -> dict:
        """The stored form (``load`` reads it back)."""
        return {"scale": self.scale, "models": list(self.models), "k": self.k, "weights": list(self.weights),
                "feature_names": list(FEATURES), "source": self.source,
                "rows": [[round(float(v), 4) for v in f] + [round(float(p), 3) for p in ps]
                         for f, ps in zip(self.features, self.psnr)]}


def from_json(data: dict) -> Calibration:
    """A ``Calibration`` from ``to_json``'s dict; ValueError naming what is wrong."""
    try:
        models = tuple(str(m) for m in data["models"])
        nf = len(FEATURES)
        if not data["rows"] or any(len(r) != nf + len(models) for r in data["rows"]):
            raise ValueError(f"rows must be N x {nf + len(models)} ({nf} features, then one PSNR per model)")
        rows = np.asarray(data["rows"], np.float64)
        weights = tuple(float(v) for v in data["weights"])
        if len(weights) != nf:
            raise ValueError(f"weights must have {nf} values")
        return Calibration(int(data["scale"]), models, rows[:, :nf], rows[:, nf:], max(1, int(data["k"])),
                           weights, str(data.get("source", "")))
    except (KeyError, TypeError) as e:
        raise ValueError(f"not a choice calibration ({e!r})") from None


def load(models_dir: str | os.PathLike | None = None) -> Calibration | None:
    """The calibration stored beside the models of ``models_dir`` (default: the built-ins'), or
    None when there is none. ValueError naming the file when it cannot be read."""
    from edsr_jax.inference import pretrained

    path = Path(models_dir) if models_dir is not None else pretrained.MODELS_DIR
    path = path / FILE
    if not path.is_file():
        return None
    try:
        return from_json(json.loads(path.read_text()))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
