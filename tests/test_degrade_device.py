"""Degradations on the device (edsr_jax.degradation.device, device_resize) against the host
operators of edsr_jax.degradation.degrade."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import data as skdata

from edsr_jax.degradation import degrade, device, device_resize
from edsr_jax.degradation.degrade import SpecError

CHAIN = "blur(0.2,1.5) > bicubic(4) > noise(0,8)"


def random_batch(n, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def photos(h, w):
    """Crops of real photographs (skimage.data), ``(5, h, w, 3) uint8``."""
    imgs = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket(),
            np.repeat(skdata.camera()[..., None], 3, axis=2)]
    return np.stack([im[17:17 + h, 29:29 + w] for im in imgs])


def resize(op, x, s):
    """The device resize ``op`` of ``x`` by ``s``, jitted (as degrade_batch runs it)."""
    return np.asarray(jax.jit(device_resize.RESIZES[op], static_argnums=1)(jnp.asarray(x), s))


def host_batch(fn, x, *args):
    return np.stack([fn(im, *args) for im in x])


# ------------------------------------------------------------------ resizes: bit for bit

SIZES = [(7, 13), (1, 3), (2, 5), (11, 4), (32, 32)]  # in LR pixels: odd, non-square, 1 wide


@pytest.mark.parametrize("s", [2, 3, 4])
@pytest.mark.parametrize("op", ["bicubic", "bilinear", "nearest"])
def test_resize_bit_exact_random(op, s):
    """Exact equality, no tolerance: the integer formulation reproduces the host's float64
    (bicubic) / float32 (bilinear) arithmetic on every input (device_resize's docstring).
    Random uint8 images overshoot and clip the cubic; a 0/255 checkerboard at the extremes."""
    for i, (h, w) in enumerate(SIZES):
        x = random_batch(3, h * s, w * s, seed=i)
        x[0] = np.where((np.indices((h * s, w * s)).sum(0) % 2)[..., None] == 1, 255, 0)
        out = resize(op, x, s)
        np.testing.assert_array_equal(out, host_batch(getattr(degrade, op), x, s),
                                      err_msg=f"{op}({s}) on {h * s}x{w * s}")


@pytest.mark.parametrize("s", [2, 3, 4])
@pytest.mark.parametrize("op", ["bicubic", "bilinear", "nearest"])
def test_resize_bit_exact_photos(op, s):
    """Exact equality on photographs (smooth regions, where x2/x4 ties are common), 204 x 300."""
    x = photos(204, 300)
    out = resize(op, x, s)
    np.testing.assert_array_equal(out, host_batch(getattr(degrade, op), x, s))


@pytest.mark.parametrize("s", [2, 3, 4])
def test_bicubic_many_images(s):
    """64 random 96 x 96 images (1.8 M first-pass outputs per factor): still no difference.
    At x2 / x4 the data does hit exact ties (M = D/2 mod D, rounded up by both), so the tie
    rule is exercised; at x3 the denominator (81) is odd and ties cannot occur."""
    x = random_batch(64, 96, 96, seed=100 + s)
    out = resize("bicubic", x, s)
    np.testing.assert_array_equal(out, host_batch(degrade.bicubic, x, s))
    plan = device_resize.resize_plan("bicubic", 96, s)
    rows = plan.indices  # first pass (height): M = sum_k a_k x[src(j, k)]
    m = np.einsum("njkwc,k->njwc", x[:, rows].astype(np.int64), np.array(plan.numerators))
    d = plan.denominator
    ties = int(((2 * m) % (2 * d) == d).sum())  # M/D = n + 1/2
    if s == 3:
        assert d == 81 and ties == 0
    else:
        assert d in (256, 4096) and ties > 100, ties


def test_exactness_proof_can_fail():
    """The check behind every plan rejects what it cannot prove: an even, non-dyadic
    denominator (ties whose float rounding is unknown) and an odd one with weights too far
    from the rationals."""
    device_resize._check_exact((1, 2, 1), 4, 0.0, 2.0 ** -53, 1, "ok")
    with pytest.raises(RuntimeError, match="no proof"):
        device_resize._check_exact((1, 4, 1), 6, 0.0, 2.0 ** -53, 1, "even")
    with pytest.raises(RuntimeError, match="no proof"):
        device_resize._check_exact((1, 7, 1), 9, 1e-3, 2.0 ** -53, 1, "far")


# ------------------------------------------------------------------ blurs: one grey level

def assert_within_one(out, ref, what):
    """float32 against the host's float64 / float32 sums: values within float error of a
    .5 boundary may round the other way, so at most 1 level and rarely (<= 1 % of pixels)."""
    diff = np.abs(out.astype(int) - ref.astype(int))
    assert diff.max() <= 1, (what, diff.max())
    assert (diff > 0).mean() <= 0.01, (what, (diff > 0).mean())


def test_blur_matches_host():
    x = np.concatenate([photos(48, 80), random_batch(3, 48, 80)])
    sigma = np.array([0.0, 0.2, 0.37, 0.8, 1.1, 1.5, 2.9, 4.0], np.float32)
    out = np.asarray(device.blur_batch(jnp.asarray(x), jnp.asarray(sigma), 4.0))
    for i, s in enumerate(sigma):
        assert_within_one(out[i], degrade.blur(x[i], float(s)), f"blur({s})")
    assert np.array_equal(out[0], x[0])  # sigma 0: the identity


def test_blur_kernel_wider_than_image():
    """Support 16 on an 8 x 6 image: edges reflect again and again, as scipy's reflect."""
    x = random_batch(2, 8, 6, seed=3)
    sigma = np.array([4.0, 2.5], np.float32)
    out = np.asarray(device.blur_batch(jnp.asarray(x), jnp.asarray(sigma), 4.0))
    for i, s in enumerate(sigma):
        assert_within_one(out[i], degrade.blur(x[i], float(s)), f"blur({s})")


def test_blur_large_support():
    """Sigma 8 on 256 x 264 images: band matrices built by a scatter (past _ONEHOT_LIMIT)."""
    x = photos(256, 264)[:2]
    sigma = np.array([8.0, 5.0], np.float32)
    assert 256 * 65 * 256 > device._ONEHOT_LIMIT
    out = np.asarray(jax.jit(device.blur_batch, static_argnums=2)(*map(jnp.asarray, (x, sigma)),
                                                                  8.0))
    for i, s in enumerate(sigma):
        assert_within_one(out[i], degrade.blur(x[i], float(s)), f"blur({s})")


def test_aniso_blur_matches_host():
    x = np.concatenate([photos(40, 56), random_batch(3, 40, 56)])
    sx = np.array([0.0, 2.0, 1.0, 3.0, 0.7, 2.5, 1.3, 0.3], np.float32)
    sy = np.array([0.0, 0.5, 1.0, 1.2, 2.2, 0.1, 1.3, 0.3], np.float32)
    th = np.array([10.0, 30.0, 0.0, -75.0, 123.0, 200.0, 45.0, -300.0], np.float32)
    out = np.asarray(device.aniso_blur_batch(*map(jnp.asarray, (x, sx, sy, th)), 3.0))
    for i in range(len(x)):
        ref = degrade.aniso_blur(x[i], float(sx[i]), float(sy[i]), float(th[i]))
        assert_within_one(out[i], ref, f"aniso_blur({sx[i]}, {sy[i]}, {th[i]})")
    assert np.array_equal(out[0], x[0])  # sigmas below 0.05: a delta


def test_aniso_blur_small_and_tiny():
    """A support of 2 (25 taps, unrolled) and a support of 8 on a 6 x 5 image (reflected
    more than once)."""
    x = random_batch(3, 24, 20, seed=4)
    sx, sy, th = (np.array(v, np.float32) for v in ([0.5, 0.2, 0.4], [0.3, 0.5, 0.1],
                                                     [20.0, 70.0, 135.0]))
    out = np.asarray(device.aniso_blur_batch(*map(jnp.asarray, (x, sx, sy, th)), 0.5))
    tiny = x[:, :6, :5]
    out_tiny = np.asarray(device.aniso_blur_batch(*map(jnp.asarray, (tiny, sx * 4, sy * 4, th)),
                                                  2.0))
    for i in range(3):
        ref = degrade.aniso_blur(x[i], float(sx[i]), float(sy[i]), float(th[i]))
        assert_within_one(out[i], ref, "small")
        ref = degrade.aniso_blur(tiny[i], float(sx[i] * 4), float(sy[i] * 4), float(th[i]))
        assert_within_one(out_tiny[i], ref, "tiny")


def test_aniso_kernel_equals_host_kernel():
    """The per-sample kernel at the common support is the host's kernel padded with zeros
    (float32 against float64: 1e-6)."""
    sx, sy, th = (jnp.asarray(v, jnp.float32) for v in ([2.0, 1.0, 0.4], [0.5, 1.0, 2.6],
                                                          [30.0, 0.0, 100.0]))
    k = np.asarray(device.aniso_kernels(sx, sy, th, 12))
    for i in range(3):
        ref = degrade.aniso_kernel(float(sx[i]), float(sy[i]), float(th[i]))
        ry, rx = ref.shape[0] // 2, ref.shape[1] // 2
        padded = np.zeros((25, 25))
        padded[12 - ry:13 + ry, 12 - rx:13 + rx] = ref
        np.testing.assert_allclose(k[i], padded, atol=1e-6)


# ------------------------------------------------------------------ noise: same distribution

def test_noise_distribution_matches_host():
    """Mean and std of (lr - hr) over 64 x 64 x 64 x 3 = 786k values (mid grey, no clipping)
    against the host's: within 2 % of sigma (the sampling error of either is ~0.1 %, so a
    wrong scale, a missing rounding offset or a biased draw fails)."""
    hr = np.full((64, 64, 64, 3), 128, np.uint8)
    lr = np.asarray(device.degrade_batch("noise(8)", jnp.asarray(hr), jax.random.key(0)))
    rng = np.random.default_rng(0)
    host = np.stack([degrade.noise(im, 8.0, rng) for im in hr])
    d, h = lr.astype(float) - 128, host.astype(float) - 128
    assert abs(d.mean() - h.mean()) <= 0.02 * 8, (d.mean(), h.mean())
    assert abs(d.std() / h.std() - 1) <= 0.02, (d.std(), h.std())


def test_noise_sigma_per_sample():
    """noise(0,8): each image's std is its own drawn sigma (with the rounding's 1/12)."""
    hr = np.full((16, 64, 64, 3), 128, np.uint8)
    key = jax.random.key(5)
    lr = np.asarray(device.degrade_batch("noise(0,8)", jnp.asarray(hr), key))
    pipe = device.validate_spec("noise(0,8)")
    sigma = np.asarray(device.chain_params(pipe, jax.random.split(key, 16))[0]["sigma"])
    std = (lr.astype(float) - 128).reshape(16, -1).std(axis=1)
    np.testing.assert_allclose(std, np.sqrt(sigma.astype(float) ** 2 + 1 / 12), rtol=0.03)


# ------------------------------------------------------------------ parameters and keys

def test_params_in_range_and_per_sample():
    pipe = device.validate_spec("blur(0.2,1.5) > bicubic(4) > noise(0,8) > jpeg(30,90) > "
                                "aniso_blur(1,1,0.5,2,0,180)")
    params = device.chain_params(pipe, jax.random.split(jax.random.key(1), 16))
    for name, st, p, (lo, hi) in [("sigma", 0, params[0], (0.2, 1.5)),
                                  ("sigma", 2, params[2], (0, 8)),
                                  ("quality", 3, params[3], (30, 90)),
                                  ("sigma_y", 4, params[4], (0.5, 2)),
                                  ("theta", 4, params[4], (0, 180))]:
        v = np.asarray(p[name])
        assert v.shape == (16,) and lo <= v.min() and v.max() <= hi, (name, v)
        assert len(np.unique(v)) >= 8, (name, v)  # drawn per sample
    assert params[3]["quality"].dtype == jnp.int32
    assert np.all(np.asarray(params[4]["sigma_x"]) == 1.0)  # a fixed value stays fixed


def test_keys_single_batch_and_reproducible():
    hr = jnp.asarray(photos(48, 48)[:4])
    key = jax.random.key(7)
    a = np.asarray(device.degrade_batch(CHAIN, hr, key))
    np.testing.assert_array_equal(a, device.degrade_batch(CHAIN, hr, key))  # same key
    np.testing.assert_array_equal(a, device.degrade_batch(CHAIN, hr, jax.random.split(key, 4)))
    assert not np.array_equal(a, device.degrade_batch(CHAIN, hr, jax.random.key(8)))
    raw = jax.random.PRNGKey(7)  # raw uint32 keys work the same way
    np.testing.assert_array_equal(a, device.degrade_batch(CHAIN, hr, raw))
    np.testing.assert_array_equal(a, device.degrade_batch(CHAIN, hr, jax.random.split(raw, 4)))


def test_sample_depends_only_on_its_key():
    """Half a batch with its keys gives the same images as the whole batch: results do not
    depend on how patches are grouped into batches or spread over devices."""
    hr = jnp.asarray(np.concatenate([photos(48, 48), random_batch(3, 48, 48)]))
    keys = jax.random.split(jax.random.key(9), 8)
    whole = np.asarray(device.degrade_batch(CHAIN, hr, keys))
    np.testing.assert_array_equal(whole[2:6], device.degrade_batch(CHAIN, hr[2:6], keys[2:6]))


def test_chain_jitted_in_a_step_batch_16():
    """The chain inside a user's jitted function at batch 16: no host callbacks, one
    compilation for every key, parameters drawn in the program; its deterministic part
    (blur, bicubic) equals the host's with the same drawn sigmas."""
    hr = jnp.asarray(np.concatenate([photos(96, 96)] * 3 + [random_batch(1, 96, 96)]))

    @jax.jit
    def step(hr, key):
        lr = device.degrade_batch(CHAIN, hr, key)
        return lr, jnp.mean(lr.astype(jnp.float32))

    assert "callback" not in str(jax.make_jaxpr(step)(hr, jax.random.key(0)))
    lr, _ = step(hr, jax.random.key(0))
    assert lr.shape == (16, 24, 24, 3) and lr.dtype == jnp.uint8
    for i in range(1, 4):
        step(hr, jax.random.key(i))
    assert step._cache_size() == 1
    keys = jax.random.split(jax.random.key(0), 16)
    sigma = np.asarray(device.chain_params(device.validate_spec(CHAIN), keys)[0]["sigma"])
    clean = np.asarray(device.degrade_batch("blur(0.2,1.5) > bicubic(4)", hr, keys))
    host = np.stack([degrade.bicubic(degrade.blur(im, float(s)), 4)
                     for im, s in zip(np.asarray(hr), sigma)])
    # a one-level blur difference moves a bicubic output by at most sum|w| < 1.1 per pass
    assert np.abs(clean.astype(int) - host).max() <= 2
    assert (clean != host).mean() <= 0.01


def test_jpeg_composition():
    """'nearest > jpeg(30,60)' equals the host's nearest + Pillow's JPEG at the qualities the
    device drew (jpeg_device reproduces libjpeg's integer path exactly)."""
    hr = photos(96, 128)
    key = jax.random.key(11)
    out = np.asarray(device.degrade_batch("nearest > jpeg(30,60)", jnp.asarray(hr), key, scale=2))
    pipe = device.validate_spec("nearest > jpeg(30,60)", 2)
    q = np.asarray(device.chain_params(pipe, jax.random.split(key, 5))[1]["quality"])
    assert len(set(q.tolist())) > 1
    host = np.stack([degrade.jpeg(degrade.nearest(im, 2), int(qi)) for im, qi in zip(hr, q)])
    np.testing.assert_array_equal(out, host)


# ------------------------------------------------------------------ errors

def test_spec_errors_as_host():
    for spec in ["blurr(1)", "bicubic(5)", "blur(2,1)", "", "nearest > jpeg(30,60)"]:
        with pytest.raises(SpecError) as host:
            degrade.parse(spec)
        with pytest.raises(SpecError) as dev:
            device.degrade_batch(spec, jnp.zeros((1, 8, 8, 3), jnp.uint8), jax.random.key(0))
        assert str(dev.value) == str(host.value)


def test_unsupported_operator_named(monkeypatch):
    monkeypatch.setattr(device, "RUNNERS", {k: v for k, v in device.RUNNERS.items()
                                            if k != "aniso_blur"})
    device.validate_spec.cache_clear()
    with pytest.raises(SpecError, match=r"^aniso_blur: the device path") as e:
        device.validate_spec("aniso_blur(1,2,30) > bicubic(2)")
    assert "\n" not in str(e.value)
    monkeypatch.setattr(device, "_JPEG_MODULE", "edsr_jax.degradation.no_such_module")
    device.validate_spec.cache_clear()
    with pytest.raises(SpecError, match=r"^jpeg: the device path needs") as e:
        device.validate_spec("bicubic(2) > jpeg(50)")
    assert "\n" not in str(e.value)
    device.validate_spec.cache_clear()


def test_bad_batches():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="divisible by 4"):
        device.degrade_batch("bicubic(4)", jnp.zeros((2, 10, 12, 3), jnp.uint8), key)
    with pytest.raises(ValueError, match="uint8 batch"):
        device.degrade_batch("bicubic(2)", jnp.zeros((2, 8, 8, 3), jnp.float32), key)
    with pytest.raises(ValueError, match="one key or 2 keys"):
        device.degrade_batch("noise(2)", jnp.zeros((2, 8, 8, 3), jnp.uint8),
                             jax.random.split(key, 3))
