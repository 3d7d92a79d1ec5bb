"""Bicubic resize that reproduces MATLAB's ``imresize`` (the SR papers' protocol).

Cubic kernel with a = -0.5; when downscaling the kernel is widened by 1/scale
(antialiasing); edges are handled by symmetric reflection; the output size is
``ceil(in * scale)``. Dimensions are resized in MATLAB's order (smallest scale
first, height before width on ties). Weights and source indices are precomputed
per axis and applied tap by tap (``apply_taps``), so no Python loop runs over pixels.
Where the source indices repeat with a period (integer factors: downscaling by s moves
s inputs per output, upscaling by s one input every s outputs) the taps are strided slices of
the symmetrically padded image instead of gathers: the same float64 products and sums
in the same order, so the same bits, 1.3-2.4x faster (1020x1020 RGB, x2-x4 both ways).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2)))


def triangle(x: np.ndarray) -> np.ndarray:
    """The linear interpolation kernel (MATLAB's ``triangle``, ``imresize(..., 'bilinear')``)."""
    ax = np.abs(x)
    return (1.0 - ax) * (ax <= 1)


# method -> (kernel, kernel width in input pixels at scale 1), as MATLAB's imresize names them
KERNELS = {"bicubic": (cubic, 4.0), "bilinear": (triangle, 2.0)}


@functools.lru_cache(maxsize=256)
def contributions(in_length: int, out_length: int, scale: float,
                  antialiasing: bool = True, method: str = "bicubic") -> tuple[np.ndarray, np.ndarray]:
    """Per-output-pixel weights and 0-based source indices along one axis (``method``: a
    key of ``KERNELS``).

    Returns ``(weights, indices)``, both ``(out_length, taps)``; weights float64
    summing to 1 per row, indices int64 in ``[0, in_length)`` after symmetric
    edge reflection. Cached: the same geometry is computed once per process.
    """
    kernel, kernel_width = KERNELS[method]
    widen = scale < 1 and antialiasing
    if widen:
        kernel_width /= scale
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    taps = int(math.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based
    dist = u[:, None] - indices
    weights = scale * kernel(scale * dist) if widen else kernel(dist)
    weights = weights / weights.sum(axis=1, keepdims=True)
    # Symmetric padding: ... 2 1 | 1 2 ... n | n n-1 ...
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    indices = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_length)]
    keep = np.any(weights != 0, axis=0)
    weights, indices = weights[:, keep], indices[:, keep]
    weights.setflags(write=False)
    indices.setflags(write=False)
    return weights, indices


def output_size(in_length: int, scale: float) -> int:
    """MATLAB's output length ``ceil(in_length * scale)`` (guarded against 1e-12 rounding)."""
    return int(math.ceil(in_length * scale - 1e-9))


class StridedTaps(NamedTuple):
    """Source indices as strided reads: output ``q * period + r`` reads, for tap ``k``, the
    input padded symmetrically by ``pad = (lo, hi)`` at ``q * stride + starts[r, k]``."""

    period: int
    stride: int
    starts: np.ndarray  # (period, taps) int64
    pad: tuple[int, int]


