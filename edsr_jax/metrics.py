"""PSNR and SSIM with the super-resolution papers' protocol.

Both images are first made uint8 (floats rounded half away from zero and clipped
to [0, 255], as MATLAB's ``uint8()`` does), then compared on the luma channel Y of
MATLAB's ``rgb2ycbcr`` (float64, not rounded; or on RGB), with ``crop_border``
pixels removed at every edge (the papers use ``crop_border = scale``).
SSIM is Wang et al.'s reference ``ssim_index.m``: an 11x11 Gaussian window with
sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255, 'valid' filtering, mean of the map;
for RGB the mean over the three channels.
"""

from __future__ import annotations

import math

import numpy as np

from edsr_jax.color import rgb_to_y

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2, SSIM_L = 0.01, 0.03, 255.0


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
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0 ** 2 / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """``(size,)`` float64 1-D Gaussian summing to 1; its outer product is MATLAB's
    ``fspecial('gaussian', size, sigma)``."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of ``(..., H, W)`` with ``outer(g, g)``."""
    k = g.shape[0]
    img = np.lib.stride_tricks.sliding_window_view(img, k, axis=-2) @ g
    return np.lib.stride_tricks.sliding_window_view(img, k, axis=-1) @ g


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM map of two float64 ``(..., H, W)`` arrays on the 0..255 scale
    (Wang et al.'s formula, 'valid' 11x11 Gaussian filtering): ``(..., H-10, W-10)``."""
    if a.shape[-2] < SSIM_WINDOW or a.shape[-1] < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels "
                         f"after the border crop, got {a.shape[-2]}x{a.shape[-1]}")
    g = gaussian_window()
    c1, c2 = (SSIM_K1 * SSIM_L) ** 2, (SSIM_K2 * SSIM_L) ** 2
    mu1, mu2 = _filter_valid(a, g), _filter_valid(b, g)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = _filter_valid(a * a, g) - mu1_sq
    s2 = _filter_valid(b * b, g) - mu2_sq
    s12 = _filter_valid(a * b, g) - mu12
    return ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))


def ssim(sr: np.ndarray, hr: np.ndarray, crop_border: int = 0, y_channel: bool = True) -> float:
    """Structural similarity of ``sr`` against ``hr`` in [-1, 1] (1 when identical).

    ``sr``, ``hr``: ``(H, W, 3)`` uint8 RGB (floats in [0, 255] are rounded to uint8).
    On Y, or with ``y_channel=False`` the mean of the per-channel SSIMs of RGB.
    """
    a, b = _prepare(sr, hr, crop_border, y_channel, "ssim")
    if not y_channel:  # (H, W, 3) -> (3, H, W): one map per channel
        a, b = np.moveaxis(a, -1, 0), np.moveaxis(b, -1, 0)
    return float(np.mean(ssim_map(a, b)))
