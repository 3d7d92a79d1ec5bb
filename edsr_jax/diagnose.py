"""Diagnose the damage: estimate how a folder of low-resolution images was degraded and
propose the degradation spec (``edsr_jax.degradation.degrade`` language) to train with.

``python -m edsr_jax.diagnose LR_DIR [--scale 2] [--json out.json]``

Per image, from its pixels (and, for JPEG files, their header):

- **JPEG**: for a JPEG file, the quality is read exactly from its luminance quantisation
  table (libjpeg's quality scaling of the standard tables inverted; a table no libjpeg
  quality makes is matched to the nearest one and said so). For any other file (a JPEG
  re-saved as PNG), from the 8 x 8 block DCT of the luma: the coefficients of a decoded
  JPEG sit on multiples of the quantisation steps, and the libjpeg quality whose table
  explains them best (a likelihood ratio against "no lattice") is taken.
- **resampling**: pixel dropping (``nearest``: no anti-alias filter, so the spectrum
  keeps its energy up to the Nyquist frequency and edges switch within one pixel) versus
  filtered downscaling (``bicubic``, ``bilinear``: the top of the spectrum attenuated,
  edges spread over two pixels, ``bicubic`` with overshoot). A small logistic model on a
  few spectral and edge features, calibrated on Sun80 (``experiments/diagnose.py
  --calibrate``), decides; its probability is the confidence. An image that was upscaled
  back (blocks of ``f x f`` equal pixels, or an exact bicubic / bilinear x ``f``
  interpolation of a smaller image, by a least-squares fit) is reported with that factor
  ``f`` and analysed at its real resolution.
- **blur**: the effective Gaussian sigma of strong edges (re-blur gradient ratio), in LR
  pixels; what the resampling itself explains is removed and the rest converted to a
  ``blur(sigma)`` before the resize, in HR pixels (``sigma_HR = scale * sqrt(e^2 - e0^2)``).
- **noise**: the Gaussian sigma (0-255) from the smallest eigenvalues of the covariance
  of 5 x 5 x 3 patches (Chen, Zhu & Heng, ICCV 2015), robust to texture. A JPEG step
  after the noise quantises it away: then the noise is not measured (said, not guessed).

The folder's spec composes the majority resize, a blur and a noise range when most images
show them, and the range of JPEG qualities, with a confidence per part; a folder whose
images disagree (some JPEG'd and some not, pixel dropping against filtering, noisy and
clean, qualities spread over more than 40) gets a per-image table and a warning that one spec will not fit them all. Files that
cannot be read, are tiny (under ``MIN_SIDE`` pixels a side), grayscale or 16-bit are
named and skipped. Exit codes: 0 done, 1 some files skipped, 2 a usage error.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from edsr_jax import SCALES
from edsr_jax.io import cli
from edsr_jax.degradation import degrade
from edsr_jax.io import images
from edsr_jax.io import outputs

MIN_SIDE = 32  # images smaller than this on either side are skipped
MAX_SIDE = 1024  # resampling, blur and noise are measured on a central crop at most this big
KINDS = ("nearest", "bicubic", "bilinear")

# --------------------------------------------------------------------------- JPEG tables

# The standard (Annex K) tables libjpeg scales, natural (row-major) order.
STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.int64)
STD_CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32, dtype=np.int64)


def libjpeg_table(quality: int, chroma: bool = False) -> np.ndarray:
    """The quantisation table libjpeg (and Pillow) writes at ``quality`` in 1..100.

    ``(64,) int64`` in natural order, values 1..255 (``jpeg_quality_scaling`` and
    ``jpeg_add_quant_table`` with ``force_baseline``).
    """
    q = min(max(int(quality), 1), 100)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    base = STD_CHROMA if chroma else STD_LUMA
    return np.clip((base * scale + 50) // 100, 1, 255)


LUMA_TABLES = np.stack([libjpeg_table(q) for q in range(1, 101)])  # (100, 64): row q-1
CHROMA_TABLES = np.stack([libjpeg_table(q, chroma=True) for q in range(1, 101)])


def quality_from_tables(tables: dict[int, Sequence[int]]) -> tuple[int, bool]:
    """The libjpeg quality of a JPEG file's quantisation tables (Pillow's ``img.quantization``).

    Returns ``(quality 1..100, exact)``: ``exact`` when the luminance table (and the
    chrominance one, when present) is exactly the one libjpeg writes at that quality
    (the highest such quality when several qualities share a table); otherwise the
    quality whose luminance table is nearest in log-step (another encoder's tables).
    """
    luma = np.asarray(tables[min(tables)], dtype=np.int64).reshape(64)
    chroma = (np.asarray(tables[sorted(tables)[1]], dtype=np.int64).reshape(64)
              if len(tables) > 1 else None)
    match = np.all(LUMA_TABLES == luma, axis=1)
    if chroma is not None:
        match &= np.all(CHROMA_TABLES == chroma, axis=1)
    if match.any():
        return int(np.flatnonzero(match)[-1] + 1), True
    err = np.abs(np.log(LUMA_TABLES) - np.log(np.maximum(luma, 1))).mean(axis=1)
    return int(np.argmin(err) + 1), False


# --------------------------------------------------------------------------- pixels

_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def luma(rgb: np.ndarray) -> np.ndarray:
    """JPEG's full-range luma ``0.299 R + 0.587 G + 0.114 B``: ``(H, W, 3) uint8 -> (H, W) float32`` in [0, 255]."""
    return rgb.astype(np.float32) @ _LUMA_WEIGHTS


def _dct_matrix() -> np.ndarray:
    k = np.arange(8)
    m = np.cos((2 * k[None, :] + 1) * k[:, None] * np.pi / 16) * np.sqrt(2 / 8)
    m[0] /= np.sqrt(2)
    return m


_DCT8 = _dct_matrix()  # orthonormal 8-point DCT-II: JPEG's FDCT on an 8 x 8 block is D X D^T
_ZIGZAG = sorted(range(64), key=lambda i: (i // 8 + i % 8, (i // 8) if (i // 8 + i % 8) % 2 else (i % 8)))
JPEG_FREQS = np.array(_ZIGZAG[:15])  # the lowest 15 frequencies (zigzag), DC included
_JPEG_SIGMA = 0.6   # std of a decoded coefficient around its lattice point (rounding, colour)
_JPEG_OUTLIER = 0.05  # share of coefficients off any lattice (clipping at 0/255)
_JPEG_MIN_GAIN = 0.15  # nats per used coefficient: below this the image shows no JPEG lattice
_JPEG_MAX_BLOCKS = 1024


def block_grid(y: np.ndarray) -> tuple[int, int]:
    """The offset ``(dy, dx)`` in 0..7 of the most likely 8 x 8 JPEG block grid of luma ``y``
    ``(H, W) float``: where the pixel differences across block boundaries stand out most."""
    out = []
    for axis in (0, 1):
        d = np.abs(np.diff(y, axis=axis)).mean(axis=1 - axis)  # difference between i and i+1
        n = len(d) // 8 * 8
        if n < 16:
            out.append(0)
            continue
        per = d[:n].reshape(-1, 8).mean(axis=0)  # per phase: difference after pixel 8k + phase
        phase = int(np.argmax(per))
        # the boundary follows pixel 7 of a block at offset 0, so offset = (phase + 1) % 8
        out.append((phase + 1) % 8 if per[phase] > 1.15 * np.median(per) else 0)
    return out[0], out[1]


def block_dct(y: np.ndarray, offset: tuple[int, int] = (0, 0),
              max_blocks: int = _JPEG_MAX_BLOCKS, skip: np.ndarray | None = None) -> np.ndarray:
    """Orthonormal 8 x 8 DCT (JPEG's scaling) of the level-shifted luma ``y - 128``.

    ``y (H, W) float`` -> ``(N, 64) float64`` coefficients of the complete blocks from
    ``offset``, natural order; blocks holding a True pixel of ``skip (H, W) bool`` are left
    out; at most ``max_blocks`` blocks, evenly strided.
    """
    dy, dx = offset
    h, w = (y.shape[0] - dy) // 8, (y.shape[1] - dx) // 8
    if h < 1 or w < 1:
        return np.zeros((0, 64))
    b = (y[dy:dy + 8 * h, dx:dx + 8 * w].astype(np.float64) - 128.0)
    b = b.reshape(h, 8, w, 8).transpose(0, 2, 1, 3).reshape(-1, 8, 8)
    if skip is not None:
        bad = skip[dy:dy + 8 * h, dx:dx + 8 * w].reshape(h, 8, w, 8).any(axis=(1, 3)).ravel()
        b = b[~bad]
    if len(b) > max_blocks:
        b = b[np.linspace(0, len(b) - 1, max_blocks).astype(int)]
    return np.einsum("ij,njk,lk->nil", _DCT8, b, _DCT8, optimize=True).reshape(-1, 64)


def jpeg_lattice(y: np.ndarray, clipped: np.ndarray | None = None) -> dict[str, Any]:
    """Estimate the JPEG quality an image was last saved at from its decoded luma alone.

    ``y (H, W) float`` in [0, 255]; ``clipped (H, W) bool``: pixels the decoder may have
    clipped (a channel at 0 or 255), whose blocks leave the lattice and are not used.
    Returns ``{"quality": int 1..100 or None, "gain":
    nats per coefficient of the best quality's lattice over no lattice, "offset": (dy, dx)}``;
    ``quality`` is None when no quality's lattice explains the coefficients (no JPEG, or one
    at quality >= ~97, which leaves steps of 1).
    """
    found = _lattice_at(y, (0, 0), clipped)
    offset = block_grid(y)
    if found["quality"] is None and offset != (0, 0):  # cropped after the JPEG
        other = _lattice_at(y, offset, clipped)
        if other["gain"] > found["gain"]:
            found = other
    return found


def _lattice_at(y: np.ndarray, offset: tuple[int, int], clipped: np.ndarray | None) -> dict[str, Any]:
    """``jpeg_lattice`` for the block grid at ``offset``."""
    coef = block_dct(y, offset, skip=clipped)[:, JPEG_FREQS]  # (N, K)
    if len(coef) < 4:
        return {"quality": None, "gain": 0.0, "offset": offset}
    steps = LUMA_TABLES[:, JPEG_FREQS]  # (100, K)
    norm = 1.0 / (math.sqrt(2 * math.pi) * _JPEG_SIGMA)
    score = np.zeros(100)
    used = np.zeros(100)
    for j in range(len(JPEG_FREQS)):
        d = coef[:, j]
        cache: dict[int, tuple[float, int]] = {}
        for t in np.unique(steps[:, j]):
            t = int(t)
            k = np.round(d / t)
            sel = k != 0
            r = d[sel] - k[sel] * t
            # residual density relative to uniform on [-t/2, t/2]
            lr = np.log((1 - _JPEG_OUTLIER) * t * norm * np.exp(-0.5 * (r / _JPEG_SIGMA) ** 2)
                        + _JPEG_OUTLIER)
            cache[t] = (float(lr.sum()), int(sel.sum()))
        for q in range(100):
            s, n = cache[int(steps[q, j])]
            score[q] += s
            used[q] += n
    best = float(score.max())
    ties = np.flatnonzero(score >= best - 1e-9)
    q = int(ties[len(ties) // 2]) + 1
    gain = best / max(used[q - 1], 1.0)
    found = gain >= _JPEG_MIN_GAIN and q < 97 and used[q - 1] >= 20
    return {"quality": q if found else None, "gain": gain, "offset": offset}


def noise_sigma(rgb: np.ndarray, patch: int = 5, max_patches: int = 6000) -> float:
    """Gaussian noise std (0-255 scale, per channel) of ``rgb (H, W, 3) uint8``.

    Chen, Zhu & Heng (ICCV 2015): the covariance of ``patch x patch x 3`` patches has
    eigenvalues ``sigma^2`` in the directions texture does not use; the largest set of the
    smallest eigenvalues whose mean equals their median is taken as the noise. Patches
    touching 0 or 255 (clipped noise) are left out; at most ``max_patches``, evenly
    strided. The uint8 rounding (variance 1/12) is removed.
    """
    x = rgb.astype(np.float32)
    win = np.lib.stride_tricks.sliding_window_view(x, (patch, patch), axis=(0, 1))
    n_y, n_x = win.shape[:2]
    step = max(1, int(math.sqrt(n_y * n_x / max_patches)))
    p = win[::step, ::step].reshape(-1, 3 * patch * patch)
    ok = (p.min(axis=1) > 0) & (p.max(axis=1) < 255)
    if ok.sum() >= 10 * p.shape[1]:
        p = p[ok]
    if len(p) < 2 * p.shape[1]:
        return float("nan")
    p = p.astype(np.float64)
    p -= p.mean(axis=0)
    ev = np.sort(np.linalg.eigvalsh(p.T @ p / len(p)))
    var = float(ev[0])
    for m in range(len(ev), 0, -1):
        tau = ev[:m].mean()
        if np.sum(ev[:m] > tau) == np.sum(ev[:m] < tau):
            var = float(tau)
            break
    return math.sqrt(max(var - 1.0 / 12.0, 0.0))


def edge_stats(y: np.ndarray, s1: float = 1.0, s2: float = 2.0, top: float = 0.97) -> tuple[float, float]:
    """Width and overshoot of the strongest edges of luma ``y (H, W) float`` in [0, 255].

    Returns ``(e2, overshoot)``. ``e2``: the squared effective Gaussian sigma of the edges
    in pixels^2, signed (sharp edges on the pixel grid come out slightly negative). The
    gradient magnitude of a Gaussian edge of sigma ``e`` measured at scale ``s`` is
    ``A / sqrt(e^2 + s^2)``: the ratio ``R`` of the measurements at ``s1`` and ``s2`` gives
    ``e^2 = (s2^2 - R^2 s1^2) / (R^2 - 1)``. ``overshoot``: how far the profile across the
    edge (7 pixels along the gradient's main axis) goes past its ends, as a share of the
    step (cubic kernels ring, linear ones do not). Both are medians over the ``1 - top``
    share of pixels with the largest gradient that are maxima across their edge; NaN when
    the image has too few edges.
    """
    g1 = ndimage.gaussian_gradient_magnitude(y, s1, mode="reflect")
    g2 = ndimage.gaussian_gradient_magnitude(y, s2, mode="reflect")
    gx = ndimage.sobel(y, axis=1, mode="reflect")
    gy = ndimage.sobel(y, axis=0, mode="reflect")
    horiz = np.abs(gx) >= np.abs(gy)  # edge across x: compare with left/right neighbours
    pad = np.pad(g1, 1, mode="edge")
    c = pad[1:-1, 1:-1]
    peak = np.where(horiz, (c >= pad[1:-1, :-2]) & (c >= pad[1:-1, 2:]),
                    (c >= pad[:-2, 1:-1]) & (c >= pad[2:, 1:-1]))
    border = np.zeros_like(peak)
    border[4:-4, 4:-4] = True
    cand = peak & border
    nan = (float("nan"), float("nan"))
    if cand.sum() < 20:
        return nan
    thr = np.quantile(g1[cand], top)
    sel = cand & (g1 >= thr) & (g1 > 4.0)
    if sel.sum() < 10:
        return nan
    r2 = (g1[sel] / np.maximum(g2[sel], 1e-6)) ** 2
    e2 = (s2 * s2 - r2 * s1 * s1) / np.maximum(r2 - 1.0, 1e-6)
    # profiles across the edges, oriented so that they rise
    rr, cc = np.nonzero(sel)
    hz = horiz[rr, cc]
    sign = np.where(hz, np.sign(gx[rr, cc]), np.sign(gy[rr, cc])).astype(np.int64)
    k = np.arange(-3, 4)
    rows = rr[:, None] + np.where(hz, 0, sign)[:, None] * k
    cols = cc[:, None] + np.where(hz, sign, 0)[:, None] * k
    prof = y[np.clip(rows, 0, y.shape[0] - 1), np.clip(cols, 0, y.shape[1] - 1)]
    step = np.maximum(prof[:, 6] - prof[:, 0], 1.0)
    over = (np.maximum(prof[:, 4], prof[:, 5]) - prof[:, 6]) + (prof[:, 0] - np.minimum(prof[:, 1], prof[:, 2]))
    return float(np.median(e2)), float(np.median(over / step))


def power_spectrum(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean 1-D power spectrum of the rows and columns of ``y (H, W) float``.

    Returns ``(freqs, power)``: frequencies in cycles per pixel on a grid of 64 bins in
    (0, 0.5] and the Hann-windowed power (``|FFT|^2`` over the window's energy, so white
    noise of variance ``v`` has power ``v``), averaged over rows and columns.
    """
    spectra = []
    grid = np.linspace(0.5 / 64, 0.5, 64)
    for a in (y, y.T):
        n = a.shape[1]
        w = np.hanning(n).astype(np.float32)
        rows = a - a.mean(axis=1, keepdims=True)
        f = np.abs(np.fft.rfft(rows * w, axis=1)) ** 2 / float((w * w).sum())
        p = f.mean(axis=0)
        spectra.append(np.interp(grid, np.fft.rfftfreq(n), p))
    return grid, 0.5 * (spectra[0] + spectra[1])


def _band(freqs: np.ndarray, power: np.ndarray, lo: float, hi: float) -> float:
    sel = (freqs >= lo) & (freqs <= hi)
    return float(np.median(power[sel]))


def _upscale_rows(n_in: int, f: int, method: str, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``start:start+count`` of MATLAB's ``imresize`` x``f`` matrix along an axis of
    ``n_in`` pixels, restricted to the input columns they use: ``(count, m)`` and ``(m,)``."""
    from edsr_jax.degradation.imresize import contributions

    w, idx = contributions(n_in, n_in * f, float(f), True, method)
    w, idx = w[start:start + count], idx[start:start + count]
    cols = np.unique(idx)
    m = np.zeros((count, len(cols)))
    np.add.at(m, (np.repeat(np.arange(count), w.shape[1]), np.searchsorted(cols, idx).ravel()), w.ravel())
    return m, cols


UPSCALE_WINDOW = 96
UPSCALE_RESIDUAL = 0.6  # RMS grey levels: an exact x f interpolation leaves only rounding


def smooth_upscale(y: np.ndarray) -> tuple[int, str, float]:
    """Whether luma ``y (H, W) float`` is a bicubic or bilinear (MATLAB ``imresize``) upscale.

    In the most textured of nine ``UPSCALE_WINDOW``-pixel windows, the image is fitted
    (least squares) as the x ``f`` interpolation of some smaller image; an upscale leaves
    a residual of uint8 rounding only. Returns ``(f, method, residual)`` for the best fit
    under ``UPSCALE_RESIDUAL`` (larger factors first), else ``(1, "", residual)``.
    """
    h, w = y.shape
    win = UPSCALE_WINDOW
    if min(h, w) < win + 24:
        return 1, "", float("nan")
    best = (1, "", float("inf"))
    for f in (4, 3, 2):
        if h % f or w % f:
            continue
        starts = [(r, c) for r in np.linspace(0, h - win, 3).astype(int) // f * f
                  for c in np.linspace(0, w - win, 3).astype(int) // f * f]
        def texture(rc):  # textured, and few pixels near 0 or 255
            b = y[rc[0]:rc[0] + win, rc[1]:rc[1] + win]
            return float(b.std()) * (1.0 - 5.0 * float(np.mean((b < 2) | (b > 253))))

        r0, c0 = max(starts, key=texture)
        block = y[r0:r0 + win, c0:c0 + win].astype(np.float64)
        inside = (block > 1) & (block < 254)
        if block.std() < 4.0 or inside.mean() < 0.5:
            continue
        for method in ("bicubic", "bilinear"):
            rm, _ = _upscale_rows(h // f, f, method, r0, win)
            cm, _ = _upscale_rows(w // f, f, method, c0, win)
            z = np.linalg.lstsq(rm, block, rcond=None)[0]
            z = np.linalg.lstsq(cm, z.T, rcond=None)[0].T
            # pixels an overshooting upscale clipped at 0 or 255 are not counted
            res = float(np.sqrt(np.mean((block - rm @ z @ cm.T)[inside] ** 2)))
            if res < best[2]:
                best = (f, method, res)
        if best[2] < UPSCALE_RESIDUAL:
            return best
    return (1, "", best[2])


def upscaled_by(rgb: np.ndarray, y: np.ndarray | None = None) -> tuple[int, str, float]:
    """Whether ``rgb (H, W, 3) uint8`` (luma ``y``, computed when not given) is an image
    upscaled by an integer factor.

    Returns ``(factor, how, evidence)``: ``(f, "nearest", ratio)`` when pixels repeat in
    ``f x f`` blocks (every within-block difference under a third of those across blocks; JPEG
    on top keeps that), ``(f, "smooth", residual)`` when the image is a bicubic or bilinear
    interpolating upscale (``smooth_upscale``; exact files only, a JPEG on top hides it),
    ``(1, "", 0.0)`` otherwise. Factors 4, 3, 2 are tried in that order.
    """
    y = luma(rgb) if y is None else y
    for f in (4, 3, 2):
        ratios = []
        for axis in (0, 1):
            d = np.abs(np.diff(y, axis=axis)).mean(axis=1 - axis)
            n = len(d) // f * f
            if n < 4 * f:
                ratios.append(1.0)
                continue
            per = d[:n].reshape(-1, f).mean(axis=0)
            j = int(np.argmax(per))
            within = np.delete(per, j).max()
            ratios.append(float(within / max(per[j], 1e-6)))
        if max(ratios) < 0.33:
            return f, "nearest", max(ratios)
    f, _, res = smooth_upscale(y)
    return (f, "smooth", res) if f > 1 else (1, "", 0.0)


def features(rgb: np.ndarray, noise: float, jpeg_quality: int | None) -> np.ndarray:
    """The resampling classifier's input for ``rgb (H, W, 3) uint8`` at its real resolution.

    ``(7,) float64``: see ``FEATURE_NAMES``. ``noise`` is ``noise_sigma``'s estimate,
    ``jpeg_quality`` the last JPEG quality (None: no JPEG).
    """
    y = luma(rgb)
    freqs, p = power_spectrum(y)
    floor = (0.668 * noise) ** 2 if np.isfinite(noise) else 0.0
    p = np.maximum(p - floor, 1e-4)
    lo = _band(freqs, p, 0.05, 0.15)
    mid = _band(freqs, p, 0.18, 0.28)
    upper = _band(freqs, p, 0.30, 0.38)
    hi = _band(freqs, p, 0.40, 0.50)
    e, over = edge_stats(y)
    q = 100 if jpeg_quality is None else jpeg_quality

    def ratio(a, b):
        return max(math.log10(a / b), -3.0)

    return np.array([ratio(hi, mid), ratio(upper, mid), ratio(mid, lo), e if np.isfinite(e) else 0.0,
                     over if np.isfinite(over) else 0.0,
                     (100 - q) / 100.0, math.log1p(noise if np.isfinite(noise) else 0.0)])


FEATURE_NAMES = ("log10 P[0.40,0.50]/P[0.18,0.28]", "log10 P[0.30,0.38]/P[0.18,0.28]",
                 "log10 P[0.18,0.28]/P[0.05,0.15]", "edge sigma^2 (px^2, signed)", "edge overshoot",
                 "(100 - JPEG quality)/100", "log(1 + noise sigma)")


# --------------------------------------------------------------------------- resampling model

# Calibrated by ``python experiments/diagnose.py --calibrate`` on Sun80 (never on the
# held-out BSD68 / Set14): feature standardisation, softmax weights over the quadratic
# expansion (1, z, z_i z_j for i <= j) for KINDS, and per kind the median edge_stats e2
# (squared, signed) of images without blur, subtracted before converting to a blur sigma.
KIND_MEAN = np.array([-0.90122, -0.51335, -0.73181, 0.01919, 0.27767, 0.2479, 0.46882])
KIND_STD = np.array([0.49824, 0.30108, 0.2681, 0.41208, 0.47695, 0.26444, 0.73002])
KIND_WEIGHTS = np.array([
    [
        -0.8193, 1.39, 0.2393, -0.0539, -0.016, 0.0254, 0.0245, -0.2024, 0.235,
        -0.0014, -0.0066, -0.1786, -0.0056, 0.1949, 0.1471, -0.0257, 0.3068, 0.3122,
        -0.0158, -0.0548, 0.2484, 0.1147, 0.0774, -0.0978, 0.0903, 0.1039, 0.0312,
        -0.0261, -0.2199, -0.0866, -0.0062, -0.185, -0.1356, 0.2177, 0.0036, -0.013,
    ],
    [
        0.374, -0.7706, -0.175, 0.4479, -0.0566, 0.1359, 0.0444, 0.0574, -0.0614,
        -0.2132, -0.1085, -0.1663, -0.0385, 0.2625, 0.1146, 0.0399, 0.0049, -0.0692,
        -0.1693, -0.1055, -0.2673, -0.0355, -0.0152, 0.2333, -0.1776, 0.0223, 0.0657,
        0.1588, 0.13, 0.1132, -0.0192, 0.2519, 0.146, -0.1703, -0.1798, -0.0134,
    ],
    [
        0.4453, -0.6193, -0.0643, -0.394, 0.0727, -0.1614, -0.069, 0.1451, -0.1737,
        0.2146, 0.1151, 0.3449, 0.044, -0.4574, -0.2617, -0.0142, -0.3117, -0.243,
        0.1852, 0.1603, 0.0189, -0.0792, -0.0623, -0.1355, 0.0873, -0.1261, -0.0969,
        -0.1327, 0.0898, -0.0266, 0.0255, -0.0669, -0.0104, -0.0474, 0.1762, 0.0263,
    ],
])
EDGE_E2_BASE = {"nearest": -0.192, "bicubic": -0.124, "bilinear": -0.016}


def expand(z: np.ndarray) -> np.ndarray:
    """Quadratic expansion ``(N, F) -> (N, 1 + F + F (F + 1) / 2)``: a constant, ``z`` and
    ``z_i z_j`` (i <= j)."""
    z = np.atleast_2d(z)
    i, j = np.triu_indices(z.shape[1])
    return np.concatenate([np.ones((len(z), 1)), z, z[:, i] * z[:, j]], axis=1)


def kind_probabilities(feats: np.ndarray) -> np.ndarray:
    """``(N, 7)`` features (``features``) -> ``(N, 3)`` probabilities of KINDS, rows sum to 1."""
    z = (np.atleast_2d(feats) - KIND_MEAN) / KIND_STD
    logits = expand(np.clip(z, -6, 6)) @ KIND_WEIGHTS.T
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def blur_from_edges(e2: float, kind: str, scale: int) -> float:
    """A ``blur`` sigma in HR pixels (before a ``kind(scale)`` resize) from ``edge_stats``'s
    signed squared LR edge sigma ``e2``: ``scale * sqrt(max(e2 - base(kind), 0))``."""
    if not np.isfinite(e2):
        return 0.0
    return float(scale * math.sqrt(max(e2 - EDGE_E2_BASE[kind], 0.0)))


# --------------------------------------------------------------------------- one image

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


def _r(x: float, nd: int = 2) -> float:
    return float(round(float(x), nd)) if np.isfinite(x) else float("nan")


def diagnose_array(rgb: np.ndarray, *, name: str = "image", fmt: str = "array",
                   quantization: dict | None = None, scale: int | None = None) -> ImageDiagnosis:
    """Diagnose one LR image ``rgb (H, W, 3) uint8`` (H, W >= MIN_SIDE).

    ``quantization``: a JPEG file's tables (``images.file_header``), read exactly; ``scale``:
    the SR factor to propose the spec for (None: the upscaled-back factor when there is one,
    else 2).
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
    s = scale if scale is not None else (f if f in SCALES else 2)
    h, w = work.shape[:2]
    if max(h, w) > MAX_SIDE:  # a central crop holds the statistics; keeps large files fast
        r0, c0 = max(0, (h - MAX_SIDE) // 2), max(0, (w - MAX_SIDE) // 2)
        work = work[r0:r0 + MAX_SIDE, c0:c0 + MAX_SIDE]
    nz = noise_sigma(work)
    feats = features(work, nz, jq)
    probs = kind_probabilities(feats)[0]
    k = int(np.argmax(probs))
    kind = KINDS[k]
    e2 = float(feats[3])
    blur = blur_from_edges(e2, kind, s)
    # 0.25 LR px^2 is about the spread of e2 between sharp images: confidence grows with the
    # distance of e2 from the threshold in those units.
    thr = EDGE_E2_BASE[kind] + (BLUR_MIN / s) ** 2
    bconf = min(0.95, 0.5 + 0.45 * abs(e2 - thr) / 0.25) if np.isfinite(e2) else 0.0
    # JPEG quantises away the high frequencies the noise estimate reads: noise added before
    # a JPEG step is not measured (experiments/diagnose.py), only what lies on top of it.
    nconf = 0.9 if jq is None else 0.2
    spec = _spec(kind, s, blur if blur >= BLUR_MIN else None, nz if nz >= NOISE_MIN else None, jq)
    return ImageDiagnosis(
        name=name, width=int(rgb.shape[1]), height=int(rgb.shape[0]), format=fmt, scale=s,
        jpeg_quality=jq, jpeg_source=jsrc, jpeg_confidence=_r(jconf),
        upscaled_by=f, upscaled_how=how, kind=kind,
        kind_probabilities={kk: _r(p, 3) for kk, p in zip(KINDS, probs)},
        edge_e2=_r(e2, 3), blur=_r(blur), blur_confidence=_r(bconf), noise=_r(nz),
        noise_confidence=nconf, spec=spec, features=[_r(v, 4) for v in feats],
        seconds=time.process_time() - t0)


def _spec(kind: str, scale: int, blur, noise, jpeg) -> str:
    """Spec text from parts; ``blur``/``noise``/``jpeg`` are None, one value or ``(lo, hi)``."""
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
    parts.append(f"{kind}({scale})")
    if noise is not None:
        parts.append(f"noise({arg(noise, 1)})")
    if jpeg is not None:
        parts.append(f"jpeg({arg(jpeg, 0)})")
    spec = " > ".join(parts)
    degrade.parse(spec)  # the spec we print always parses
    return spec


class Skipped(Exception):
    """An image the diagnosis cannot use; the message names the file and why."""


def diagnose_file(path: str | Path, scale: int | None = None) -> ImageDiagnosis:
    """Diagnose one image file. Raises ``Skipped`` naming the file when it is unreadable,
    smaller than ``MIN_SIDE`` pixels a side, grayscale or 16-bit (its history cannot be
    read from 8-bit colour statistics)."""
    path = Path(path)
    try:
        head = images.file_header(path)
        notes: list[str] = []
        rgb = images.read_rgb(path, notes)
    except images.ImageError as e:
        raise Skipped(str(e)) from None
    if head["bits"] == 16:
        raise Skipped(f"{path}: 16-bit image (mode {head['mode']}): diagnose 8-bit images")
    if head["mode"] in ("L", "LA", "1", "I", "F") or head["mode"].startswith("I;16"):
        raise Skipped(f"{path}: grayscale image (mode {head['mode']}): diagnose colour images")
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise Skipped(f"{path}: {w}x{h} is too small to diagnose (under {MIN_SIDE} pixels a side)")
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        raise Skipped(f"{path}: grayscale image (R = G = B): diagnose colour images")
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
    """The proposal for a folder: ``spec`` (parses with ``degrade.parse``), its ``parts``,
    ``mixed`` warnings (empty when one spec fits), the per-image diagnoses and skips."""

    spec: str
    scale: int
    parts: list[Part]
    mixed: list[str]
    images: list[ImageDiagnosis]
    skipped: list[str]


def _round_range(values: np.ndarray, step: float, lo_pct=10, hi_pct=90) -> tuple[float, float]:
    lo = math.floor(np.percentile(values, lo_pct) / step) * step
    hi = math.ceil(np.percentile(values, hi_pct) / step) * step
    return float(lo), float(max(hi, lo))


def propose(diags: list[ImageDiagnosis], scale: int | None = None,
            skipped: Sequence[str] = ()) -> FolderDiagnosis:
    """Compose one spec for a folder from its per-image diagnoses (at least one)."""
    n = len(diags)
    mixed: list[str] = []
    # scale: given, or the most common upscaled-back factor, or 2
    factors = [d.upscaled_by for d in diags]
    if scale is None:
        common = max(set(factors), key=factors.count)
        scale = common if common in SCALES else 2
    if len(set(factors)) > 1:
        counts = ", ".join(f"{factors.count(f)} x{f}" for f in sorted(set(factors)))
        mixed.append(f"upscaled-back factors differ ({counts}; x1 = not upscaled)")
    # resize kind: the mean probability vector
    probs = np.array([[d.kind_probabilities[k] for k in KINDS] for d in diags])
    mean_p = probs.mean(axis=0)
    kind = KINDS[int(np.argmax(mean_p))]
    votes = {k: sum(d.kind == k for d in diags) for k in KINDS}
    # bicubic and bilinear are close (and often confused): only pixel dropping against
    # filtering counts as a different history
    others = votes["nearest"] if kind != "nearest" else n - votes["nearest"]
    if others / n > 0.2:
        mixed.append("resampling differs: " + ", ".join(f"{v} {k}" for k, v in votes.items() if v))
    parts = [Part("resize", f"{kind}({scale})", _r(mean_p.max()),
                  f"{votes[kind]} of {n} images; mean probability "
                  + ", ".join(f"{k} {p:.2f}" for k, p in zip(KINDS, mean_p)))]
    # blur: re-derived for the folder's kind and scale
    blurs = np.array([blur_from_edges(d.edge_e2, kind, scale) for d in diags])
    has_blur = blurs >= BLUR_MIN
    blur = None
    if has_blur.mean() > 0.5:
        blur = _round_range(blurs[has_blur], 0.1)
        bconf = float(np.mean([d.blur_confidence for d, b in zip(diags, has_blur) if b]))
        parts.insert(0, Part("blur", _spec_part("blur", blur, 1), _r(bconf),
                             f"{int(has_blur.sum())} of {n} images; edge sigma -> HR sigma "
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
                           skipped=list(skipped))


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
        raise Skipped(f"{folder}: none of its {len(paths)} image files could be diagnosed")
    return propose(diags, scale, skipped)


# --------------------------------------------------------------------------- report and CLI

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
    lines.append(f"spec: {fd.spec}")
    for p in fd.parts:
        lines.append(f"  {p.name:<7} {p.text:<22} confidence {p.confidence:.2f}  ({p.why})")
    ups = [d for d in fd.images if d.upscaled_by > 1]
    if ups:
        lines.append(f"note: {len(ups)} of {len(fd.images)} images look upscaled back "
                     f"(x{ups[0].upscaled_by}, {ups[0].upscaled_how}); they were analysed at their "
                     "real resolution: reduce them by that factor before upscaling with a model")
    for m in fd.mixed:
        lines.append(f"warning: mixed histories: {m}; one spec will not fit all (see the table)")
    for s in fd.skipped:
        lines.append(f"skipped: {s}")
    return "\n".join(lines)


def build_parser() -> cli.ArgumentParser:
    """The diagnose CLI's options."""
    p = cli.ArgumentParser(
        prog="python -m edsr_jax.diagnose",
        description="Estimate how a folder of low-resolution images was degraded (JPEG quality, "
                    "resampling, blur, noise) and print the degradation spec to train with.")
    p.add_argument("lr_dir", metavar="LR_DIR", help="folder of the low-resolution images")
    p.add_argument("--scale", type=int, choices=SCALES, default=None,
                   help="SR factor to propose the spec for (default: the factor the images were "
                        "upscaled back by, if any, else 2)")
    p.add_argument("--json", metavar="OUT", default=None,
                   help="also write the per-image diagnoses and the proposal to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--table", action="store_true",
                   help="print the per-image table even when the folder looks uniform")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 done, 1 some files skipped, 2 usage error)."""
    args = build_parser().parse_args(argv)
    paths = images.image_folder(args.lr_dir)
    out = None
    if args.json:
        out = Path(args.json)
        outputs.check_not_input(out, paths, option="--json")
        if out.exists() and not args.overwrite:
            raise cli.UsageError(f"--json {out}: exists (pass --overwrite to replace it)")
        if not out.parent.is_dir():
            raise cli.UsageError(f"--json {out}: folder {out.parent} does not exist")
    t0 = time.perf_counter()
    try:
        fd = diagnose_folder(args.lr_dir, args.scale)
    except Skipped as e:
        raise cli.UsageError(str(e)) from None
    wall = time.perf_counter() - t0
    print(report(fd, args.table))
    cpu = sum(d.seconds for d in fd.images)
    print(f"{len(fd.images)} images diagnosed in {wall:.1f} s ({cpu / max(len(fd.images), 1) * 1000:.0f} ms "
          f"of CPU each for the analysis)", file=sys.stderr)
    if out is not None:
        record = {"spec": fd.spec, "scale": fd.scale, "parts": [asdict(p) for p in fd.parts],
                  "mixed": fd.mixed, "skipped": fd.skipped, "images": [asdict(d) for d in fd.images]}
        outputs.atomic_write(out, json.dumps(record, indent=1, allow_nan=True) + "\n", overwrite=True)
    return 1 if fd.skipped else 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
