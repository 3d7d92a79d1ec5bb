"""PSNR and SSIM against plain references written here and against scikit-image."""

import math

import numpy as np
import pytest

from conftest import shared_dataset
from edsr_jax.evaluation.metrics import psnr, ssim, to_uint8


def plain_y(img):
    img = img.astype(np.float64)
    return 16.0 + (65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]) / 255.0


def plain_psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255.0 ** 2 / mse)


def plain_ssim(a, b):
    """Wang et al.'s ssim_index.m written with loops: fspecial window, 'valid' filter2."""
    ax = np.arange(11) - 5.0
    win = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * 1.5 ** 2))
    win /= win.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    h, w = a.shape
    vals = []
    for i in range(h - 10):
        for j in range(w - 10):
            pa, pb = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
            mu1, mu2 = (win * pa).sum(), (win * pb).sum()
            s1 = (win * pa * pa).sum() - mu1 ** 2
            s2 = (win * pb * pb).sum() - mu2 ** 2
            s12 = (win * pa * pb).sum() - mu1 * mu2
            vals.append(((2 * mu1 * mu2 + c1) * (2 * s12 + c2))
                        / ((mu1 ** 2 + mu2 ** 2 + c1) * (s1 + s2 + c2)))
    return float(np.mean(vals))


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, size=(27, 31, 3), dtype=np.uint8)
    noise = rng.normal(0, 12, size=hr.shape)
    sr = np.clip(hr + noise, 0, 255).round().astype(np.uint8)
    return sr, hr


@pytest.mark.parametrize("border", [0, 3])
def test_psnr_against_plain_reference(pair, border):
    sr, hr = pair
    crop = (slice(border, -border or None),) * 2
    want_y = plain_psnr(plain_y(sr)[crop], plain_y(hr)[crop])
    want_rgb = plain_psnr(sr[crop], hr[crop])
    # Same float64 arithmetic in a different order: agreement to ~1e-12 dB.
    assert psnr(sr, hr, crop_border=border) == pytest.approx(want_y, abs=1e-9)
    assert psnr(sr, hr, crop_border=border, y_channel=False) == pytest.approx(want_rgb, abs=1e-9)


def test_psnr_known_value_and_identical():
    hr = np.full((8, 8, 3), 100, np.uint8)
    sr = hr.copy()
    assert psnr(sr, hr) == math.inf
    sr[..., :] = 110  # RGB error 10 everywhere -> MSE 100 -> 10*log10(65025/100)
    assert psnr(sr, hr, y_channel=False) == pytest.approx(10 * math.log10(650.25), abs=1e-12)
    # On Y a uniform +10 in every channel moves Y by 10 * 219/255.
    assert psnr(sr, hr) == pytest.approx(10 * math.log10(255 ** 2 / (10 * 219 / 255) ** 2), abs=1e-9)


def test_float_inputs_are_rounded_half_away_from_zero():
    assert to_uint8(np.array([0.5, 1.5, 2.5, 254.5, 255.7, -3.0, 2.4999])).tolist() == [1, 2, 3, 255, 255, 0, 2]
    rng = np.random.default_rng(3)
    hr = rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
    sr_f = hr.astype(np.float32) + rng.uniform(-0.49, 0.49, size=hr.shape).astype(np.float32)
    assert psnr(sr_f, hr) == math.inf  # rounds back to hr exactly
    sr_u = rng.integers(0, 256, size=hr.shape, dtype=np.uint8)
    assert ssim(sr_u.astype(np.float64) + 0.3, hr) == ssim(sr_u, hr)


@pytest.mark.parametrize("border", [0, 2])
def test_ssim_against_plain_reference(pair, border):
    sr, hr = pair
    crop = (slice(border, -border or None),) * 2
    want_y = plain_ssim(plain_y(sr)[crop], plain_y(hr)[crop])
    # Separable vs full 2-D window, different summation order: 1e-12 is ample in float64.
    assert ssim(sr, hr, crop_border=border) == pytest.approx(want_y, abs=1e-12)
    want_rgb = np.mean([plain_ssim(sr[crop][..., c].astype(np.float64), hr[crop][..., c].astype(np.float64))
                        for c in range(3)])
    assert ssim(sr, hr, crop_border=border, y_channel=False) == pytest.approx(want_rgb, abs=1e-12)


