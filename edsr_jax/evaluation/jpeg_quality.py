"""The JPEG quality an image was last saved at, from its file's tables or from its pixels.

For a JPEG file, the quality is read exactly from its luminance quantisation table
(``quality_from_tables``: libjpeg's quality scaling of the standard tables inverted; a table
no libjpeg quality makes is matched to the nearest one and said so). For any other file (a
JPEG re-saved as PNG), from the 8 x 8 block DCT of the luma (``jpeg_lattice``): the
coefficients of a decoded JPEG sit on multiples of the quantisation steps, and the libjpeg
quality whose table explains them best (a likelihood ratio against "no lattice") is taken.
Part of the diagnosis of ``edsr_jax.evaluation.diagnosis``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

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
