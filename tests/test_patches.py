"""Tests for the vectorised patch operations (edsr_jax.data.patches) against per-patch references."""

from __future__ import annotations

import numpy as np
import pytest

from edsr_jax.data import patches
from edsr_jax.data.sources import symmetry


@pytest.mark.parametrize("shape", [(5, 5, 3), (4, 7, 2)])
def test_symmetry_view_is_symmetry(shape):
    a = np.arange(np.prod(shape)).reshape(shape)
    stack = np.stack([a, a + 1000])
    for k in range(8):
        np.testing.assert_array_equal(patches.symmetry_view(a, k), symmetry(a, k))
        np.testing.assert_array_equal(patches.symmetry_view(stack, k, axes=(1, 2)),
                                      np.stack([symmetry(a, k), symmetry(a + 1000, k)]))
    assert patches.symmetry_view(a, patches.VERTICAL_FLIP).strides[1] > 0  # rows reversed only


def test_gather_crops_equals_slices():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)
    ys, xs = np.array([0, 3, 20, 20]), np.array([0, 31, 5, 31])
    windows = patches.crop_windows(img[:, :40], 9)  # a non-contiguous view is fine
    assert windows.shape == (22, 32, 9, 9, 3) and not windows.flags.writeable
    out = patches.gather_crops(windows, ys, xs)
    assert out.shape == (4, 9, 9, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    for j, (y, x) in enumerate(zip(ys, xs)):
        np.testing.assert_array_equal(out[j], img[y:y + 9, x:x + 9])
    with pytest.raises(IndexError):
        patches.gather_crops(windows, np.array([22]), np.array([0]))  # 22 + 9 > 30
    with pytest.raises(ValueError, match=r"a 31x31 window does not fit a 40x30 image"):
        patches.crop_windows(img[:, :40], 31)


def test_place_symmetric_matches_per_patch():
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 256, (40, 6, 6, 3), dtype=np.uint8)
    ks = np.arange(40) % 8
    rng.shuffle(ks)
    rows = rng.permutation(50)[:40]
    out = np.zeros((50, 6, 6, 3), np.uint8)
    patches.place_symmetric(out, rows, crops, ks)
    for j in range(len(crops)):
        np.testing.assert_array_equal(out[rows[j]], symmetry(crops[j], int(ks[j])))
    untouched = np.setdiff1d(np.arange(50), rows)
    assert not out[untouched].any()
    with pytest.raises(ValueError, match=r"\(K, P, P, C\) crops.*got \(2, 4, 5, 3\)"):
        patches.place_symmetric(out, np.arange(2), np.zeros((2, 4, 5, 3), np.uint8), np.zeros(2, int))
    with pytest.raises(ValueError, match=r"K symmetries, got \(2, 4, 4, 3\), \(2,\) and \(3,\)"):
        patches.place_symmetric(out, np.arange(2), np.zeros((2, 4, 4, 3), np.uint8), np.zeros(3, int))


def test_uniform_is_a_pure_function_in_range_and_even():
    g = np.arange(200_000)
    a = patches.uniform(7, g, 13)
    np.testing.assert_array_equal(a, patches.uniform(7, g, 13))
    np.testing.assert_array_equal(a[5000:5100], patches.uniform(7, g[5000:5100], 13))
    assert not np.array_equal(a, patches.uniform(8, g, 13))
    assert a.dtype == np.int64 and a.min() == 0 and a.max() == 12
    # Each of the 13 values has probability 1/13: counts of 200,000 draws lie within 5 sd
    # (sd = sqrt(n p (1-p)) ~ 119) of n/13 unless the hash is biased.
    counts = np.bincount(a, minlength=13)
    sd = np.sqrt(len(g) / 13 * (12 / 13))
    assert np.all(np.abs(counts - len(g) / 13) < 5 * sd), counts
    # Neighbouring counters are independent: the pairs (a[2i], a[2i+1]) cover all 169 cells evenly.
    pairs = np.bincount(a[0::2] * 13 + a[1::2], minlength=169)
    sd2 = np.sqrt(len(g) / 2 / 169)
    assert np.all(np.abs(pairs - len(g) / 2 / 169) < 5 * sd2)
    # A bound per element: n may vary along the counters.
    n = np.array([1, 2, 3, 2**32])
    b = patches.uniform(3, np.arange(4), n)
    assert np.all((0 <= b) & (b < n)) and b[0] == 0


def test_device_symmetries_match_the_host():
    """device_symmetry.apply_symmetries (JAX) equals sources.symmetry patch by patch, exactly
    (a permutation of pixels), for every k, on uint8 and float32 patches."""
    from edsr_jax.data import device_symmetry

    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (24, 5, 5, 3), dtype=np.uint8)
    ks = np.arange(24) % 8
    for arr in (x, x.astype(np.float32)):
        got = np.asarray(device_symmetry.apply_symmetries(arr, ks))
        assert got.dtype == arr.dtype
        for j in range(len(x)):
            np.testing.assert_array_equal(got[j], symmetry(arr[j], int(ks[j])))
    with pytest.raises(ValueError, match=r"square patches, got \(2, 4, 5, 3\)"):
        device_symmetry.apply_symmetries(np.zeros((2, 4, 5, 3), np.uint8), np.zeros(2, int))
