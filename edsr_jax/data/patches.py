"""Vectorised patch sampling: many crops of an image at once, flips and turns per batch.

The per-patch pipeline (``sources.PatchSampler``) spends most of its time in Python per
record, not on pixels. These functions work on whole arrays instead:

- ``uniform``: random integers as a pure function of ``(seed, counter)`` (a SplitMix64
  hash, vectorised), so the patch at global index ``g`` is decided by ``g`` alone, with no
  generator to create or carry per patch;
- ``gather_crops``: K square crops of one image in one fancy-indexing copy (a view of all its
  windows, ``crop_windows``, indexed by the K top-left corners);
- ``place_symmetric``: gathered crops written into the batch, each under its own one of the
  8 symmetries of the square, in one pass (a row copy, or one strided copy per channel:
  NumPy moves 3-byte pixels through a transposed or reversed view slowly when the channel
  axis is innermost, and fast when the loop runs along a row of one channel). The strided
  copies are most of the cost of a patch (about 0.4 ns a byte against 0.05 for a row copy).

Symmetries are numbered as ``sources.symmetry``: ``k & 4`` flips left-right, then ``k & 3``
quarter turns counter-clockwise; ``k = 6`` is the vertical flip (rows reversed, the cheap
one), ``k = 5`` the transpose.
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.lib.stride_tricks import as_strided

ALL_SYMMETRIES = tuple(range(8))
VERTICAL_FLIP = 6  # flip left-right then a half turn: the rows in reverse order

def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on ``uint64`` arrays (wrapping arithmetic): a bijective mix."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniform(seed: int, counters: np.ndarray, n) -> np.ndarray:
    """Integers uniform in ``[0, n)``, one per counter: a pure function of ``(seed, counter)``.

    ``seed`` in [0, 2**64); ``counters`` int64 ``(...)`` >= 0; ``n`` an int or an int array
    broadcasting with ``counters``, each in [1, 2**32]. Returns int64 of the broadcast shape.
    ``hash = splitmix64(counter ^ splitmix64(seed))``; the high 32 bits times ``n``, shifted
    down 32 (bias below ``n / 2**32``, i.e. < 1e-6 for image sizes).
    """
    h = _splitmix64(np.asarray(counters).astype(np.uint64) ^ _seed_key(int(seed)))
    return (((h >> np.uint64(32)) * np.asarray(n, dtype=np.uint64)) >> np.uint64(32)).astype(np.int64)


@functools.lru_cache(maxsize=64)
def _seed_key(seed: int) -> np.ndarray:
    """``splitmix64(seed)`` as a one-element uint64 array (array arithmetic wraps silently)."""
    return _splitmix64(np.asarray([seed], dtype=np.uint64))


def crop_windows(img: np.ndarray, size: int) -> np.ndarray:
    """Every ``size x size`` window of ``img (H, W, C)`` as a read-only view ``(H-size+1,
    W-size+1, size, size, C)`` (no copy; a memory map stays one). Build it once per image
    and size: ``gather_crops`` then costs one indexing call per block of crops."""
    img = np.asarray(img)
    h, w = img.shape[:2]
    if size > h or size > w:
        raise ValueError(f"crop_windows: a {size}x{size} window does not fit a {w}x{h} image")
    return as_strided(img, (h - size + 1, w - size + 1, size, size, img.shape[2]),
                      img.strides[:2] + img.strides, writeable=False)


def gather_crops(windows: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Crops ``img[y:y+size, x:x+size]`` for every ``(y, x)`` from ``windows = crop_windows(img,
    size)``: ``(K, size, size, C)``, a new contiguous array of ``img``'s dtype. ``ys``, ``xs``
    ``(K,)`` integer top-left corners, ``0 <= y <= H - size``, ``0 <= x <= W - size``
    (IndexError otherwise)."""
    return windows[np.asarray(ys), np.asarray(xs)]


def symmetry_view(a: np.ndarray, k: int, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Symmetry ``k`` of ``a`` over ``axes`` (rows, columns) as a view: ``k & 4`` flips the
    columns, then ``k & 3`` quarter turns counter-clockwise (as ``np.rot90``, in at most one
    swap of axes and two reversals, so that NumPy copies it with a single pass)."""
    r, c = axes
    flip_rows, flip_cols, swap = SYMMETRY_PARTS[k]
    if swap:
        a = np.swapaxes(a, r, c)
    if flip_rows or flip_cols:
        index = [slice(None)] * a.ndim
        if flip_rows:
            index[r] = slice(None, None, -1)
        if flip_cols:
            index[c] = slice(None, None, -1)
        a = a[tuple(index)]
    return a


# k -> (reverse the rows, reverse the columns, after swapping rows and columns or not)
SYMMETRY_PARTS = {0: (False, False, False), 1: (True, False, True), 2: (True, True, False),
                   3: (False, True, True), 4: (False, True, False), 5: (False, False, True),
                   6: (True, False, False), 7: (True, True, True)}


def place_symmetric(out: np.ndarray, rows: np.ndarray, crops: np.ndarray, ks: np.ndarray) -> None:
    """Write ``symmetry(crops[j], ks[j])`` into ``out[rows[j]]`` for every ``j``.

    ``out (N, P, P, C)`` writeable; ``crops (K, P, P, C)`` square patches (e.g. from
    ``gather_crops``, still in cache); ``rows``, ``ks`` ``(K,)`` ints, ``ks`` in [0, 8). One
    pass per patch: identity and vertical flips are row copies, the other six are written one
    channel at a time through the flipped or turned view (NumPy copies 3-byte pixels through
    such a view slowly when the channel axis is the inner loop, at full speed along one
    channel's row)."""
    ks = np.asarray(ks)
    if crops.ndim != 4 or crops.shape[1] != crops.shape[2] or len(ks) != len(crops) or len(rows) != len(crops):
        raise ValueError(f"place_symmetric expects (K, P, P, C) crops with K rows and K symmetries, "
                         f"got {crops.shape}, {np.shape(rows)} and {ks.shape}")
    for j, (r, k) in enumerate(zip(np.asarray(rows).tolist(), ks.tolist())):
        if k == 0:
            out[r] = crops[j]
        elif k == VERTICAL_FLIP:
            out[r] = crops[j, ::-1]
        else:
            view, dst = symmetry_view(crops[j], k), out[r]
            for c in range(crops.shape[3]):
                dst[:, :, c] = view[:, :, c]


__all__ = ["ALL_SYMMETRIES", "SYMMETRY_PARTS", "VERTICAL_FLIP", "crop_windows", "gather_crops", "place_symmetric",
           "symmetry_view", "uniform"]
