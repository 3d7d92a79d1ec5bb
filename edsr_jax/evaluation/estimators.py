"""Estimators of how an LR image was made, from its pixels: resampling, upscaling back,
blur and noise (the JPEG step is ``edsr_jax.evaluation.jpeg_quality``).

- **resampling**: pixel dropping (``nearest``: no anti-alias filter, so the spectrum
  keeps its energy up to the Nyquist frequency and edges switch within one pixel) versus
  filtered downscaling (``bicubic``, ``bilinear``: the top of the spectrum attenuated,
  edges spread over two pixels, ``bicubic`` with overshoot). A small logistic model on a
  few spectral and edge features (``features``), calibrated on Sun80 (``experiments/diagnose.py
  --calibrate``), decides (``kind_probabilities``); its probability is the confidence.
- **upscaled back** (``upscaled_by``): blocks of ``f x f`` equal pixels, or an exact bicubic /
  bilinear x ``f`` interpolation of a smaller image, by a least-squares fit.
- **blur**: the effective Gaussian sigma of strong edges (``edge_stats``, re-blur gradient
  ratio), in LR pixels; what the resampling itself explains is removed and the rest converted
  to a ``blur(sigma)`` before the resize, in HR pixels (``blur_from_edges``:
  ``sigma_HR = scale * sqrt(e^2 - e0^2)``).
- **noise** (``noise_sigma``): the Gaussian sigma (0-255) from the smallest eigenvalues of the
  covariance of 5 x 5 x 3 patches (Chen, Zhu & Heng, ICCV 2015), robust to texture.
- **one history or two** (``one_history_test``): whether a folder's images were all made by
  pixel dropping, all by filtering, or by both, from their ``P(nearest)`` and the model's
  measured confusion (``CONFUSION_COUNTS``), by a likelihood-ratio test.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage

from edsr_jax.evaluation.jpeg_quality import luma

KINDS = ("nearest", "bicubic", "bilinear")


def noise_sigma(rgb: np.ndarray, patch: int = 5, max_patches: int = 6000) -> float:
    """Gaussian noise std (0-255 scale, per channel) of ``rgb (H, W, C) uint8`` (C = 3; 1 works
    but reads texture as noise, several units on clean photographs: 5x5 patches of one channel
    leave texture few unused directions).

    Chen, Zhu & Heng (ICCV 2015): the covariance of ``patch x patch x C`` patches has
    eigenvalues ``sigma^2`` in the directions texture does not use; the largest set of the
    smallest eigenvalues whose mean equals their median is taken as the noise. Patches
    touching 0 or 255 (clipped noise) are left out; at most ``max_patches``, evenly
    strided. The uint8 rounding (variance 1/12) is removed.
    """
    x = rgb.astype(np.float32)
    win = np.lib.stride_tricks.sliding_window_view(x, (patch, patch), axis=(0, 1))
    n_y, n_x = win.shape[:2]
    step = max(1, int(math.sqrt(n_y * n_x / max_patches)))
    p = win[::step, ::step].reshape(-1, x.shape[2] * patch * patch)
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


def flat_share(y: np.ndarray, noise: float = 0.0, block: int = 4) -> float:
    """Share in [0, 1] of the ``block`` x ``block`` tiles of luma ``y (H, W) float`` (0-255)
    whose standard deviation is under ``2 + 1.5 noise`` (``noise``: the image's noise sigma,
    NaN read as 0): flat colour, noise allowed. On experiments/auto_choice.py's calibration set
    (LR at x2, six damages) drawn content (posters) reads 0.5 on average, photographs 0.2. NaN
    when ``y`` holds no whole tile."""
    h, w = y.shape[0] // block * block, y.shape[1] // block * block
    if not h or not w:
        return float("nan")
    tiles = y[:h, :w].reshape(h // block, block, w // block, block).std(axis=(1, 3))
    return float((tiles < 2.0 + 1.5 * (noise if np.isfinite(noise) else 0.0)).mean())


def two_level_share(y: np.ndarray, block: int = 8, min_std: float = 6.0, ratio: float = 0.08) -> float:
    """Share in [0, 1] of the busy ``block`` x ``block`` tiles of luma ``y (H, W)`` (0-255;
    busy: standard deviation over ``min_std``) whose values two levels explain: the best split
    of the tile's sorted values into two groups leaves under ``ratio`` of its variance within
    them. Text and shapes on flat colour read high, natural texture low. On
    experiments/auto_choice.py's calibration set (LR at x2, six damages) photographs read 0-0.11
    (90th percentile), posters 0.16-0.38 under bicubic LR, 0.03-0.16 under blur(1.5) > bicubic,
    0.41-0.8 with pixels dropped (10th-90th percentiles). 0 when no tile is busy."""
    h, w = y.shape[0] // block * block, y.shape[1] // block * block
    tiles = (np.asarray(y[:h, :w], np.float64).reshape(h // block, block, w // block, block)
             .transpose(0, 2, 1, 3).reshape(-1, block * block))
    busy = tiles[tiles.std(axis=1) > min_std]
    if not len(busy):
        return 0.0
    v = np.sort(busy, axis=1)
    n = v.shape[1]
    c1, c2 = np.cumsum(v, axis=1), np.cumsum(v * v, axis=1)
    k = np.arange(1, n)
    left = c2[:, :-1] - c1[:, :-1] ** 2 / k                       # within the k lowest values
    right = (c2[:, -1:] - c2[:, :-1]) - (c1[:, -1:] - c1[:, :-1]) ** 2 / (n - k)
    total = c2[:, -1] - c1[:, -1] ** 2 / n
    return float(((left + right).min(axis=1) < ratio * total).mean())


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


# --------------------------------------------------------------------------- one history or two

# How the resampling model's nearest probability falls for images whose true resampling is
# known: counts per bin of ``P(nearest)`` (edges ``CONFUSION_EDGES``) for pixel dropping
# ("nearest") and filtering ("filtered": bicubic or bilinear), without and with a JPEG step
# after the resize. Measured on the unblurred cases of ``experiments/diagnose.py``'s
# validation (BSD68 + Set14, held out of the calibration; results/diagnose/validation.json):
# 95 nearest and 206 filtered images. The middle bin is wide: featureless nearest images land
# there too, so only P(nearest) < 0.15 counts as strong evidence of filtering. A blur before ``nearest`` is an anti-alias filter, so
# ``blur > nearest`` counts as another history, not as a confusion.
CONFUSION_EDGES = (0.0, 0.15, 0.5, 0.8, 1.0)
CONFUSION_COUNTS = {
    (False, "nearest"): (3, 4, 12, 35), (False, "filtered"): (51, 50, 1, 0),
    (True, "nearest"): (0, 7, 8, 26), (True, "filtered"): (37, 55, 11, 1),
}
# The share of a folder's images whose diagnosis is taken as uninformative (equally likely in
# every bin whatever their history): content unlike the validation photographs (featureless
# deep field, microscopy, small tiles) defeats the model more often than there. The bins, this
# share and ``MIXTURE_P`` were chosen together on folders made with one spec and with two
# (BSD68, Set14 and the built-in photographs' 2x2 tiles; nearest, bicubic, bilinear; JPEG
# 30-60, 70-90 or none): every one-spec folder tried reads as one history (smallest p 3e-3,
# the built-in tiles), while half-and-half nearest / bicubic mixtures of the 68 BSD68 images
# give p < 1e-4 with or without JPEG. Mixtures of a few dozen featureless tiles stay
# undetected: their images carry too little evidence either way.
CONFUSION_OUTLIERS = 0.1
MIXTURE_P = 1e-3  # a folder is called mixed below this p-value of the likelihood-ratio test


def history_likelihoods(p_nearest: Sequence[float], jpeg: Sequence[bool]) -> np.ndarray:
    """``(N, 2)`` likelihoods of each image's diagnosis under the histories ("nearest",
    "filtered"): the ``CONFUSION_COUNTS`` row of its JPEG condition (add-one smoothed) at the
    bin of its ``p_nearest`` in [0, 1], mixed with ``CONFUSION_OUTLIERS`` of uniform."""
    edges = np.asarray(CONFUSION_EDGES)
    bins = np.clip(np.searchsorted(edges, np.asarray(p_nearest, float), side="right") - 1,
                   0, len(edges) - 2)
    out = np.empty((len(bins), 2))
    for i, (b, j) in enumerate(zip(bins, jpeg)):
        for k, kind in enumerate(("nearest", "filtered")):
            counts = np.asarray(CONFUSION_COUNTS[(bool(j), kind)], float) + 1.0
            out[i, k] = (1 - CONFUSION_OUTLIERS) * counts[b] / counts.sum() \
                + CONFUSION_OUTLIERS / (len(edges) - 1)
    return out


def one_history_test(p_nearest: Sequence[float], jpeg: Sequence[bool]) -> dict:
    """Whether a folder's images share one resampling history (pixel dropping or filtering) or
    mix both, from each image's ``P(nearest)`` and whether it went through JPEG.

    The likelihood-ratio test of "one history for all" (the better of all-nearest and
    all-filtered, ``history_likelihoods``) against "a share ``pi`` of nearest" (``pi`` fitted
    on a 0.005 grid): ``stat = 2 log(L_mix / L_one)``, ``p = chi2_1.sf(stat) / 2`` (``pi`` on the
    boundary under the null). Returns ``{"history": "nearest" or "filtered" (the better one),
    "posterior": its probability against the other (equal priors), "nearest_share": pi,
    "stat": stat, "p": p, "mixed": p < MIXTURE_P}``."""
    from scipy.stats import chi2

    lik = history_likelihoods(p_nearest, jpeg)
    logs = np.log(lik).sum(axis=0)
    pis = np.linspace(0.0, 1.0, 201)
    mix = np.log(np.outer(lik[:, 0], pis) + np.outer(lik[:, 1], 1 - pis)).sum(axis=0)
    stat = float(max(2.0 * (mix.max() - logs.max()), 0.0))
    p = float(0.5 * chi2.sf(stat, 1)) if stat > 1e-9 else 1.0
    k = int(np.argmax(logs))
    posterior = float(1.0 / (1.0 + math.exp(min(logs[1 - k] - logs[k], 700.0))))
    return {"history": ("nearest", "filtered")[k], "posterior": posterior,
            "nearest_share": float(pis[int(np.argmax(mix))]), "stat": stat, "p": p,
            "mixed": p < MIXTURE_P}
