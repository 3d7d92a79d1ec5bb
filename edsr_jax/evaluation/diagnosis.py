"""Diagnose the damage: estimate how a folder of low-resolution images was degraded and
propose the degradation spec (``edsr_jax.degradation.degrade`` language) to train with.

Per image (``diagnose_file``, ``diagnose_array``), from its pixels (and, for JPEG files, their
header): the JPEG quality (``jpeg_quality``), then whether it was upscaled back (an image
that was is reported with that factor ``f`` and analysed at its real resolution), the
resampling kind, the blur and the noise (``estimators``). A JPEG step after the noise
quantises it away: then the noise is not measured (said, not guessed).

The folder's spec (``propose``, ``diagnose_folder``) composes the resize, a blur and a noise
range when most images show them, and the range of JPEG qualities, with a confidence per part.
The resize is the history (pixel dropping or filtering) that best explains the per-image
diagnoses given how often the model confuses them (``estimators.one_history_test``): a folder
made with one spec reads as one history even when some of its images are diagnosed otherwise.
Only pixel dropping (aliasing) or an upscale back is evidence of a downscale: a filtered
downscale leaves no trace, so without ``scale`` a folder that shows neither gets no resize in
its spec ("no downscale found") instead of an assumed ``bicubic(2)``. A folder whose images
disagree (pixel dropping against filtering beyond that confusion, some JPEG'd and some not,
noisy and clean, qualities spread over more than 40) gets a per-image table and a warning that
one spec will not fit them all (``report``). Files that cannot be read, are tiny
(under ``MIN_SIDE`` pixels a side), 16- or 32-bit are named and skipped (``Skipped``). A
grayscale image is diagnosed from its one channel (read as R = G = B).
``python -m edsr_jax.diagnose`` is the command line.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from edsr_jax import SCALES
from edsr_jax.degradation import degrade
from edsr_jax.evaluation.estimators import (EDGE_E2_BASE, KINDS, blur_from_edges, features,
                                            flat_share, kind_probabilities, noise_sigma, one_history_test,
                                            two_level_share, upscaled_by)
from edsr_jax.evaluation.jpeg_quality import jpeg_lattice, luma, quality_from_tables
from edsr_jax.io import images

MIN_SIDE = 32  # images smaller than this on either side are skipped
MAX_SIDE = 1024  # resampling, blur and noise are measured on a central crop at most this big
BLUR_MIN = 1.2   # HR pixels: a smaller estimated blur is not proposed (experiments/diagnose.py)
NOISE_MIN = 2.0  # 0-255: a smaller estimated noise is not proposed (texture reads as ~1)


@dataclass
class ImageDiagnosis:
    """What one image shows. Sigmas: ``blur`` in HR pixels before the resize, ``noise`` on
    the 0-255 scale; confidences in [0, 1]; ``spec`` parses with ``degrade.parse``."""

    name: str
    width: int
    height: int
    format: str
    scale: int
    jpeg_quality: int | None
    jpeg_source: str           # "tables", "tables (not libjpeg's)", "pixels" or "none"
    jpeg_confidence: float
    upscaled_by: int           # 1 when the image is not an upscaled one
    upscaled_how: str          # "nearest", "smooth" or ""
    kind: str
    kind_probabilities: dict[str, float]
    edge_e2: float             # signed squared effective edge sigma, LR pixels
    blur: float
    blur_confidence: float
    noise: float
    noise_confidence: float
    spec: str
    features: list[float] = field(default_factory=list)
    seconds: float = 0.0
    flat_share: float = float("nan")  # share of flat 4x4 tiles (estimators.flat_share): drawn content
    two_level: float = float("nan")   # share of busy 8x8 tiles two levels explain (estimators.two_level_share)


def _r(x: float, nd: int = 2) -> float:
    return float(round(float(x), nd)) if np.isfinite(x) else float("nan")


def diagnose_array(rgb: np.ndarray, *, name: str = "image", fmt: str = "array",
                   quantization: dict | None = None, scale: int | None = None) -> ImageDiagnosis:
    """Diagnose one LR image ``rgb (H, W, 3) uint8`` (H, W >= MIN_SIDE).

    ``quantization``: a JPEG file's tables (``images.file_header``), read exactly; ``scale``:
    the SR factor to propose the spec for (None: the upscaled-back factor when there is one,
    else 2 when the image shows pixel dropping, else 1: no downscale found, the spec has no
    resize and ``blur`` is in the image's own pixels).
    """
    t0 = time.process_time()
    y = luma(rgb)
    # JPEG: the last thing that happened to the stored pixels.
    if quantization:
        q, exact = quality_from_tables(quantization)
        jq, jsrc, jconf = q, "tables" if exact else "tables (not libjpeg's)", 1.0 if exact else 0.7
    else:
        lat = jpeg_lattice(y, clipped=(rgb.min(axis=2) == 0) | (rgb.max(axis=2) == 255))
        jq = lat["quality"]
        jsrc = "pixels" if jq is not None else "none"
        g = lat["gain"]
        jconf = min(0.99, 0.5 + g) if jq is not None else (0.9 if g < 0 else 0.6)
    # Upscaled back? Analyse the image at its real resolution.
    f, how, _ = upscaled_by(rgb, y)
    work = rgb
    if f > 1 and how == "nearest":
        d = [np.abs(np.diff(y, axis=a)).mean(axis=1 - a) for a in (0, 1)]
        ph = [int((np.argmax(dd[:len(dd) // f * f].reshape(-1, f).mean(axis=0)) + 1) % f) for dd in d]
        work = np.ascontiguousarray(rgb[ph[0]::f, ph[1]::f])
    elif f > 1:
        from edsr_jax.degradation.imresize import imresize
        h, w = rgb.shape[0] // f * f, rgb.shape[1] // f * f
        work = imresize(rgb[:h, :w], 1.0 / f)
    h, w = work.shape[:2]
    if max(h, w) > MAX_SIDE:  # a central crop holds the statistics; keeps large files fast
        r0, c0 = max(0, (h - MAX_SIDE) // 2), max(0, (w - MAX_SIDE) // 2)
        work = work[r0:r0 + MAX_SIDE, c0:c0 + MAX_SIDE]
    # A grayscale image (R = G = B) gets no noise estimate: the patch method reads the noise in
    # the directions texture leaves unused, which one channel's 5x5 patches do not have (on clean
    # grayscale LR it reads 5-6; experiments/auto_choice.py's set). Its other parts are luma's.
    gray = np.array_equal(work[..., 0], work[..., 1]) and np.array_equal(work[..., 1], work[..., 2])
    nz = float("nan") if gray else noise_sigma(work)
    feats = features(work, nz, jq)
    probs = kind_probabilities(feats)[0]
    k = int(np.argmax(probs))
    kind = KINDS[k]
    s = scale if scale is not None else (f if f in SCALES else 2 if kind == "nearest" else 1)
    e2 = float(feats[3])
    blur = blur_from_edges(e2, kind, s)
    # 0.25 LR px^2 is about the spread of e2 between sharp images: confidence grows with the
    # distance of e2 from the threshold in those units.
    thr = EDGE_E2_BASE[kind] + (BLUR_MIN / s) ** 2
    bconf = min(0.95, 0.5 + 0.45 * abs(e2 - thr) / 0.25) if np.isfinite(e2) else 0.0
    # JPEG quantises away the high frequencies the noise estimate reads: noise added before
    # a JPEG step is not measured (experiments/diagnose.py), only what lies on top of it.
    nconf = 0.0 if gray else 0.9 if jq is None else 0.2
    spec = _spec(kind, s, blur if blur >= BLUR_MIN else None, nz if nz >= NOISE_MIN else None, jq)
    y = luma(work)
    flat, two = _r(flat_share(y, nz), 3), _r(two_level_share(y), 3)
    return ImageDiagnosis(
        name=name, width=int(rgb.shape[1]), height=int(rgb.shape[0]), format=fmt, scale=s,
        jpeg_quality=jq, jpeg_source=jsrc, jpeg_confidence=_r(jconf),
        upscaled_by=f, upscaled_how=how, kind=kind,
        kind_probabilities={kk: _r(p, 3) for kk, p in zip(KINDS, probs)},
        edge_e2=_r(e2, 3), blur=_r(blur), blur_confidence=_r(bconf), noise=_r(nz),
        noise_confidence=nconf, spec=spec, features=[_r(v, 4) for v in feats],
        flat_share=flat, two_level=two, seconds=time.process_time() - t0)


def _spec(kind: str, scale: int, blur, noise, jpeg) -> str:
    """Spec text from parts; ``blur``/``noise``/``jpeg`` are None, one value or ``(lo, hi)``;
    ``scale`` 1: no resize (no downscale found). "" when there is no part at all."""
    def arg(v, nd):
        if isinstance(v, tuple):
            lo, hi = v
            if round(lo, nd) == round(hi, nd):
                v = lo
            else:
                return f"{lo:.{nd}f},{hi:.{nd}f}" if nd else f"{int(lo)},{int(hi)}"
        return f"{v:.{nd}f}" if nd else f"{int(v)}"

    parts = []
    if blur is not None:
        parts.append(f"blur({arg(blur, 1)})")
    if scale > 1:
        parts.append(f"{kind}({scale})")
    if noise is not None:
        parts.append(f"noise({arg(noise, 1)})")
    if jpeg is not None:
        parts.append(f"jpeg({arg(jpeg, 0)})")
    spec = " > ".join(parts)
    if spec:
        degrade.parse(spec)  # the spec we print always parses
    return spec


class Skipped(Exception):
    """An image the diagnosis cannot use; the message names the file and why."""


def diagnose_file(path: str | Path, scale: int | None = None) -> ImageDiagnosis:
    """Diagnose one image file. Raises ``Skipped`` naming the file when it is unreadable,
    smaller than ``MIN_SIDE`` pixels a side, or 16- or 32-bit (its history is read from 8-bit
    statistics). Grayscale files (mode L, LA, 1, or R = G = B) are diagnosed from their one
    channel."""
    path = Path(path)
    try:
        head = images.file_header(path)
        notes: list[str] = []
        rgb = images.read_rgb(path, notes)
    except images.ImageError as e:
        raise Skipped(str(e)) from None
    if head["bits"] == 16:
        raise Skipped(f"{path}: 16-bit image (mode {head['mode']}): diagnose 8-bit images")
    if head["mode"] in ("I", "F"):
        kind = "float" if head["mode"] == "F" else "integer"
        raise Skipped(f"{path}: 32-bit {kind} grayscale image (mode {head['mode']}): diagnose 8-bit images")
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise Skipped(f"{path}: {w}x{h} is too small to diagnose (under {MIN_SIDE} pixels a side)")
    return diagnose_array(rgb, name=path.name, fmt=head["format"] or path.suffix.lstrip("."),
                          quantization=head["quantization"], scale=scale)


# --------------------------------------------------------------------------- the folder

@dataclass
class Part:
    """One part of the proposed spec: its text (or "none"), a confidence in [0, 1] and why."""

    name: str
    text: str
    confidence: float
    why: str


@dataclass
class FolderDiagnosis:
    """The proposal for a folder: ``spec`` (parses with ``degrade.parse``; "" when nothing
    was found), its ``parts``, ``mixed`` warnings (empty when one spec fits), the per-image
    diagnoses and skips. ``scale`` 1: no downscale found (the spec has no resize).
    ``resampling``: ``estimators.one_history_test``'s result."""

    spec: str
    scale: int
    parts: list[Part]
    mixed: list[str]
    images: list[ImageDiagnosis]
    skipped: list[str]
    resampling: dict = field(default_factory=dict)


def _round_range(values: np.ndarray, step: float, lo_pct=10, hi_pct=90) -> tuple[float, float]:
    lo = math.floor(np.percentile(values, lo_pct) / step) * step
    hi = math.ceil(np.percentile(values, hi_pct) / step) * step
    return float(lo), float(max(hi, lo))


def propose(diags: list[ImageDiagnosis], scale: int | None = None,
            skipped: Sequence[str] = ()) -> FolderDiagnosis:
    """Compose one spec for a folder from its per-image diagnoses (at least one)."""
    n = len(diags)
    mixed: list[str] = []
    factors = [d.upscaled_by for d in diags]
    if len(set(factors)) > 1:
        counts = ", ".join(f"{factors.count(f)} x{f}" for f in sorted(set(factors)))
        mixed.append(f"upscaled-back factors differ ({counts}; x1 = not upscaled)")
    kind, scale, resize, test = _resize(diags, scale, factors)
    if test["mixed"]:
        votes = {k: sum(d.kind == k for d in diags) for k in KINDS}
        mixed.append("resampling differs: " + ", ".join(f"{v} {k}" for k, v in votes.items() if v)
                     + f" beyond the per-image confusion (pixel dropping in about "
                     f"{test['nearest_share']:.0%} of the images: p = {test['p']:.1g} for one history)")
    parts = [resize]
    # blur: re-derived for the folder's kind and scale
    blurs = np.array([blur_from_edges(d.edge_e2, kind, scale) for d in diags])
    has_blur = blurs >= BLUR_MIN
    blur = None
    if has_blur.mean() > 0.5:
        blur = _round_range(blurs[has_blur], 0.1)
        bconf = float(np.mean([d.blur_confidence for d, b in zip(diags, has_blur) if b]))
        parts.insert(0, Part("blur", _spec_part("blur", blur, 1), _r(bconf),
                             f"{int(has_blur.sum())} of {n} images; edge sigma -> {'HR' if scale > 1 else 'image'} sigma "
                             f"median {np.median(blurs):.2f}"))
    else:
        parts.insert(0, Part("blur", "none", _r(np.mean([d.blur_confidence for d in diags])),
                             f"{int(has_blur.sum())} of {n} images show a blur >= {BLUR_MIN}"))
    # noise
    noises = np.array([d.noise for d in diags], dtype=float)
    has_noise = np.nan_to_num(noises) >= NOISE_MIN
    noise = None
    nconf = _r(np.mean([d.noise_confidence for d in diags]))
    if has_noise.mean() > 0.5:
        noise = _round_range(noises[has_noise], 0.5)
        parts.append(Part("noise", _spec_part("noise", noise, 1), nconf,
                          f"{int(has_noise.sum())} of {n} images; sigma median {np.nanmedian(noises):.2f}"))
    else:
        jpegged = sum(d.jpeg_quality is not None for d in diags)
        hidden = "; noise before a JPEG step is hidden by it and not measured" if jpegged > n / 2 else ""
        parts.append(Part("noise", "none", nconf,
                          f"{int(has_noise.sum())} of {n} images show noise >= {NOISE_MIN}{hidden}"))
    if 0.2 < has_noise.mean() < 0.8:
        mixed.append(f"{int(has_noise.sum())} of {n} images are noisy, the others not")
    # jpeg
    qs = [d.jpeg_quality for d in diags if d.jpeg_quality is not None]
    jpeg = None
    if len(qs) / n >= 0.5:
        jpeg = (min(qs), max(qs))
        if len(qs) >= 10:
            jpeg = tuple(int(v) for v in _round_range(np.array(qs), 1, 1, 99))
        srcs = sorted({d.jpeg_source for d in diags if d.jpeg_quality is not None})
        parts.append(Part("jpeg", _spec_part("jpeg", jpeg, 0),
                          _r(np.mean([d.jpeg_confidence for d in diags if d.jpeg_quality is not None])),
                          f"{len(qs)} of {n} images, from {' and '.join(srcs)}; qualities "
                          f"{min(qs)}..{max(qs)}"))
        if max(qs) - min(qs) > 40:
            mixed.append(f"JPEG qualities spread from {min(qs)} to {max(qs)}")
    else:
        parts.append(Part("jpeg", "none", _r(np.mean([d.jpeg_confidence for d in diags])),
                          f"{len(qs)} of {n} images show JPEG"))
    if 0.2 < len(qs) / n < 0.8:
        mixed.append(f"{len(qs)} of {n} images went through JPEG, the others not")
    spec = _spec(kind, scale, blur, noise, jpeg)
    return FolderDiagnosis(spec=spec, scale=scale, parts=parts, mixed=mixed, images=list(diags),
                           skipped=list(skipped), resampling=test)


def _resize(diags: list[ImageDiagnosis], scale: int | None, factors: list[int]):
    """The folder's resampling: ``(kind, scale, Part, one_history_test result)``.

    The kind is the largest mean probability over the images (as validated in
    experiments/diagnose.py); whether pixel dropping and filtering are both present is
    ``one_history_test`` over the images' ``P(nearest)``, which allows for the model's
    confusion (bicubic against bilinear is not tested: too alike to tell apart reliably).
    ``scale`` None: the most common upscaled-back factor, else 2 for pixel dropping, else 1
    (no downscale found: a filtered downscale leaves no trace)."""
    n = len(diags)
    test = one_history_test([d.kind_probabilities["nearest"] for d in diags],
                            [d.jpeg_quality is not None for d in diags])
    mean_p = np.array([[d.kind_probabilities[k] for k in KINDS] for d in diags]).mean(axis=0)
    kind = KINDS[int(np.argmax(mean_p))]
    common = max(set(factors), key=factors.count)
    if scale is None:
        scale = common if common in SCALES else 2 if kind == "nearest" else 1
    votes = sum(d.kind == kind for d in diags)
    why = (f"{votes} of {n} images; mean probability "
           + ", ".join(f"{k} {p:.2f}" for k, p in zip(KINDS, mean_p))
           + ("; pixel dropping and filtering both present" if test["mixed"] else
              "; one history allowing for the per-image confusion")
           + f" (p = {test['p']:.2g})")
    if scale == 1:
        return kind, 1, Part("resize", "none found", _r(mean_p.max()),
                             "no downscale found: no aliasing, no upscale back; a bicubic or "
                             f"bilinear downscale leaves no trace either ({why})"), test
    if kind != "nearest" and common not in SCALES:
        why = f"assumed for --scale {scale}: no downscale found (no aliasing, no upscale back); {why}"
    return kind, scale, Part("resize", f"{kind}({scale})", _r(mean_p.max()), why), test


def _spec_part(op: str, v: tuple[float, float], nd: int) -> str:
    lo, hi = v
    if round(lo, nd) == round(hi, nd):
        return f"{op}({lo:.{nd}f})"
    return f"{op}({lo:.{nd}f},{hi:.{nd}f})"


def diagnose_folder(folder: str | Path, scale: int | None = None, progress=None) -> FolderDiagnosis:
    """Diagnose every image file of ``folder``. Raises ``Skipped`` when no image could be used.
    ``progress(i, n, path)`` is called before each image when given."""
    paths = images.image_files(folder)
    diags, skipped = [], []
    for i, p in enumerate(paths):
        if progress:
            progress(i, len(paths), p)
        try:
            diags.append(diagnose_file(p, scale))
        except Skipped as e:
            skipped.append(str(e))
    if not diags:
        raise Skipped(f"{folder}: none of its {len(paths)} image files could be diagnosed: "
                      + "; ".join(skipped[:4]) + ("; ..." if len(skipped) > 4 else ""))
    return propose(diags, scale, skipped)


# --------------------------------------------------------------------------- report

def table(diags: Sequence[ImageDiagnosis]) -> str:
    """A plain-text table, one row per image."""
    head = f"{'image':<28} {'size':>9} {'fmt':<4} {'resize (p)':<16} {'blur':>5} {'noise':>6} {'jpeg':>9}  spec"
    rows = [head, "-" * len(head)]
    for d in diags:
        size = f"{d.width}x{d.height}"
        kind = f"{d.kind} ({d.kind_probabilities[d.kind]:.2f})"
        up = f" up x{d.upscaled_by}" if d.upscaled_by > 1 else ""
        jq = "-" if d.jpeg_quality is None else f"{d.jpeg_quality}{'' if d.jpeg_source == 'pixels' else ' (t)'}"
        rows.append(f"{d.name[:28]:<28} {size:>9} {d.format[:4]:<4} {kind:<16} {d.blur:>5.2f} "
                    f"{d.noise:>6.2f} {jq:>9}  {d.spec}{up}")
    return "\n".join(rows)


def report(fd: FolderDiagnosis, show_table: bool = False) -> str:
    """The text the CLI prints: the spec, its parts with confidences, warnings, a table."""
    lines = []
    if fd.mixed or show_table:
        lines += [table(fd.images), ""]
    lines.append(f"spec: {fd.spec or 'none (no downscale, blur, noise or JPEG found)'}")
    for p in fd.parts:
        lines.append(f"  {p.name:<7} {p.text:<22} confidence {p.confidence:.2f}  ({p.why})")
    ups = [d for d in fd.images if d.upscaled_by > 1]
    if ups:
        lines.append(f"note: {len(ups)} of {len(fd.images)} images look upscaled back "
                     f"(x{ups[0].upscaled_by}, {ups[0].upscaled_how}); they were analysed at their "
                     "real resolution: reduce them by that factor before upscaling with a model")
    if fd.scale == 1:
        lines.append("note: no downscale found: these images show no aliasing and were not "
                     "upscaled back, so they may never have been downscaled (a bicubic or bilinear "
                     "downscale leaves no trace either); to train a model for them, choose the "
                     "factor: --scale 2 proposes the spec with the likelier filter, bicubic(2) or "
                     "bilinear(2), assumed")
    for m in fd.mixed:
        lines.append(f"warning: mixed histories: {m}; one spec will not fit all (see the table)")
    for s in fd.skipped:
        lines.append(f"skipped: {s}")
    return "\n".join(lines)
