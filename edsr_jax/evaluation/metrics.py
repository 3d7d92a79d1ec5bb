"""PSNR and SSIM with the super-resolution papers' protocol.

Both images are first made uint8 (floats rounded half away from zero and clipped
to [0, 255], as MATLAB's ``uint8()`` does), then compared on the luma channel Y of
MATLAB's ``rgb2ycbcr`` (float64, not rounded; or on RGB), with ``crop_border``
pixels removed at every edge (the papers use ``crop_border = scale``).
SSIM is Wang et al.'s reference ``ssim_index.m``: an 11x11 Gaussian window with
sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255, 'valid' filtering, mean of the map;
for RGB the mean over the three channels.

The kernels are scikit-image's (``peak_signal_noise_ratio``; ``structural_similarity`` with
``gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255``, which
filters in reflect mode and averages the map without a 5-pixel margin: exactly the 'valid'
positions of an 11-tap window); this module is the protocol around them: rounding to
uint8, the border crop, Y or RGB. The former NumPy implementation agreed with them to
2e-15 on Set5 and Set14 (``tests/test_metrics.py`` pins its Set5 values).
"""

from __future__ import annotations

import math

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from edsr_jax.evaluation.color import rgb_to_y

SSIM_WINDOW = 11  # sides of the Gaussian window: 2 * round(3.5 sigma) + 1 (scipy's truncate 3.5)
SSIM_SIGMA = 1.5


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Any image -> uint8: floats rounded half away from zero, clipped to [0, 255]."""
    img = np.asarray(img)
    if img.dtype == np.uint8:
        return img
    if img.dtype.kind not in "uif":
        raise TypeError(f"expected a numeric image, got {img.dtype}")
    # Values are clipped to [0, 255] first, so rounding half up = half away from zero.
    return np.floor(np.clip(img.astype(np.float64), 0.0, 255.0) + 0.5).astype(np.uint8)


def _prepare(sr: np.ndarray, hr: np.ndarray, crop_border: int, y_channel: bool,
             what: str) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 (H', W') Y or (H', W', 3) RGB after the border crop."""
    sr, hr = np.asarray(sr), np.asarray(hr)
    if sr.shape != hr.shape:
        raise ValueError(f"{what}: images differ in shape, {sr.shape} vs {hr.shape}")
    if sr.ndim != 3 or sr.shape[-1] != 3:
        raise ValueError(f"{what} expects (H, W, 3) images, got shape {sr.shape}")
    crop_border = int(crop_border)
    if crop_border < 0:
        raise ValueError(f"{what}: crop_border must be >= 0, got {crop_border}")
    h, w = sr.shape[:2]
    if h <= 2 * crop_border or w <= 2 * crop_border:
        raise ValueError(f"{what}: a {h}x{w} image has nothing left after a {crop_border}-pixel border crop")
    out = []
    for img in (sr, hr):
        img = to_uint8(img)
        img = rgb_to_y(img) if y_channel else img.astype(np.float64)
        if crop_border:
            img = img[crop_border:-crop_border, crop_border:-crop_border]
        out.append(img)
    return out[0], out[1]


def psnr(sr: np.ndarray, hr: np.ndarray, crop_border: int = 0, y_channel: bool = True) -> float:
    """Peak signal-to-noise ratio in dB of ``sr`` against ``hr``; ``inf`` when identical.

    ``sr``, ``hr``: ``(H, W, 3)`` uint8 RGB (floats in [0, 255] are rounded to uint8).
    Compared on Y (``y_channel=True``) or on all RGB values, float64, peak 255.
    """
    a, b = _prepare(sr, hr, crop_border, y_channel, "psnr")
    if np.array_equal(a, b):
        return math.inf
    return float(peak_signal_noise_ratio(b, a, data_range=255.0))


def ssim(sr: np.ndarray, hr: np.ndarray, crop_border: int = 0, y_channel: bool = True) -> float:
    """Structural similarity of ``sr`` against ``hr`` in [-1, 1] (1 when identical).

    ``sr``, ``hr``: ``(H, W, 3)`` uint8 RGB (floats in [0, 255] are rounded to uint8).
    On Y, or with ``y_channel=False`` the mean of the per-channel SSIMs of RGB.
    """
    a, b = _prepare(sr, hr, crop_border, y_channel, "ssim")
    if a.shape[0] < SSIM_WINDOW or a.shape[1] < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels "
                         f"after the border crop, got {a.shape[0]}x{a.shape[1]}")
    return float(structural_similarity(a, b, gaussian_weights=True, sigma=SSIM_SIGMA,
                                       use_sample_covariance=False, data_range=255.0,
                                       channel_axis=None if y_channel else -1))
