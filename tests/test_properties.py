"""Property tests (hypothesis): imresize, crops, the 8 symmetries and degradations keep
shapes, dtypes, value ranges and LR/HR alignment for any valid size and scale."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from edsr_jax.data import sources as data
from edsr_jax.degradation import degrade
from edsr_jax.degradation.imresize import imresize

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SCALES = st.sampled_from([2, 3, 4])


def image(seed, h, w, c=3):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


@FAST
@given(h=st.integers(1, 40), w=st.integers(1, 40), seed=st.integers(0, 2**16),
       scale=st.sampled_from([1 / 4, 1 / 3, 1 / 2, 2, 3, 4]), channels=st.sampled_from([None, 1, 3]))
def test_imresize_shape_dtype_range(h, w, seed, scale, channels):
    img = image(seed, h, w, channels or 1)
    if channels is None:
        img = img[..., 0]
    out = imresize(img, scale)
    assert out.dtype == np.uint8
    assert out.shape[:2] == (math.ceil(h * scale - 1e-9), math.ceil(w * scale - 1e-9))
    assert out.shape[2:] == img.shape[2:]
    flat = imresize(img.astype(np.float64), scale)
    assert flat.dtype == np.float64 and flat.shape == out.shape
    # (uint8 is rounded after each pass, as MATLAB does, so it is not simply the rounded float
    # result; tests/test_imresize.py checks it exactly against a plain reference.)


@FAST
@given(h=st.integers(1, 30), w=st.integers(1, 30), value=st.integers(0, 255),
       scale=st.sampled_from([1 / 4, 1 / 3, 1 / 2, 2, 3, 4]))
def test_imresize_keeps_a_constant_image(h, w, value, scale):
    img = np.full((h, w, 3), value, np.uint8)
    assert (imresize(img, scale) == value).all()


@given(k=st.integers(0, 7), h=st.integers(1, 9), w=st.integers(1, 9), s=SCALES, seed=st.integers(0, 999))
@settings(max_examples=40, deadline=None)
def test_symmetries_act_alike_on_lr_and_hr(k, h, w, s, seed):
    lr = image(seed, h, w)
    hr = np.repeat(np.repeat(lr, s, axis=0), s, axis=1)  # an exact nearest upscale of lr
    lr_t, hr_t = data.symmetry(lr, k), data.symmetry(hr, k)
    assert hr_t.shape == (lr_t.shape[0] * s, lr_t.shape[1] * s, 3)
    np.testing.assert_array_equal(hr_t, np.repeat(np.repeat(lr_t, s, axis=0), s, axis=1))


def test_the_eight_symmetries_are_distinct_and_a_group():
    x = image(0, 5, 5)
    outs = [data.symmetry(x, k) for k in range(8)]
    assert len({o.tobytes() for o in outs}) == 8
    for k in range(8):  # every symmetry has an inverse among the eight
        assert any(np.array_equal(data.symmetry(outs[k], j), x) for j in range(8))


SPECS = ["bicubic", "nearest", "bilinear", "blur(0.2,1.5) > bicubic", "bicubic > noise(0,8)",
         "bicubic > jpeg(30,90)", "aniso_blur(0.5,1.5,0.5,1.5,0,180) > nearest",
         "blur(0.2,1.5) > bicubic > noise(0,8) > jpeg(30,90)"]


@FAST
@given(spec=st.sampled_from(SPECS), s=SCALES, h=st.integers(1, 12), w=st.integers(1, 12),
       seed=st.integers(0, 2**16))
def test_degradations_shape_dtype_and_determinism(spec, s, h, w, seed):
    pipe = degrade.parse(spec, scale=s)
    hr = image(seed, h * s, w * s)
    lr = pipe(hr, np.random.default_rng(seed))
    assert lr.dtype == np.uint8 and lr.shape == (h, w, 3)
    np.testing.assert_array_equal(lr, pipe(hr, np.random.default_rng(seed)))
    if spec == "bicubic":
        np.testing.assert_array_equal(lr, imresize(hr, 1 / s))
    if spec == "nearest":
        np.testing.assert_array_equal(lr, hr[::s, ::s])


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A smooth 97x83 RGB image on disk (odd sizes on purpose)."""
    folder = tmp_path_factory.mktemp("photo")
    small = image(7, 12, 10)
    Image.fromarray(small).resize((83, 97), Image.BICUBIC).save(folder / "a.png")
    return folder


@pytest.fixture(scope="module")
def sources(photo, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return {s: data.HROnlySource(photo, s, cache_dir=cache, progress=False) for s in (2, 3, 4)}


@FAST
@given(s=SCALES, p=st.integers(4, 20), seed=st.integers(0, 2**32 - 1))
def test_crops_are_aligned_for_any_patch_and_position(sources, s, p, seed):
    src = sources[s]
    lr, hr = src.patch(0, p, np.random.default_rng(seed))
    assert lr.shape == (p, p, 3) and hr.shape == (p * s, p * s, 3)
    assert lr.dtype == hr.dtype == np.uint8
    # The LR crop is the bicubic downscale of the HR crop away from the crop's border,
    # where the whole image's LR also saw pixels outside the crop.
    b = 3
    np.testing.assert_array_equal(imresize(np.ascontiguousarray(hr), 1 / s)[b:-b, b:-b], lr[b:-b, b:-b])
