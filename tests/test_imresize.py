"""edsr_jax.degradation.imresize against a plain float64 transcription of MATLAB's imresize.

The reference below recomputes, for every output position, MATLAB's cubic weights
from the formula (``contributions`` in imresize.m) with a scalar kernel and an explicit
symmetric reflection, and applies the axes in MATLAB's order (smallest scale first).
For uint8 it rounds (half away from zero) and clips after each axis pass, as MATLAB's
``imresizemex`` returns the input's class.
"""

import math

import numpy as np
import pytest

from edsr_jax.degradation.imresize import contributions, cubic, imresize


def ref_cubic(x: float) -> float:
    a = abs(x)
    if a <= 1:
        return 1.5 * a ** 3 - 2.5 * a ** 2 + 1
    if a <= 2:
        return -0.5 * a ** 3 + 2.5 * a ** 2 - 4 * a + 2
    return 0.0


def ref_reflect(j: int, n: int) -> int:
    """1-based index j reflected into 1..n: ... 2 1 | 1 2 ... n | n n-1 ..."""
    while j < 1 or j > n:
        j = 1 - j if j < 1 else 2 * n + 1 - j
    return j


def ref_taps(in_len, out_len, scale, antialias=True):
    """For each output position: list of (0-based source index, weight)."""
    widen = scale < 1 and antialias
    width = 4.0 / scale if widen else 4.0
    rows = []
    for x in range(1, out_len + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        js = [left + p for p in range(math.ceil(width) + 2)]
        ws = [scale * ref_cubic(scale * (u - j)) if widen else ref_cubic(u - j) for j in js]
        total = sum(ws)
        rows.append([(ref_reflect(j, in_len) - 1, w / total) for j, w in zip(js, ws)])
    return rows


def ref_resize_axis(img, axis, out_len, scale, antialias):
    img = np.moveaxis(img.astype(np.float64), axis, 0)
    out = np.zeros((out_len,) + img.shape[1:])
    for x, taps in enumerate(ref_taps(img.shape[0], out_len, scale, antialias)):
        for i, w in taps:
            out[x] += w * img[i]
    return np.moveaxis(out, 0, axis)


def ref_imresize(img, scale=None, output_shape=None, antialias=True):
    h, w = img.shape[:2]
    if scale is not None:
        out_hw = (math.ceil(h * scale - 1e-9), math.ceil(w * scale - 1e-9))
        scales = (scale, scale)
    else:
        out_hw = tuple(output_shape)
        scales = (out_hw[0] / h, out_hw[1] / w)
    order = [0, 1] if scales[0] <= scales[1] else [1, 0]
    out = img.astype(np.float64)
    for axis in order:
        out = ref_resize_axis(out, axis, out_hw[axis], scales[axis], antialias)
        if img.dtype == np.uint8:
            out = np.clip(np.floor(out + 0.5), 0, 255)
    return out.astype(np.uint8) if img.dtype == np.uint8 else out


SCALES = [1 / 4, 1 / 3, 1 / 2, 2, 3, 4]
SHAPES = [(13, 17), (9, 11, 3), (16, 12, 3)]


def make(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return rng.uniform(-20, 280, size=shape)  # float: out-of-range values are kept, not clipped


@pytest.mark.parametrize("scale", SCALES, ids=lambda s: f"x{s:.3g}")
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_uint8_equals_reference_exactly(scale, shape):
    img = make(shape, np.uint8)
    got = imresize(img, scale)
    want = ref_imresize(img, scale)
    assert got.dtype == np.uint8 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("scale", SCALES, ids=lambda s: f"x{s:.3g}")
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_float_equals_reference(scale, shape):
    img = make(shape, np.float64)
    got = imresize(img, scale)
    assert got.dtype == np.float64
    # Both float64, same formula, different summation order: ~1e-13 on values up to 280.
    np.testing.assert_allclose(got, ref_imresize(img, scale), rtol=0, atol=1e-10)


@pytest.mark.parametrize("out_hw", [(7, 23), (20, 5), (13, 9)])
@pytest.mark.parametrize("dtype", [np.uint8, np.float64], ids=["uint8", "float"])
def test_explicit_output_shape(out_hw, dtype):
    img = make((13, 17, 3), dtype, seed=1)
    got = imresize(img, output_shape=out_hw)
    want = ref_imresize(img, output_shape=out_hw)
    assert got.shape == out_hw + (3,)
    if dtype == np.uint8:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


def test_without_antialiasing_matches_reference():
    img = make((16, 12), np.float64, seed=2)
    np.testing.assert_allclose(imresize(img, 1 / 2, antialiasing=False),
                               ref_imresize(img, 1 / 2, antialias=False), rtol=0, atol=1e-10)


def test_output_sizes_are_matlab_ceil():
    img = np.zeros((13, 17), np.uint8)
    assert imresize(img, 1 / 3).shape == (5, 6)
    assert imresize(img, 1 / 4).shape == (4, 5)
    assert imresize(img, 3).shape == (39, 51)
    assert imresize(np.zeros((12, 12)), 1 / 3).shape == (4, 4)  # 12 * (1/3) is not above 4


@pytest.mark.parametrize("scale", SCALES, ids=lambda s: f"x{s:.3g}")
def test_constant_image_stays_constant(scale):
    for value in (0, 77, 255):
        img = np.full((11, 14, 3), value, np.uint8)
        assert (imresize(img, scale) == value).all()
        np.testing.assert_allclose(imresize(img.astype(np.float64), scale), value, rtol=0, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.uint8, np.float64], ids=["uint8", "float"])
def test_x3_upscale_keeps_pixels_at_block_centres(dtype):
    # For x3, output pixel 3i+1 (0-based) sits exactly on input pixel i: weight 1 there.
    img = make((7, 10, 3), dtype, seed=3)
    np.testing.assert_array_equal(imresize(img, 3)[1::3, 1::3], img)


def test_x2_upscale_of_a_ramp_is_the_ramp():
    # Keys' kernel (a = -0.5) reproduces linear functions; away from the borders
    # output position x (1-based) samples the input at u = x/2 + 1/4.
    ramp = np.tile(np.arange(1, 21, dtype=np.float64), (4, 1))
    out = imresize(ramp, output_shape=(4, 40))
    x = np.arange(1, 41)
    np.testing.assert_allclose(out[:, 4:-4], np.tile(x / 2 + 0.25, (4, 1))[:, 4:-4], rtol=0, atol=1e-12)


def test_kernel_and_weights():
    assert cubic(np.array([0.0, 1.0, 2.0, 0.5, 1.5])).tolist() == [1.0, 0.0, 0.0, 0.5625, -0.0625]
    weights, indices = contributions(12, 6, 0.5, True)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert indices.min() >= 0 and indices.max() < 12
    for x, taps in enumerate(ref_taps(12, 6, 0.5)):
        nonzero = [(i, w) for i, w in taps if w != 0]
        assert [i for i, _ in nonzero] == indices[x].tolist()
        np.testing.assert_allclose([w for _, w in nonzero], weights[x], rtol=0, atol=1e-15)


def test_uint8_rounds_half_away_from_zero():
    # Width x2 of [0, 16, 18, 2]: the last output is exactly 0.5 in float (dyadic weights),
    # MATLAB's round gives 1 (NumPy's round-half-even would give 0); the first is -1.5 -> 0.
    row = np.array([[0, 16, 18, 2]])
    exact = imresize(row.astype(np.float64), output_shape=(1, 8))
    assert exact[0, -1] == 0.5 and exact[0, 0] == -1.5
    got = imresize(row.astype(np.uint8), output_shape=(1, 8))
    assert got[0, -1] == 1 and got[0, 0] == 0
    np.testing.assert_array_equal(got, np.clip(np.floor(exact + 0.5), 0, 255))


def test_uint8_is_rounded_between_the_two_passes():
    # MATLAB rounds after the first axis too; rounding only at the end differs on
    # some pixels, so this test tells the two behaviours apart.
    img = make((12, 12, 3), np.uint8, seed=4)
    got = imresize(img, 1 / 3)
    np.testing.assert_array_equal(got, ref_imresize(img, 1 / 3))
    once = np.floor(imresize(img.astype(np.float64), 1 / 3) + 0.5)
    assert (got != once).any()


def test_bad_arguments():
    img = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="exactly one"):
        imresize(img)
    with pytest.raises(ValueError, match="scale"):
        imresize(img, 0)
    with pytest.raises(ValueError, match="shape"):
        imresize(np.zeros((2, 2, 2, 2)), 2)


