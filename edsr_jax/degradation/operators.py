"""The host's degradation operators: each maps ``(H, W, 3) uint8`` to ``(H', W', 3) uint8``,
rounding half up and clipping to [0, 255] after its arithmetic (as MATLAB does), so a chain is
exactly the composition of these functions. The spec language that composes them, its
operator table and its parser are ``degrade``; the same operators on the device are
``device``, ``device_resize`` and ``jpeg_device``.
"""

from __future__ import annotations

import functools
import io
import math

import numpy as np
from PIL import Image
from scipy import ndimage

from edsr_jax import SCALES
from edsr_jax.degradation.imresize import apply_taps, imresize, strided_taps

TRUNCATE = 4.0  # Gaussian kernels reach ceil(TRUNCATE * sigma) pixels.



def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Round half up and clip float pixels to ``uint8`` (as MATLAB does)."""
    return np.clip(x + 0.5, 0.0, 255.0).astype(np.uint8)


def _check_image(img: np.ndarray, name: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"{name} expects an (H, W, 3) uint8 image, got {img.shape} {img.dtype}")
    return img


def _check_factor(img: np.ndarray, s: int, name: str) -> None:
    if s not in SCALES:
        raise ValueError(f"{name} factor must be one of {SCALES}, got {s!r}")
    h, w = img.shape[:2]
    if h % s or w % s:
        raise ValueError(f"{name}({s}) needs height and width divisible by {s}, got {h}x{w}")


def bicubic(img: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB bicubic downscale by ``scale`` in (2, 3, 4).

    ``(H, W, 3) uint8 -> (H/scale, W/scale, 3) uint8``: ``imresize(img, 1/scale)``, bit for bit.
    """
    img = _check_image(img, "bicubic")
    _check_factor(img, scale, "bicubic")
    return imresize(img, 1.0 / scale)


def nearest(img: np.ndarray, scale: int) -> np.ndarray:
    """Decimation ``img[::scale, ::scale]`` (top-left pixel of each block).

    ``(H, W, 3) uint8 -> (H/scale, W/scale, 3) uint8``.
    """
    img = _check_image(img, "nearest")
    _check_factor(img, scale, "nearest")
    return np.ascontiguousarray(img[::scale, ::scale])


def _triangle_taps(s: int) -> tuple[np.ndarray, int]:
    """Weights and first-tap offset of MATLAB's antialiased triangle kernel for 1/s.

    Output pixel ``j`` is centred at input ``(j + 0.5) s - 0.5`` (0-based); the taps are
    inputs ``j*s + offset + k``. Weights float64 summing to 1.
    """
    center = 0.5 * s - 0.5  # for j = 0
    first = math.floor(center - s) + 1  # strictly inside the support |d| < s
    pos = np.arange(first, math.ceil(center + s))
    w = np.maximum(0.0, 1.0 - np.abs(pos - center) / s)
    keep = w > 0
    return w[keep] / w[keep].sum(), int(pos[keep][0])


@functools.lru_cache(maxsize=256)
def _triangle_geometry(n: int, s: int):
    """``(weights (n/s, taps) float32, indices (n/s, taps), imresize.StridedTaps)`` of
    ``_triangle_taps(s)`` along an axis of ``n`` pixels, edges reflected symmetrically."""
    w, offset = _triangle_taps(s)
    m = n // s
    raw = np.arange(m)[:, None] * s + offset + np.arange(len(w))[None, :]
    mirror = np.concatenate([np.arange(n), np.arange(n - 1, -1, -1)])
    indices = mirror[np.mod(raw, 2 * n)]
    weights = np.broadcast_to(w.astype(np.float32), (m, len(w)))
    return weights, indices, strided_taps(indices, n)


