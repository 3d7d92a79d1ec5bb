"""edsr_jax.evaluation.color against MATLAB's documented rgb2ycbcr matrix and known outputs."""

import numpy as np
import pytest

from edsr_jax.evaluation.color import rgb_to_y, rgb_to_ycbcr, ycbcr_to_rgb


def reference_ycbcr(r, g, b):
    """MATLAB's rgb2ycbcr doc, written out for one pixel with R, G, B in 0..255."""
    r, g, b = r / 255.0, g / 255.0, b / 255.0
    y = 16.0 + 65.481 * r + 128.553 * g + 24.966 * b
    cb = 128.0 - 37.797 * r - 74.203 * g + 112.000 * b
    cr = 128.0 + 112.000 * r - 93.786 * g - 18.214 * b
    return y, cb, cr


def test_matches_documented_matrix_pixel_by_pixel():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    got = rgb_to_ycbcr(img)
    assert got.dtype == np.float64 and got.shape == (7, 5, 3)
    for i in range(7):
        for j in range(5):
            want = reference_ycbcr(*(float(v) for v in img[i, j]))
            np.testing.assert_allclose(got[i, j], want, rtol=0, atol=1e-10)
    np.testing.assert_allclose(rgb_to_y(img), got[..., 0], rtol=0, atol=1e-12)


def test_ranges_and_primaries():
    # Black and white hit the BT.601 limits exactly: Y 16..235, chroma centred on 128.
    np.testing.assert_allclose(rgb_to_ycbcr(np.array([0, 0, 0], np.uint8)), [16, 128, 128], atol=1e-10)
    np.testing.assert_allclose(rgb_to_ycbcr(np.array([255, 255, 255], np.uint8)), [235, 128, 128], atol=1e-10)
    # MATLAB: rgb2ycbcr(uint8([255 0 0])) -> [81 90 240]; ([0 0 255]) -> [41 240 110].
    red = rgb_to_ycbcr(np.array([[[255, 0, 0]]], np.uint8))[0, 0]
    blue = rgb_to_ycbcr(np.array([[[0, 0, 255]]], np.uint8))[0, 0]
    np.testing.assert_array_equal(np.floor(red + 0.5), [81, 90, 240])
    np.testing.assert_array_equal(np.floor(blue + 0.5), [41, 240, 110])
    # The whole RGB cube maps into Y [16, 235], Cb/Cr [16, 240].
    cube = np.stack(np.meshgrid(*[np.array([0, 255])] * 3, indexing="ij"), -1).reshape(-1, 3)
    ycc = rgb_to_ycbcr(cube.astype(np.uint8))
    assert ycc[:, 0].min() >= 16 - 1e-9 and ycc[:, 0].max() <= 235 + 1e-9
    assert ycc[:, 1:].min() >= 16 - 1e-9 and ycc[:, 1:].max() <= 240 + 1e-9


def test_uint8_and_float_inputs_agree():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(rgb_to_ycbcr(img), rgb_to_ycbcr(img.astype(np.float32)))


def test_round_trip():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, size=(16, 9, 3), dtype=np.uint8)
    back = ycbcr_to_rgb(rgb_to_ycbcr(img))
    # Float64 matrix inverse: the round trip is exact to ~1e-12 on the 0..255 scale.
    np.testing.assert_allclose(back, img, rtol=0, atol=1e-9)
    assert back.dtype == np.float64


def test_ycbcr_to_rgb_clips_like_matlab():
    # Y = 235 with extreme chroma lies outside the RGB cube: MATLAB clips to [0, 1].
    rgb = ycbcr_to_rgb(np.array([235.0, 240.0, 240.0]))
    assert rgb.min() >= 0 and rgb.max() == 255.0


def test_rejects_wrong_shape():
    with pytest.raises(ValueError, match="channels"):
        rgb_to_ycbcr(np.zeros((4, 4), np.uint8))