@pytest.mark.parametrize("scale", [1 / 4, 1 / 3, 1 / 2, 2, 3, 4, 0.7, 1.5])
def test_strided_taps_give_the_bits_of_gathers(scale):
    """Where source indices repeat with a period, ``apply_taps`` reads strided slices of the
    padded image instead of gathering: the same float64 products and sums, the same bits,
    on both axes, for uint8 and float input, whatever the length (reflected edges included)."""
    from edsr_jax.degradation.imresize import apply_taps, output_size, strided_taps

    rng = np.random.default_rng(7)
    strided = []
    for n in [*range(1, 30), 97, 256, 511]:
        out = output_size(n, scale)
        weights, indices = contributions(n, out, float(scale), True)
        plan = strided_taps(indices, n)
        if n > 64:
            strided.append(plan is not None)
        for img in (rng.integers(0, 256, (n, 4, 3), dtype=np.uint8), rng.normal(0, 80, (n, 4, 3))):
            for axis in (0, 1):
                x = np.ascontiguousarray(np.moveaxis(img, 0, axis))
                np.testing.assert_array_equal(apply_taps(x, axis, weights, indices, plan),
                                              apply_taps(x, axis, weights, indices, None))
    if float(scale).is_integer() or (1 / scale).is_integer():
        assert all(strided)  # integer factors always have a period (1 or the factor)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bilinear_upscale_matches_scikit_image_linear_interpolation(scale):
    """MATLAB's 'bilinear' upscaling (the evaluate baseline) samples at the same pixel centres
    as scikit-image's order-1 resize with symmetric edges: on float input (no uint8 rounding
    between passes) the two agree to float64 rounding (1e-9 on the 0..255 scale); on uint8
    input ours rounds after each pass, as MATLAB does, so it stays within 1 level."""
    from skimage.transform import resize

    rng = np.random.default_rng(scale)
    x = rng.random((13, 17, 3)) * 255
    ours = imresize(x, scale, method="bilinear")
    ref = resize(x, (13 * scale, 17 * scale, 3), order=1, mode="symmetric", anti_aliasing=False,
                 preserve_range=True)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)
    u = x.round().astype(np.uint8)
    up = imresize(u, scale, method="bilinear")
    assert up.dtype == np.uint8
    assert np.abs(up.astype(float) - resize(u.astype(float), up.shape, order=1, mode="symmetric",
                                            anti_aliasing=False, preserve_range=True)).max() <= 1.0
    assert not np.array_equal(up, imresize(u, scale))  # not the bicubic kernel
    with pytest.raises(ValueError, match="method"):
        imresize(u, scale, method="lanczos3")
