"""The built-in model for an image, chosen from its damage: ``--model auto`` in ``upscale`` and
``evaluate``, ``edsr_jax.choose_model`` and ``edsr_jax.AutoUpscaler`` in Python.

Each built-in model's card names the damage it was trained on (``training.spec``, a
degradation spec: ``"bicubic"``, ``"nearest > jpeg(30,60)"``; ``pretrained.training_spec``).
An image's damage is diagnosed (``evaluation.diagnosis.diagnose_file`` / ``diagnose_array``,
the per-image path of ``python -m edsr_jax.diagnose`` without the folder's proposal; larger
images are measured on a 1024x1024 central crop) and compared with each model's training damage
(``distance``); the model at the wanted scale whose damage is nearest is chosen (``choose``, a
pure function of the diagnosis and the cards).

A card whose spec has alternatives (``"bicubic | nearest > jpeg(30,90) | ..."``) is a general
model, trained on many damages: it is not ranked beside the specialists (it would tie with each
on its own damage and lose to it) but taken when the choice is uncertain: the image's damage is
far from every specialist's, or two are about as near, or the image cannot be diagnosed
(16-bit, under 32 pixels a side); without one the nearest specialist is kept, said uncertain.
Where a calibration covers the models (``calibration.py``: the built-ins ship one, measured by
experiments/auto_choice.py), an uncertain choice of a diagnosed image, or one of drawn content
(``DRAWN``), takes instead the model that scored best on the calibration images diagnosed alike
(or a blend of two, ``"photo-x2+general-x2"``: the mean of both models' outputs, ``blend.py``);
without one, drawn content takes the general model over a specialist whose card says it was
trained on photographs only (``training.content``). Each choice carries a one-line reason
(``Choice.line``: ``poster.png: poster-x2 (pixel dropping p=0.93, JPEG q=45; nearest to
'nearest > jpeg(30,60)')``) and a JSON record (``Choice.record``).

``AutoUpscaler`` is one command's ``--model auto``: diagnoses kept per file (path, size and
modification time) for the life of the object, and each chosen model loaded once. A diagnosis
of an LR file, reading included, takes 30-100 ms at 256x192 to 512x384, 0.2-0.26 s at 1024x768
and 0.5-0.95 s at 2048x1536 (JPEG-PNG; two busy CPU cores, one thread), 1-3 % of upscaling it
with ``photo-x2`` on those cores (256x192: 2.4 s, 512x384: 8.3 s). No disk cache is kept: it
would save that little again only on a second run over the same files, and a command writes
nothing it was not asked for. (On a GPU the model's share shrinks; not measured.)
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edsr_jax.inference import blend, pretrained

# Distance units: a term reaches 1 at these differences from the training damage.
JPEG_SPAN = 70.0   # JPEG strength (100 - q) / JPEG_SPAN, clipped to [0, 1]: q 30 and below are all "strong"
# JPEG is weighed by which side of the training range an image lies: stronger compression than
# a model was trained on leaves blocks it never learnt to remove (JPEG_OVER), weaker costs less
# (JPEG_UNDER): poster-x2, trained with jpeg(30,60), beats photo-x2 by 2-4 dB on pixel-dropped
# LR without any JPEG (9 of 11 images). Chosen on photo-x2's and poster-x2's per-image PSNR on 11
# images (8 photographs, 3 posters, 128 x 128 LR) under six damages (bicubic, nearest, nearest >
# jpeg(30,60), bilinear > jpeg(60,90), blur(1.5) > bicubic, bicubic > noise(5)): the better of
# the two for 56 of 66 images with (1.5, 0.5), 53 with (1, 1), 51-55 with an UNDER of 0.3 or less.
JPEG_OVER = 1.5
JPEG_UNDER = 0.5
BLUR_UNIT = 4.0    # HR pixels of Gaussian sigma (soft photographs read as 1.2-1.5 without any blur added)
NOISE_UNIT = 10.0  # sigma on the 0-255 scale
# Certainty: confidence = min(margin / (2 MARGIN), 1 - nearest / (2 NEAR)), clipped to [0, 1];
# below CONFIDENT the choice is uncertain. Set by hand on the same 11 images and six damages:
# bicubic LR certain for photo-x2 in 8 of 11, pixel dropping with JPEG for poster-x2 in 6 of 11;
# noise (11 of 11), JPEG on a filtered downscale (9 of 11) and an unclear resampling (P(nearest)
# 0.3-0.7) uncertain. experiments/auto_choice.py --grid re-runs the rule under other values.
NEAR = 0.4
MARGIN = 0.3
CONFIDENT = 0.5
# Drawn content (two-level tiles, estimators.two_level_share, at least DRAWN) goes to the
# calibration (else the general model) even when a specialist's training damage matches: each
# specialist was trained on one kind of content (photo-x2 photographs, poster-x2 posters), and
# on posters under a filtered downscale general-x2 beats photo-x2 by 1-5 dB. The fewest misread of
# 1,080 whole LR images (Sun80 and training posters, six damages; experiments/auto_choice.py).
DRAWN = 0.1
FILTERED = ("bicubic", "bilinear")  # one family for the choice: the diagnosis cannot tell them apart reliably


@dataclass(frozen=True)
class Damage:
    """One degradation chain as the choice compares it: ``kind``, the last resize's
    ("nearest", "bicubic" or "bilinear"); ``blur``, ``(lo, hi)`` Gaussian sigma in HR pixels
    (aniso_blur: its larger sigma); ``noise``, ``(lo, hi)`` sigma on the 0-255 scale; ``jpeg``,
    ``(lo, hi)`` quality or None."""

    kind: str
    blur: tuple[float, float] = (0.0, 0.0)
    noise: tuple[float, float] = (0.0, 0.0)
    jpeg: tuple[int, int] | None = None

    @classmethod
    def of(cls, pipeline) -> "Damage":
        """The damage of a parsed chain (``degrade.parse(spec, scale)``, a ``Pipeline``)."""
        kind, factor = "bicubic", 1
        blur, noise, jpeg = (0.0, 0.0), (0.0, 0.0), None
        for step in pipeline.steps:
            r = step.ranges
            if step.op in ("nearest", "bicubic", "bilinear"):
                kind, factor = step.op, factor * int(r[0][0])
            elif step.op == "blur":
                blur = (r[0][0] * factor, r[0][1] * factor)
            elif step.op == "aniso_blur":
                blur = (max(r[0][0], r[1][0]) * factor, max(r[0][1], r[1][1]) * factor)
            elif step.op == "noise":
                noise = (float(r[0][0]), float(r[0][1]))
            elif step.op == "jpeg":
                jpeg = (int(r[0][0]), int(r[0][1]))
        return cls(kind, blur, noise, jpeg)


@dataclass(frozen=True)
class Candidate:
    """A built-in model the choice may take at ``scale``: its ``name``, training ``spec``, that
    spec's ``damages`` (one per alternative; more than one: a general model) and the ``content``
    of its training images (its card's ``training.content``: ``("photographs",)``, ``("drawn",)``
    or both; empty when the card does not say)."""

    name: str
    scale: int
    spec: str
    damages: tuple[Damage, ...]
    content: tuple[str, ...] = ()

    @property
    def general(self) -> bool:
        """True for a model trained on alternatives (a spec with ``|``)."""
        return len(self.damages) > 1

    @classmethod
    def from_spec(cls, name: str, spec: str, scale: int, content: Sequence[str] = ()) -> "Candidate":
        """The candidate of a model trained on ``spec`` at ``scale`` (on images of ``content``);
        ``degrade.SpecError`` for a spec that does not parse at that scale."""
        from edsr_jax.degradation import degrade

        parsed = degrade.parse(spec, scale=scale)
        chains = getattr(parsed, "alternatives", (parsed,))
        return cls(name, int(scale), spec, tuple(Damage.of(p) for p in chains), tuple(content))


def candidates(scale: int, models_dir: str | os.PathLike | None = None) -> list[Candidate]:
    """The built-in models at ``scale`` (2, 3 or 4) whose card names its training damage, by
    name. ValueError naming the scale (and the models there without a spec) when there is none."""
    out, unnamed = [], []
    for name in pretrained.names(models_dir):
        info = pretrained.card(name, models_dir)
        model = info.get("model", {})
        if int(scale) not in (model.get("scales") or [model.get("scale")]):
            continue
        spec = pretrained.training_spec(info)
        if spec is None:
            unnamed.append(name)
            continue
        out.append(Candidate.from_spec(name, spec, scale, info["training"].get("content", ())))
    if not out:
        lacking = (f" ({', '.join(unnamed)} at x{scale} name no training damage: their cards lack "
                   "training.spec)") if unnamed else ""
        raise ValueError(f"no built-in model at x{scale} to choose from{lacking}; "
                         f"choose a model with --model NAME or --checkpoint DIR")
    return out


@dataclass(frozen=True)
class Seen:
    """The damage diagnosed in an image, in the choice's terms: ``p_nearest``, the probability
    of pixel dropping (against a filtered downscale) in [0, 1]; ``jpeg``, the JPEG quality or
    None; ``blur`` (HR pixels at the wanted scale) and ``noise`` (0-255), 0 below what
    ``diagnose`` reports (``BLUR_MIN``, ``NOISE_MIN``); a confidence in [0, 1] for each;
    ``upscaled_by``, the factor an image was already upscaled back by (1: none); ``flat``, the
    share of flat tiles in [0, 1] (``estimators.flat_share``; NaN: not measured); ``two_level``,
    the share of busy tiles two levels explain (``estimators.two_level_share``: drawn content);
    ``noise_measured``, False for a grayscale image (``diagnose`` reads no noise there)."""

    p_nearest: float
    jpeg: int | None
    jpeg_confidence: float
    blur: float = 0.0
    blur_confidence: float = 0.0
    noise: float = 0.0
    noise_confidence: float = 0.0
    upscaled_by: int = 1
    flat: float = float("nan")
    noise_measured: bool = True
    two_level: float = float("nan")

    @classmethod
    def of(cls, d) -> "Seen":
        """From an ``evaluation.diagnosis.ImageDiagnosis``."""
        from edsr_jax.evaluation.diagnosis import BLUR_MIN, NOISE_MIN

        def num(x) -> float:  # a JSON record writes NaN as null
            return float("nan") if x is None else float(x)

        blur, noise = num(d.blur), num(d.noise)
        return cls(float(d.kind_probabilities["nearest"]), d.jpeg_quality, float(d.jpeg_confidence),
                   blur if np.isfinite(blur) and blur >= BLUR_MIN else 0.0, float(d.blur_confidence),
                   noise if np.isfinite(noise) and noise >= NOISE_MIN else 0.0, float(d.noise_confidence),
                   int(d.upscaled_by), num(getattr(d, "flat_share", None)),
                   bool(np.isfinite(noise) or d.noise_confidence > 0),  # gray: NaN at confidence 0
                   num(getattr(d, "two_level", None)))

    @classmethod
    def mean(cls, seen: Sequence["Seen"]) -> "Seen":
        """Several images' damage as one (a video's frames): the means of the probabilities,
        sigmas and confidences; the JPEG quality the median of those that show one, or None
        when most show none."""
        qs = [s.jpeg for s in seen if s.jpeg is not None]
        avg = lambda key: float(np.mean([getattr(s, key) for s in seen]))  # noqa: E731
        return cls(avg("p_nearest"), int(statistics.median(qs)) if 2 * len(qs) > len(seen) else None,
                   avg("jpeg_confidence"), avg("blur"), avg("blur_confidence"), avg("noise"),
                   avg("noise_confidence"), max(s.upscaled_by for s in seen), avg("flat"),
                   all(s.noise_measured for s in seen), avg("two_level"))

    def text(self) -> str:
        """What was seen, briefly: ``"pixel dropping p=0.93, JPEG q=45"``."""
        p = self.p_nearest
        parts = [f"pixel dropping p={p:.2f}" if p >= 0.5 else f"filtered downscale p={1 - p:.2f}",
                 "no JPEG" if self.jpeg is None else f"JPEG q={self.jpeg}"]
        if self.blur:
            parts.append(f"blur {self.blur:.1f}")
        if self.noise:
            parts.append(f"noise {self.noise:.1f}")
        elif not self.noise_measured:
            parts.append("noise not measured (grayscale)")
        if self.two_level >= DRAWN:
            parts.append(f"two-level tiles {self.two_level:.2f}")
        if self.upscaled_by > 1:
            parts.append(f"upscaled back x{self.upscaled_by}")
        return ", ".join(parts)


NEUTRAL = Seen(p_nearest=0.0, jpeg=None, jpeg_confidence=1.0)  # a clean filtered downscale: the papers' LR


def _outside(x: float, lo: float, hi: float) -> float:
    return max(lo - x, 0.0, x - hi)


def _jpeg_strength(q: int | None) -> float:
    return 0.0 if q is None else min(1.0, max(0.0, (100.0 - q) / JPEG_SPAN))


def distance(seen: Seen, damage: Damage) -> float:
    """How far the damage ``seen`` in an image is from a model's training ``damage``: 0 inside
    it, a sum of four terms. Resampling: ``1 - p_nearest`` for a model trained on pixel
    dropping, ``p_nearest`` for a filtered one (bicubic and bilinear alike). JPEG: how far the
    strength ``(100 - q) / JPEG_SPAN`` (no JPEG: 0) lies outside the training qualities'
    strengths, times ``JPEG_OVER`` above them and ``JPEG_UNDER`` below, times the JPEG
    confidence. Blur and noise: the sigma outside the training range in ``BLUR_UNIT`` /
    ``NOISE_UNIT``, times their confidence, at most 1 each."""
    resampling = 1.0 - seen.p_nearest if damage.kind == "nearest" else seen.p_nearest
    if damage.jpeg is None:
        lo = hi = 0.0
    else:
        lo, hi = _jpeg_strength(damage.jpeg[1]), _jpeg_strength(damage.jpeg[0])
    strength = _jpeg_strength(seen.jpeg)
    jpeg = (max(strength - hi, 0.0) * JPEG_OVER + max(lo - strength, 0.0) * JPEG_UNDER) * seen.jpeg_confidence
    blur = min(1.0, _outside(seen.blur, *damage.blur) / BLUR_UNIT) * seen.blur_confidence
    noise = min(1.0, _outside(seen.noise, *damage.noise) / NOISE_UNIT) * seen.noise_confidence
    return float(resampling + jpeg + blur + noise)


def _model_distance(seen: Seen, c: Candidate) -> float:
    return min(distance(seen, d) for d in c.damages)


@dataclass(frozen=True)
class Choice:
    """The model chosen for one image (or one video): ``model`` (a built-in name), ``scale``,
    ``reason`` (one line: what was seen and why this model), ``confidence`` in [0, 1],
    ``uncertain`` (then the general model was taken where one exists), ``seen`` (None when the
    image could not be diagnosed), ``distances`` (every candidate's, rounded) and ``diagnosis``
    (the diagnosis' fields the choice used, or why there is none)."""

    model: str
    scale: int
    reason: str
    confidence: float
    uncertain: bool
    seen: Seen | None = None
    distances: dict[str, float] = field(default_factory=dict)
    diagnosis: dict[str, Any] = field(default_factory=dict)
    calibrated: dict[str, Any] = field(default_factory=dict)

    def line(self, name: str) -> str:
        """``"NAME: MODEL (REASON)"``, the line ``upscale`` prints per image."""
        return f"{name}: {self.model} ({self.reason})"

    def record(self) -> dict:
        """JSON-ready: ``{"model", "scale", "reason", "confidence", "uncertain", "distances",
        "diagnosis"}``, and ``"calibrated"`` (``{"k", "mean_psnr", "wins"}`` of the calibration's
        nearest images) when the calibration chose."""
        out = {"model": self.model, "scale": self.scale, "reason": self.reason,
               "confidence": round(self.confidence, 3), "uncertain": self.uncertain,
               "distances": dict(self.distances), "diagnosis": dict(self.diagnosis)}
        if self.calibrated:
            out["calibrated"] = dict(self.calibrated)
        return out


def choose(seen: Seen | Sequence[Seen] | None, options: Sequence[Candidate], scale: int,
           not_diagnosed: str = "", calibration=None) -> Choice:
    """The model for an image whose damage is ``seen`` (several: a video's frames, taken as
    one by ``Seen.mean``; None: not diagnosed, ``not_diagnosed`` says why), among ``options``
    (``candidates(scale)``). Pure: the same inputs give the same choice.

    The specialists are ranked by ``distance`` (a general model by its nearest alternative);
    the nearest is taken when the choice is certain (``confidence >= CONFIDENT``), else the
    general model when there is one (the nearest general model if several), else still the
    nearest specialist, said uncertain. Not diagnosed: the general model, else the specialist
    nearest to a clean filtered downscale (the papers' LR). ValueError when ``options`` is empty.

    ``calibration`` (``calibration.Calibration``): when it covers exactly ``options`` at
    ``scale``, an uncertain choice of a diagnosed image takes the model with the best mean PSNR
    on the calibration images diagnosed most like it, instead of the general model; so does a
    certain one of drawn content (``DRAWN``); without a calibration that takes the general model
    if the specialist saw no drawn content (``content``). Else a certain choice keeps it."""
    if not options:
        raise ValueError(f"no built-in model at x{scale} to choose from")
    if seen is not None and not isinstance(seen, Seen):
        seen = Seen.mean(list(seen)) if len(seen) else None
    used = seen if seen is not None else NEUTRAL
    dist = {c.name: _model_distance(used, c) for c in options}
    specialists = sorted((c for c in options if not c.general), key=lambda c: (dist[c.name], c.name))
    generals = sorted((c for c in options if c.general), key=lambda c: (dist[c.name], c.name))
    rounded = {k: round(v, 3) for k, v in dist.items()} if seen is not None else {}
    what = seen.text() if seen is not None else f"not diagnosed: {not_diagnosed or 'no diagnosis'}"

    def made(model: str, reason: str, confidence: float, uncertain: bool, calibrated=None) -> Choice:
        return Choice(model, int(scale), reason, float(confidence), uncertain, seen, rounded,
                      calibrated=calibrated or {})

    if not specialists:  # only general models at this scale
        g = generals[0]
        return made(g.name, f"{what}; the general model, no specialist at x{scale}", 0.0, seen is None)
    best = specialists[0]
    margin = dist[specialists[1].name] - dist[best.name] if len(specialists) > 1 else math.inf
    confidence = float(np.clip(min(margin / (2 * MARGIN), 1.0 - dist[best.name] / (2 * NEAR)), 0.0, 1.0))
    uncertain = seen is None or confidence < CONFIDENT
    only = len(specialists) == 1
    calibrated = seen is not None and calibration is not None and calibration.covers([c.name for c in options], scale)
    unseen = bool(generals and best.content) and "drawn" not in best.content  # trained on no drawing
    drawn = seen is not None and seen.two_level >= DRAWN and (calibrated or unseen)  # NaN: not drawn
    if not uncertain and not drawn:
        why = (f"the only built-in model at x{scale}, trained on {best.spec!r}" if only
               else f"nearest to {best.spec!r}")
        return made(best.name, f"{what}; {why}", confidence, False)
    if seen is None:
        if generals:
            return made(generals[0].name, f"{what}; the general model", 0.0, True)
        return made(best.name, f"{what}; trained on {best.spec!r}, the nearest to a clean downscale; "
                               f"no general model at x{scale}", 0.0, True)
    if calibrated:
        from edsr_jax.inference.calibration import features

        r = calibration.rank(features(seen))
        top, *rest = r.means
        than = f", {r.means[top] - r.means[rest[0]]:+.2f} dB over {rest[0]}" if rest else ""
        mean = f"; the mean of {' and '.join(blend.members(top))}'s outputs" if blend.is_blend(top) else ""
        head = "uncertain: " if uncertain else "drawn content: "
        return made(top, f"{head}{what}; nearest {best.name} at confidence {confidence:.2f}; best on "
                         f"{r.wins[top]} of the {r.k} calibration images diagnosed most like it{than}{mean}",
                    confidence, uncertain, {"k": r.k, "mean_psnr": {m: round(v, 3) for m, v in r.means.items()},
                                            "wins": r.wins})
    if generals:
        head = "uncertain: " if uncertain else "drawn content: "
        return made(generals[0].name, f"{head}{what}; nearest {best.name} at confidence "
                                      f"{confidence:.2f}; the general model", confidence, uncertain)
    near = (f"the only built-in model at x{scale}, trained on {best.spec!r}" if only
            else f"nearest to {best.spec!r}")
    return made(best.name, f"uncertain: {what}; {near} at confidence {confidence:.2f}; "
                           f"no general model at x{scale}", confidence, True)


# --------------------------------------------------------------------------- diagnosing

def _array_problem(rgb: np.ndarray) -> str:
    """Why ``rgb`` cannot be diagnosed ("" when it can): not ``(H, W, 3) uint8`` or too small,
    the checks ``diagnosis.diagnose_file`` makes for a file (a grayscale image, R = G = B, is
    diagnosed without its noise)."""
    from edsr_jax.evaluation.diagnosis import MIN_SIDE

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        return f"a {rgb.dtype} image of shape {rgb.shape}, not (H, W, 3) uint8"
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        return f"{w}x{h} is too small to diagnose (under {MIN_SIDE} pixels a side)"
    return ""


def _diagnosis_record(d) -> dict:
    keys = ("kind", "kind_probabilities", "jpeg_quality", "jpeg_source", "jpeg_confidence", "blur",
            "blur_confidence", "noise", "noise_confidence", "upscaled_by", "flat_share", "two_level", "spec",
            "seconds")
    return {k: getattr(d, k) for k in keys}


class AutoUpscaler:
    """``--model auto`` at one ``scale``: ``choose`` a built-in model per image (a path or an
    ``(H, W, 3) uint8`` array), ``upscaler(model)`` to run it (each model loaded once), or
    both at once with ``upscale``. Diagnoses of files are kept per (path, size, modification
    time) for the life of the object, so a file is diagnosed once however often it is asked.

    ``models_dir``: the built-in models' folder (``pretrained.MODELS_DIR``); ``diagnose_file``
    / ``diagnose_array``: the diagnosis functions (``evaluation.diagnosis``'s by default);
    ``upscaler_options``: passed to every ``Upscaler`` (``tile``, ``ensemble``, ``dtype``,
    ``memory_budget_mb``, ``conv_backend``). ValueError when no built-in model at ``scale``
    names its training damage (``candidates``).
    """

    def __init__(self, scale: int = 2, *, models_dir: str | os.PathLike | None = None,
                 diagnose_file: Callable | None = None, diagnose_array: Callable | None = None,
                 **upscaler_options):
        self.scale = int(scale)
        self.models_dir = models_dir
        self.candidates = candidates(self.scale, models_dir)
        from edsr_jax.evaluation import diagnosis
        from edsr_jax.inference import calibration

        self.calibration = calibration.load(models_dir)
        self._diagnose_file = diagnose_file or diagnosis.diagnose_file
        self._diagnose_array = diagnose_array or diagnosis.diagnose_array
        self._options = upscaler_options
        self._files: dict[tuple[str, int, int], Choice] = {}
        self._upscalers: dict[str, Any] = {}
        self.name = pretrained.AUTO

    @property
    def models(self) -> list[str]:
        """The names it chooses from."""
        return [c.name for c in self.candidates]

    def choose(self, image, name: str | None = None) -> Choice:
        """The ``Choice`` for ``image``: a file path (diagnosed once per path, size and
        modification time) or an ``(H, W, 3) uint8`` array (``name`` labels it)."""
        if isinstance(image, (str, os.PathLike)):
            return self._choose_file(Path(image))
        return self._choose_seen(*self._seen_array(np.asarray(image), name or "image"))

    def choose_frames(self, frames: Sequence[np.ndarray], name: str = "video") -> Choice:
        """One ``Choice`` for a video or animation from a few of its frames (``(H, W, 3)``
        uint8 each; ``Seen.mean`` of those that can be diagnosed)."""
        seen, records, why = [], [], ""
        for k, frame in enumerate(frames):
            s, record, problem = self._seen_array(np.asarray(frame), f"{name} frame {k}")
            if s is None:
                why = why or problem
            else:
                seen.append(s)
                records.append(record)
        return self._choose_seen(seen or None, {"frames": records}, why or "no frame")

    def upscaler(self, model: str):
        """The ``infer.Upscaler`` of built-in ``model`` (a ``blend.Blend`` of its members for
        ``"A+B"``), each model loaded on first use."""
        up = self._upscalers.get(model)
        if up is None and blend.is_blend(model):
            up = blend.Blend([self.upscaler(m) for m in blend.members(model)], name=model)
            self._upscalers[model] = up
        elif up is None:
            from edsr_jax.inference import infer

            config, params = pretrained.load(model, self.models_dir)
            mdsr = infer.is_mdsr(config)
            up = infer.Upscaler(config, params, name=model, scale=self.scale if mdsr else None,
                                **self._options)
            self._upscalers[model] = up
        return up

    def upscale(self, image, name: str | None = None) -> tuple[np.ndarray, Choice]:
        """``(sr, choice)``: ``image`` (a path or ``(H, W, 3)`` uint8) upscaled by the model
        ``choose`` takes, ``(H*s, W*s, 3)`` uint8 (a file read as RGB, ``images.read_rgb``)."""
        choice = self.choose(image, name)
        if isinstance(image, (str, os.PathLike)):
            from edsr_jax.io.images import read_rgb

            image = read_rgb(image)
        return self.upscaler(choice.model)(image), choice

    def _choose_file(self, path: Path) -> Choice:
        from edsr_jax.evaluation.diagnosis import Skipped

        try:
            st = path.stat()
            key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        except OSError:
            key = None
        if key is not None and key in self._files:
            return self._files[key]
        try:
            d = self._diagnose_file(path, self.scale)
        except Skipped as e:
            choice = self._choose_seen(None, {}, str(e).removeprefix(f"{path}: "))
        else:
            choice = self._choose_seen(Seen.of(d), _diagnosis_record(d), "")
        if key is not None:
            self._files[key] = choice
        return choice

    def _seen_array(self, rgb: np.ndarray, name: str) -> tuple[Seen | None, dict, str]:
        if rgb.dtype == np.uint16:  # a deep video frame: its top 8 bits
            rgb = ((rgb.astype(np.uint32) + 128) // 257).astype(np.uint8)
        problem = _array_problem(rgb)
        if problem:
            return None, {}, problem
        d = self._diagnose_array(np.ascontiguousarray(rgb), name=name, scale=self.scale)
        return Seen.of(d), _diagnosis_record(d), ""

    def _choose_seen(self, seen, record: dict, why: str) -> Choice:
        c = choose(seen, self.candidates, self.scale, not_diagnosed=why, calibration=self.calibration)
        info = dict(record) if seen is not None else {"not_diagnosed": why}
        return Choice(c.model, c.scale, c.reason, c.confidence, c.uncertain, c.seen, c.distances, info,
                      c.calibrated)


def choose_model(image, scale: int = 2, *, models_dir: str | os.PathLike | None = None) -> Choice:
    """The built-in model for ``image`` (a file path or an ``(H, W, 3)`` uint8 array) at
    ``scale``: ``Choice`` with ``model``, a one-line ``reason``, ``confidence`` in [0, 1] and
    ``uncertain``. ``AutoUpscaler`` does the same and runs the model, keeping diagnoses and
    loaded models between calls. ValueError when no built-in model at ``scale`` names its
    training damage."""
    return AutoUpscaler(scale, models_dir=models_dir).choose(image)