def strided_taps(indices: np.ndarray, in_length: int, max_period: int = 8) -> StridedTaps | None:
    """``indices`` ``(out, taps)`` (into ``[0, in_length)``, edges reflected symmetrically) as
    ``StridedTaps``, or None when they do not repeat with a period of at most ``max_period``
    outputs (then ``apply_taps`` gathers)."""
    indices = np.asarray(indices, np.int64)
    out = indices.shape[0]
    for period in range(1, max_period + 1):
        if 2 * period > out:
            break
        q0 = (out // period - 1) // 2  # two whole periods in the middle, away from the edges
        base = indices[q0 * period:(q0 + 1) * period]
        stride = int(indices[(q0 + 1) * period, 0] - base[0, 0])
        if stride < 1:
            continue
        q = np.arange(out) // period
        raw = base[np.arange(out) % period] + ((q - q0) * stride)[:, None]  # before reflection
        lo, hi = max(0, -int(raw.min())), max(0, int(raw.max()) - (in_length - 1))
        source = np.pad(np.arange(in_length), (lo, hi), mode="symmetric")
        if np.array_equal(source[raw + lo], indices):
            starts = raw[:period] + lo
            starts.setflags(write=False)
            return StridedTaps(period, stride, starts, (lo, hi))
    return None


def apply_taps(x: np.ndarray, axis: int, weights: np.ndarray, indices: np.ndarray,
               strided: StridedTaps | None = None) -> np.ndarray:
    """``out[j] = sum_k x[indices[j, k]] * weights[j, k]`` along ``axis``, taps summed in order.

    ``weights`` and ``indices`` ``(out, taps)``; products and sums in the result type of
    ``x * weights`` (uint8 pixels with float64 weights: float64, exactly). With ``strided``
    (``strided_taps(indices, x.shape[axis])``) the taps are strided slices of the padded
    input instead of gathers: the same products and sums, the same bits, faster.
    """
    out_length, taps = weights.shape
    shape = [1] * x.ndim
    shape[axis] = -1
    if strided is None:
        out = None
        for k in range(taps):
            term = np.take(x, indices[:, k], axis=axis) * weights[:, k].reshape(shape)
            out = term if out is None else out + term
        return out
    period, stride, starts, pad = strided
    pads = [(0, 0)] * x.ndim
    pads[axis] = pad
    xp = np.pad(x, pads, mode="symmetric") if any(pad) else x
    phases = []  # outputs r, r + period, ... each computed contiguously, then interleaved
    for r in range(min(period, out_length)):
        count = len(range(r, out_length, period))
        acc = tmp = None
        for k in range(taps):
            src = [slice(None)] * x.ndim
            start = int(starts[r, k])
            src[axis] = slice(start, start + (count - 1) * stride + 1, stride)
            w = weights[r::period, k]
            # one weight for the whole phase (the usual case): a scalar, the same products
            w = w[0] if np.all(w == w[0]) else w.reshape(shape)
            if acc is None:
                acc = np.multiply(xp[tuple(src)], w)
                tmp = np.empty_like(acc)
            else:
                np.add(acc, np.multiply(xp[tuple(src)], w, out=tmp), out=acc)
        phases.append(acc)
    if len(phases) == 1:
        return phases[0]
    out_shape = list(x.shape)
    out_shape[axis] = out_length
    if out_length % period == 0:
        return np.stack(phases, axis=axis + 1).reshape(out_shape)
    out = np.empty(out_shape, phases[0].dtype)
    for r, acc in enumerate(phases):
        dst = [slice(None)] * x.ndim
        dst[axis] = slice(r, out_length, period)
        out[tuple(dst)] = acc
    return out


@functools.lru_cache(maxsize=256)
def _strided_geometry(in_length: int, out_length: int, scale: float,
                      antialiasing: bool, method: str = "bicubic") -> StridedTaps | None:
    return strided_taps(contributions(in_length, out_length, scale, antialiasing, method)[1], in_length)


def _resize_axis(img: np.ndarray, axis: int, out_length: int, scale: float,
                 antialiasing: bool, method: str = "bicubic") -> np.ndarray:
    key = (img.shape[axis], out_length, float(scale), antialiasing, method)
    weights, indices = contributions(*key)
    return apply_taps(img, axis, weights, indices, _strided_geometry(*key))


def imresize(img: np.ndarray, scale: float | None = None,
             output_shape: tuple[int, int] | None = None,
             antialiasing: bool = True, method: str = "bicubic") -> np.ndarray:
    """Resize ``(H, W)`` or ``(H, W, C)`` like MATLAB's ``imresize(img, scale, method)``,
    ``method`` "bicubic" (default) or "bilinear".

    Give either ``scale`` (e.g. 1/4, 1/3, 1/2, 2, 3, 4; output ``ceil(H*scale)``)
    or ``output_shape=(H_out, W_out)``. uint8 input gives uint8 output, rounded
    half away from zero and clipped to [0, 255] after each axis pass as MATLAB
    does; float input gives float64 output, not clipped. Computation is float64.
    """
    img = np.asarray(img)
    if img.ndim not in (2, 3):
        raise ValueError(f"imresize expects (H, W) or (H, W, C), got shape {img.shape}")
    h, w = img.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"imresize got an empty image of shape {img.shape}")
    if (scale is None) == (output_shape is None):
        raise ValueError("imresize needs exactly one of scale or output_shape")
    if method not in KERNELS:
        raise ValueError(f"imresize method must be one of {', '.join(KERNELS)}, got {method!r}")
    if scale is not None:
        if not scale > 0:
            raise ValueError(f"imresize scale must be > 0, got {scale!r}")
        scales = (float(scale), float(scale))
        out_hw = (output_size(h, scale), output_size(w, scale))
    else:
        out_hw = tuple(int(s) for s in output_shape)
        if len(out_hw) != 2 or min(out_hw) < 1:
            raise ValueError(f"imresize output_shape must be two positive ints, got {output_shape!r}")
        scales = (out_hw[0] / h, out_hw[1] / w)
    is_uint8 = img.dtype == np.uint8
    if img.dtype.kind not in "uif":
        raise TypeError(f"imresize expects an integer or float image, got {img.dtype}")
    out = img if is_uint8 else img.astype(np.float64)  # uint8 * float64 weight: float64, exact
    for axis in sorted((0, 1), key=lambda a: scales[a]):  # stable: height first on ties
        if out_hw[axis] != out.shape[axis] or scales[axis] != 1.0:
            out = _resize_axis(out, axis, out_hw[axis], scales[axis], antialiasing, method)
            if is_uint8:
                # MATLAB's per-axis pass (imresizemex) returns the input's class, so a
                # uint8 image is rounded (half away from 0) and clipped after EACH pass.
                out += 0.5
                np.floor(out, out=out)
                np.clip(out, 0, 255, out=out)
    if is_uint8:
        return out.astype(np.uint8)
    return out