def test_ssim_against_skimage(pair):
    metrics = pytest.importorskip("skimage.metrics")
    sr, hr = pair
    for border in (0, 4):
        crop = (slice(border, -border or None),) * 2
        a, b = plain_y(sr)[crop], plain_y(hr)[crop]
        # Our ssim IS skimage's (the protocol wrapper around it): this pins the settings
        # (Gaussian weights, sigma 1.5, population covariance, L = 255) and the Y / RGB inputs.
        want = metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                             use_sample_covariance=False, data_range=255)
        assert ssim(sr, hr, crop_border=border) == pytest.approx(want, abs=1e-9)
        want_rgb = metrics.structural_similarity(
            sr[crop].astype(np.float64), hr[crop].astype(np.float64), gaussian_weights=True,
            sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1)
        assert ssim(sr, hr, crop_border=border, y_channel=False) == pytest.approx(want_rgb, abs=1e-9)


def test_ssim_identical_and_ordering():
    rng = np.random.default_rng(4)
    hr = rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
    assert ssim(hr, hr) == pytest.approx(1.0, abs=1e-12)
    small = np.clip(hr + rng.normal(0, 5, hr.shape), 0, 255).astype(np.uint8)
    big = np.clip(hr + rng.normal(0, 40, hr.shape), 0, 255).astype(np.uint8)
    assert ssim(big, hr) < ssim(small, hr) < 1.0
    assert psnr(big, hr) < psnr(small, hr)


def test_errors_name_the_problem():
    a = np.zeros((12, 12, 3), np.uint8)
    with pytest.raises(ValueError, match="shape"):
        psnr(a, np.zeros((12, 13, 3), np.uint8))
    with pytest.raises(ValueError, match="border"):
        psnr(a, a, crop_border=6)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(a, a, crop_border=1)


# The former NumPy implementation's scores (separable 'valid' Gaussian filtering of our own,
# removed when the kernels moved to scikit-image), Set5 x2 bicubic: PSNR Y, SSIM Y, PSNR RGB,
# SSIM RGB per image.
FORMER_SET5_X2 = {
    "baby.png": (37.07809676820058, 0.9523369964508869, 35.587639187937484, 0.9412811300333205),
    "bird.png": (36.82096022219995, 0.9724899277464302, 34.960383869064884, 0.9632480705362394),
    "butterfly.png": (27.43651806327945, 0.9157919099031951, 26.091703674912544, 0.898504789512973),
    "head.png": (34.88171869917431, 0.8629607435779778, 31.48365444070466, 0.798011614070455),
    "woman.png": (32.149757261363106, 0.9478556051705784, 30.809637836874355, 0.9421191776889403),
}


def test_scikit_image_kernels_equal_the_former_implementation_on_set5():
    """Tolerance 1e-12 (absolute; dB for PSNR): both compute the same float64 formulas, the
    sums in a different order (separable sliding windows against scipy's gaussian_filter),
    so they may differ in the last bits only: 2e-15 was the largest difference measured on
    Set5 and Set14 before switching. A real change (window, sigma, constants, covariance
    normalisation, border, Y matrix) moves these by 1e-4 or more."""
    from edsr_jax.evaluation import evaluator
    from edsr_jax.io.images import read_rgb

    set5 = shared_dataset("Set5")
    for name, former in FORMER_SET5_X2.items():
        hr = evaluator.modcrop(read_rgb(set5 / name), 2)
        sr = evaluator.bicubic_upscale(evaluator.imresize(hr, 0.5), 2)
        now = (psnr(sr, hr, 2), ssim(sr, hr, 2), psnr(sr, hr, 2, y_channel=False),
               ssim(sr, hr, 2, y_channel=False))
        np.testing.assert_allclose(now, former, rtol=0, atol=1e-12, err_msg=name)
