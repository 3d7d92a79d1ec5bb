"""The spec language's resizes on the device, batched: ``bicubic``, ``bilinear``, ``nearest``,
bit for bit the host operators of ``degrade``, in int32 arithmetic (no float64 needed, so TPUs
run them too).

Why integers reproduce the host exactly. For an integer factor ``s`` every output pixel of an
axis pass uses the same weights (only the source indices move), and those weights are exact
rationals ``a_k / D`` (``resize_plan`` finds the integers ``a_k``, ``D`` from the host's own
weights and checks the argument below each time it builds a plan):

- ``bicubic(s)`` (host: float64, rounded half up and clipped after each axis pass, height
  first): ``D`` = 256, 81, 4096 for s = 2, 3, 4. For 2 and 4, ``D`` is a power of two and the
  host's float64 weights equal ``a_k / D`` exactly, so every float64 product and partial sum
  (a multiple of ``1/D`` below 2^10) is exact: the host computes ``floor(M/D + 1/2)`` with
  ``M = sum_k a_k p_k``, ties (``M = D/2 mod D``) going up. For 3, ``D = 81`` is odd, so
  ``M/D`` is never a half-integer: it lies at least ``1/162`` from one, while the host's
  float64 sum differs from ``M/D`` by less than 1e-12 (bound from the weights' distance to
  ``a_k / 81`` and the float64 rounding of 9 products and sums), so rounding it half up gives
  ``floor(M/D + 1/2)`` too. Ties at x3 cannot occur.
- ``bilinear(s)`` (host: float32, both passes, rounded once at the end): the two passes
  combine to ``M / D^2`` with ``D`` = 8, 9, 32. For 2 and 4 the float32 weights are these
  dyadic rationals and every float32 value is a multiple of ``1/D^2`` below 2^9 (at most 18
  bits): exact. For 3, ``D^2 = 81`` is odd and the float32 error (under 3e-4) stays below
  the 1/162 distance to a half-integer.

So the device computes ``floor((2M + D) / (2D))`` in int32 (at most 255 * 1.1 * 4096 < 2^21,
no overflow) and clips, which is the host's result on every input, not just on tested ones.
Edges reflect symmetrically through the host's own source indices (strided slices of the
symmetrically padded batch where they repeat, as ``imresize.strided_taps`` finds; a gather
otherwise, e.g. an axis of one output pixel).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from edsr_jax import SCALES
from edsr_jax.degradation.operators import _triangle_geometry
from edsr_jax.degradation.imresize import contributions, strided_taps

_MAX_DENOMINATOR = 4096  # bicubic x4; every resize's weights are a_k / D with D at most this


@dataclass(frozen=True)
class AxisPlan:
    """One axis pass ``out[j] = sum_k a[k] * x[src(j, k)]`` of an integer-factor resize.

    ``numerators`` ``a_k`` with the weights ``a_k / denominator``; ``indices`` ``(out, taps)``
    the host's source indices (edges reflected); ``strided`` the same as strided slices of
    the padded axis (``imresize.StridedTaps``, period 1) or None (then a gather)."""

    numerators: tuple[int, ...]
    denominator: int
    indices: np.ndarray
    strided: object | None


def _as_rational(weights: np.ndarray, what: str) -> tuple[tuple[int, ...], int, float]:
    """``(a_k, D, max |w_k - a_k/D|)`` for one row of weights shared by every output; D the
    smallest denominator within 1e-6 (the
    proof, ``_check_exact``, uses the actual distance). Raises RuntimeError where the host's weights are not
    such rationals (for factors 2, 3, 4 they are)."""
    if not np.all(weights == weights[0]):
        raise RuntimeError(f"{what}: output pixels have different weights")
    w = np.asarray(weights[0], np.float64)
    for d in range(1, _MAX_DENOMINATOR + 1):
        a = np.round(w * d)
        if np.abs(w * d - a).max() < 1e-6:  # float32 weights are off by ~1e-8
            return tuple(int(v) for v in a), d, float(np.abs(w - a / d).max())
    raise RuntimeError(f"{what}: weights are not rationals with denominator <= {_MAX_DENOMINATOR}")


def _check_exact(a: tuple[int, ...], d: int, err: float, unit: float, passes: int,
                 what: str) -> None:
    """Check that rounding the host's float sum half up equals ``floor(M/D' + 1/2)``,
    ``D' = d ** passes`` (module docstring): a power-of-two ``D'`` with exact weights (every
    host value is exact when ``255 * sum|a| * D'`` has fewer bits than the float's
    significand), or an odd ``D'`` whose half-integer distance ``1/(2D')`` exceeds the bound
    on the host's float error (``unit`` its unit roundoff, 2^-53 or 2^-24). Raises
    RuntimeError otherwise."""
    taps, total = len(a), d ** passes
    l1 = sum(abs(v) for v in a) / d  # sum |w|
    if total & (total - 1) == 0:
        # every value a multiple of 1/total below 255 * l1**passes: exact if that fits
        if err == 0 and 255 * sum(abs(v) for v in a) ** passes < 1 / unit:
            return
    elif total % 2:
        bound = 0.0  # error of a pass's output, pass by pass (recursive summation bound)
        for _ in range(passes):
            magnitude = 255 * l1 ** passes
            bound = bound * l1 + 255 * taps * err + (taps + 1) * unit * 1.01 * magnitude
        bound += 2 * unit * 512  # adding 0.5 to a value below 2^9
        if bound < 0.5 / total:
            return
    raise RuntimeError(f"{what}: no proof that integer arithmetic reproduces the host "
                       f"(denominator {total})")


@functools.lru_cache(maxsize=256)
def resize_plan(method: str, n: int, s: int) -> AxisPlan:
    """The ``AxisPlan`` of ``method`` ("bicubic" or "bilinear") downscaling an axis of ``n``
    pixels (a multiple of ``s``) by ``s`` in 2, 3, 4, checked to reproduce the host exactly
    (``_check_exact``)."""
    if s not in SCALES or n % s or n < s:
        raise ValueError(f"{method}({s}) needs an axis length divisible by {s}, got {n}")
    what = f"{method}({s}) on {n} pixels"
    if method == "bicubic":
        weights, indices = contributions(n, n // s, 1.0 / s)
        a, d, err = _as_rational(weights, what)
        _check_exact(a, d, err, 2.0 ** -53, 1, what)  # float64, rounded after each pass
    elif method == "bilinear":
        weights, indices, _ = _triangle_geometry(n, s)
        a, d, err = _as_rational(weights, what)
        _check_exact(a, d, err, 2.0 ** -24, 2, what)  # float32, rounded after both passes
    else:
        raise ValueError(f"resize method must be bicubic or bilinear, got {method!r}")
    keep = [k for k, v in enumerate(a) if v != 0]  # zero taps add nothing, in int32 either
    indices = np.ascontiguousarray(indices[:, keep])
    strided = strided_taps(indices, n)
    if strided is not None and strided.period != 1:
        strided = None
    return AxisPlan(tuple(a[k] for k in keep), d, indices, strided)


def _axis_sum(x: jax.Array, axis: int, plan: AxisPlan) -> jax.Array:
    """``sum_k a_k * x[src(j, k)]`` along ``axis`` of int32 ``x``: int32, exact."""
    out = plan.indices.shape[0]
    if plan.strided is not None:
        pad = [(0, 0)] * x.ndim
        pad[axis] = plan.strided.pad
        xp = jnp.pad(x, pad, mode="symmetric") if any(plan.strided.pad) else x
        stride = plan.strided.stride
        terms = [jax.lax.slice_in_dim(xp, int(st), int(st) + (out - 1) * stride + 1, stride, axis)
                 for st in plan.strided.starts[0]]
    else:
        terms = [jnp.take(x, jnp.asarray(plan.indices[:, k]), axis=axis)
                 for k in range(len(plan.numerators))]
    acc = None
    for a, t in zip(plan.numerators, terms):
        term = t if a == 1 else t * jnp.int32(a)
        acc = term if acc is None else acc + term
    return acc


def _round_div(m: jax.Array, d: int) -> jax.Array:
    """``floor(m / d + 1/2)`` of int32 ``m`` exactly (round half up)."""
    if d & (d - 1) == 0:
        return jnp.right_shift(m + d // 2, d.bit_length() - 1)  # arithmetic shift: floor
    return jnp.floor_divide(2 * m + d, 2 * d)


def _check_batch(x: jax.Array, s: int, name: str) -> None:
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != jnp.uint8:
        raise ValueError(f"{name} expects an (N, H, W, 3) uint8 batch, got {x.shape} {x.dtype}")
    if s not in SCALES:
        raise ValueError(f"{name} factor must be one of {SCALES}, got {s!r}")
    if x.shape[1] % s or x.shape[2] % s:
        raise ValueError(f"{name}({s}) needs height and width divisible by {s}, "
                         f"got {x.shape[1]}x{x.shape[2]}")


def bicubic_batch(x: jax.Array, s: int) -> jax.Array:
    """MATLAB ``imresize(img, 1/s)`` of every image, equal to ``degrade.bicubic`` bit for bit.

    ``(N, H, W, 3) uint8 -> (N, H/s, W/s, 3) uint8``; rounded half up and clipped after the
    height pass, then after the width pass, as the host."""
    _check_batch(x, s, "bicubic")
    y = x.astype(jnp.int32)
    for axis in (1, 2):  # height first (MATLAB's order on equal scales)
        plan = resize_plan("bicubic", y.shape[axis], s)
        y = jnp.clip(_round_div(_axis_sum(y, axis, plan), plan.denominator), 0, 255)
    return y.astype(jnp.uint8)


def bilinear_batch(x: jax.Array, s: int) -> jax.Array:
    """MATLAB ``imresize(img, 1/s, 'bilinear')`` of every image, equal to ``degrade.bilinear``
    bit for bit. ``(N, H, W, 3) uint8 -> (N, H/s, W/s, 3) uint8``; one rounding at the end."""
    _check_batch(x, s, "bilinear")
    rows = resize_plan("bilinear", x.shape[1], s)
    cols = resize_plan("bilinear", x.shape[2], s)
    m = _axis_sum(_axis_sum(x.astype(jnp.int32), 1, rows), 2, cols)
    return jnp.clip(_round_div(m, rows.denominator * cols.denominator), 0, 255).astype(jnp.uint8)


def nearest_batch(x: jax.Array, s: int) -> jax.Array:
    """``img[::s, ::s]`` of every image, as ``degrade.nearest``.
    ``(N, H, W, 3) uint8 -> (N, H/s, W/s, 3) uint8``."""
    _check_batch(x, s, "nearest")
    return x[:, ::s, ::s]


RESIZES = {"bicubic": bicubic_batch, "bilinear": bilinear_batch, "nearest": nearest_batch}
