"""RGB <-> YCbCr as MATLAB's ``rgb2ycbcr`` / ``ycbcr2rgb`` do it (ITU-R BT.601).

Values live on the 0..255 scale: Y in [16, 235], Cb and Cr in [16, 240].
Unlike MATLAB on uint8 input, results are float64 and not rounded, which is
what the SR papers' evaluation scripts use (they convert ``im2double`` images).
The conversions are scikit-image's ``rgb2ycbcr`` / ``ycbcr2rgb`` (the same matrix and
offsets as MATLAB); this module only fixes the scale (RGB on 0..255) and the clipping.
"""

from __future__ import annotations

import numpy as np
from skimage.color import rgb2ycbcr, ycbcr2rgb

def _as_float_rgb(img: np.ndarray, what: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim < 1 or img.shape[-1] != 3:
        raise ValueError(f"{what} expects (..., 3) channels last, got shape {img.shape}")
    if img.dtype.kind not in "uif":
        raise TypeError(f"{what} expects a numeric image, got {img.dtype}")
    return img.astype(np.float64)


def rgb_to_ycbcr(img: np.ndarray) -> np.ndarray:
    """``(..., 3)`` RGB (uint8, or float on the 0..255 scale) -> ``(..., 3)`` float64 YCbCr.

    Y in [16, 235], Cb and Cr in [16, 240] for inputs in [0, 255]; not rounded.
    """
    return rgb2ycbcr(_as_float_rgb(img, "rgb_to_ycbcr") / 255.0)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """``(..., 3)`` RGB (uint8, or float on 0..255) -> ``(...)`` float64 luma Y in [16, 235]."""
    return rgb2ycbcr(_as_float_rgb(img, "rgb_to_y") / 255.0)[..., 0]


def ycbcr_to_rgb(img: np.ndarray) -> np.ndarray:
    """``(..., 3)`` YCbCr on the 0..255 scale -> ``(..., 3)`` float64 RGB in [0, 255].

    The exact inverse of ``rgb_to_ycbcr``; like MATLAB, results are clipped to
    [0, 255] (colours outside the RGB cube) but not rounded.
    """
    return np.clip(ycbcr2rgb(_as_float_rgb(img, "ycbcr_to_rgb")) * 255.0, 0.0, 255.0)