def bilinear(img: np.ndarray, scale: int) -> np.ndarray:
    """Antialiased bilinear downscale by ``scale`` (MATLAB ``imresize(..., 'bilinear')``).

    ``(H, W, 3) uint8 -> (H/scale, W/scale, 3) uint8``; computed in float32.
    """
    img = _check_image(img, "bilinear")
    _check_factor(img, scale, "bilinear")
    x = img.astype(np.float32)
    x = apply_taps(x, 0, *_triangle_geometry(x.shape[0], scale))
    x = apply_taps(x, 1, *_triangle_geometry(x.shape[1], scale))
    return _to_uint8(x)


def gaussian_kernel1d(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian, ``(2r+1,) float64`` with ``r = ceil(4 sigma)``; ``[1.]`` for sigma 0."""
    if sigma <= 0:
        return np.ones(1)
    r = math.ceil(TRUNCATE * sigma)
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Isotropic Gaussian blur, symmetric edges. ``(H, W, 3) uint8 -> same shape uint8``."""
    img = _check_image(img, "blur")
    if sigma <= 0:
        return img.copy()
    k = gaussian_kernel1d(sigma)
    x = ndimage.correlate1d(img, k, axis=0, output=np.float32, mode="reflect")
    x = ndimage.correlate1d(x, k, axis=1, output=np.float32, mode="reflect")
    return _to_uint8(x)


def aniso_kernel(sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """Normalised 2-D anisotropic Gaussian, ``(2ry+1, 2rx+1) float64`` (rows = y).

    ``theta`` in degrees rotates the ``sigma_x`` axis counter-clockwise on screen
    (rows point down). Weights outside the 4-sigma ellipse are 0 (and skipped by the
    correlation). Sigmas below 0.05 count as 0.05 (a delta for practical purposes).
    """
    sx, sy = max(sigma_x, 0.05), max(sigma_y, 0.05)
    t = math.radians(theta)
    c, s = math.cos(t), -math.sin(t)  # y axis points down: flip the sign of the angle
    rot = np.array([[c, -s], [s, c]])
    cov = rot @ np.diag([sx * sx, sy * sy]) @ rot.T  # in (x, y) coordinates
    rx = max(0, math.ceil(TRUNCATE * math.sqrt(cov[0, 0]) - 1e-9))
    ry = max(0, math.ceil(TRUNCATE * math.sqrt(cov[1, 1]) - 1e-9))
    y, x = np.mgrid[-ry:ry + 1, -rx:rx + 1].astype(np.float64)
    inv = np.linalg.inv(cov)
    q = inv[0, 0] * x * x + 2 * inv[0, 1] * x * y + inv[1, 1] * y * y
    k = np.where(q <= TRUNCATE * TRUNCATE, np.exp(-0.5 * q), 0.0)  # the 4-sigma ellipse
    return k / k.sum()


def aniso_blur(img: np.ndarray, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """Anisotropic Gaussian blur (see ``aniso_kernel``), symmetric edges.

    ``(H, W, 3) uint8 -> same shape uint8``; computed in float32.
    """
    img = _check_image(img, "aniso_blur")
    k = aniso_kernel(sigma_x, sigma_y, theta)
    if k.size == 1:
        return img.copy()
    x = img.astype(np.float32)
    out = np.empty_like(x)
    k32 = k.astype(np.float32)
    for c in range(3):
        ndimage.correlate(x[..., c], k32, output=out[..., c], mode="reflect")
    return _to_uint8(out)


def noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise of std ``sigma`` (0-255 scale), rounded and clipped.

    ``(H, W, 3) uint8 -> same shape uint8``; draws ``H*W*3`` normals from ``rng``.
    """
    img = _check_image(img, "noise")
    n = rng.standard_normal(img.shape, dtype=np.float32)
    return _to_uint8(img + n * np.float32(sigma))


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip through Pillow at ``quality`` in 1..100 (4:2:0), in memory.

    ``(H, W, 3) uint8 -> same shape uint8``; deterministic.
    """
    img = _check_image(img, "jpeg")
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        im.load()
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
