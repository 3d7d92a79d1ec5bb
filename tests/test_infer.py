"""infer.py: buckets, masked padding, tiles, self-ensemble, compile counts, bfloat16.

Reference: ``infer.apply`` on the unpadded image (itself checked against an independent
PyTorch EDSR in test_export.py). Padding and tiling are exact by construction (masked
convolution inputs), so they are held to 1e-3 on the 0..255 scale: float32 sums in a
different order, nothing more.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edsr_jax.inference import infer
from edsr_jax.nets.edsr import ModelConfig, receptive_radius, upsample_stages

TINY = ModelConfig(scale=2, num_blocks=2, num_features=8)


def init(config, seed=0):
    return config.build().init(jax.random.key(seed), jnp.zeros((1, 8, 8, 3)))["params"]


def image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def reference(params, lr, config):
    return np.asarray(infer.apply(params, lr[None].astype(np.float32), config))[0]


def test_bucket_sizes():
    sizes = range(1, 3000)
    b = [infer.bucket(n) for n in sizes]
    assert all(x >= n for x, n in zip(b, sizes))
    assert all(x <= max(16, 1.25 * n) for x, n in zip(b, sizes))  # at most 25% padding
    assert infer.bucket(64) == 64 and infer.bucket(65) == 80 and infer.bucket(1080) == 1280
    assert len(set(b)) <= 4 * np.log2(3000 / 16) + 2  # 4 sizes per octave: few compiles


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bucketed_equals_plain_apply(scale):
    config = ModelConfig(scale, 2, 8)
    params = init(config)
    lr = image(21, 35)  # padded to 24 x 40: the padding must not leak in
    up = infer.Upscaler(config, params)
    out = up.predict(lr)
    assert out.shape == (21 * scale, 35 * scale, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference(params, lr, config), atol=1e-3)
    u8 = up(lr)
    assert u8.dtype == np.uint8
    np.testing.assert_array_equal(u8, np.clip(np.round(out), 0, 255).astype(np.uint8))


def test_tiled_equals_untiled_on_image_of_many_tiles():
    params = init(TINY, seed=1)
    lr = image(75, 101, seed=1)  # 16-pixel tiles: a 5 x 7 grid with ragged last row/column
    tiled = infer.Upscaler(TINY, params, tile=16)
    whole = infer.Upscaler(TINY, params, tile=512)
    a, b = tiled.predict(lr), whole.predict(lr)
    assert np.abs(a - b).max() < 1e-3
    assert np.abs(a - reference(params, lr, TINY)).max() < 1e-3
    assert tiled.overlap == receptive_radius(TINY) == 1 + 2 * 2 + 1 + len(upsample_stages(2)) + 1


def test_overlap_is_needed():
    """With less context than the receptive radius, tiles would show seams: the check has teeth."""
    params = init(TINY, seed=1)
    lr = image(48, 48, seed=2)
    up = infer.Upscaler(TINY, params, tile=16)
    up.overlap = 2
    assert np.abs(up.predict(lr) - reference(params, lr, TINY)).max() > 0.1


def test_batch_input_and_memory_budget_tiling():
    params = init(TINY)
    lrs = np.stack([image(40, 30, seed=s) for s in range(3)])
    small = infer.Upscaler(TINY, params, memory_budget_mb=0.05)  # forces small tiles
    assert small.tile < 40
    out = small.predict(lrs)
    assert out.shape == (3, 80, 60, 3)
    for i in range(3):
        np.testing.assert_allclose(out[i], reference(params, lrs[i], TINY), atol=1e-3)
    assert infer.tile_for_budget(TINY, 4096) > infer.tile_for_budget(TINY, 64)
    big = ModelConfig(4, 16, 64)
    assert infer.bytes_per_lr_pixel(big) > infer.bytes_per_lr_pixel(ModelConfig(2, 16, 64))


def dihedral(x, k, flip):
    """Independent of infer's helpers: k quarter turns then an optional left-right flip, (H, W, C)."""
    x = np.rot90(x, k, axes=(0, 1))
    return x[:, ::-1] if flip else x


def undihedral(y, k, flip):
    y = y[:, ::-1] if flip else y
    return np.rot90(y, -k, axes=(0, 1))


@pytest.mark.parametrize("tile", [16, 512])
def test_ensemble_is_the_average_of_eight_transforms(tile):
    params = init(TINY, seed=3)
    lr = image(30, 37, seed=3)
    runs = [undihedral(reference(params, np.ascontiguousarray(dihedral(lr, k, f)), TINY), k, f)
            for k in range(4) for f in (False, True)]
    expected = np.mean(runs, axis=0)
    got = infer.Upscaler(TINY, params, ensemble=True, tile=tile).predict(lr)
    assert np.abs(got - expected).max() < 1e-3
    plain = infer.Upscaler(TINY, params).predict(lr)
    assert np.abs(got - plain).max() > 1.0  # random weights are far from equivariant


def symmetric_params(config, seed=0):
    """Weights that make EDSR equivariant under flips and 90-degree turns: every 3x3 kernel
    averaged over the dihedral group, and each upsampler output channel repeated over its
    r*r sub-pixel slots (so pixel shuffle acts as nearest-neighbour upsampling)."""
    params = jax.tree_util.tree_map(np.asarray, init(config, seed))

    def sym(k):
        ks = [np.rot90(k, r, axes=(0, 1)) for r in range(4)]
        ks += [x[:, ::-1] for x in ks]
        return np.mean(ks, axis=0)

    out = {}
    for name, layer in params.items():
        if "kernel" in layer:
            k, b = sym(layer["kernel"]), layer["bias"]
            if name.startswith("upsample_"):
                r = upsample_stages(config.scale)[int(name.split("_")[1])]
                n = k.shape[-1] // (r * r)
                k, b = np.repeat(k[..., :n], r * r, axis=-1), np.repeat(b[:n], r * r)
            out[name] = {"kernel": k, "bias": b}
        else:
            out[name] = {c: {"kernel": sym(v["kernel"]), "bias": v["bias"]} for c, v in layer.items()}
    return out


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_ensemble_equals_plain_for_an_equivariant_model(scale):
    config = ModelConfig(scale, 2, 8)
    params = symmetric_params(config, seed=4)
    lr = image(19, 26, seed=4)
    plain = infer.Upscaler(config, params).predict(lr)
    # the model really is equivariant: a quarter turn commutes with it
    turned = reference(params, np.ascontiguousarray(np.rot90(lr)), config)
    assert np.abs(np.rot90(plain) - turned).max() < 1e-3
    ens = infer.Upscaler(config, params, ensemble=True).predict(lr)
    assert np.abs(ens - plain).max() < 1e-3


def test_twenty_images_of_seven_sizes_compile_once_per_bucket():
    config = ModelConfig(2, 1, 8)
    infer.clear_cache(config)  # whatever ran before in this process, compile afresh
    sizes = [(30, 40), (31, 37), (29, 33), (45, 50), (47, 63), (17, 19), (20, 20)]
    buckets = {(infer.bucket(h), infer.bucket(w)) for h, w in sizes}
    assert len(buckets) < len(sizes)
    up = infer.Upscaler(config, init(config))
    before = infer.compile_count(config)
    for i in range(20):
        h, w = sizes[i % len(sizes)]
        assert up(image(h, w, seed=i)).shape == (2 * h, 2 * w, 3)
    assert infer.compile_count(config) - before == len(buckets)

    # new weights, same architecture (as the trainer's periodic evaluation): no recompile
    again = infer.Upscaler(config, init(config, seed=9))
    out = again(image(30, 40))
    assert infer.compile_count(config) - before == len(buckets)
    assert not np.array_equal(out, up(image(30, 40)))


def test_tiles_share_one_compile():
    config = ModelConfig(3, 1, 8)
    infer.clear_cache(config)
    up = infer.Upscaler(config, init(config), tile=16)
    before = infer.compile_count(config)
    up(image(70, 45))
    up(image(53, 90))
    assert infer.compile_count(config) - before == 1


def test_bfloat16_close_to_float32():
    params = init(TINY, seed=5)
    lr = image(24, 24, seed=5)
    f32 = infer.Upscaler(TINY, params).predict(lr)
    bf16 = infer.Upscaler(TINY, params, dtype="bfloat16").predict(lr)
    err = np.abs(bf16 - f32)
    # bfloat16 keeps 8 significant bits (relative step 2^-8): a few units on 0..255 at most
    assert err.mean() < 1.0 and err.max() < 0.03 * np.abs(f32).max()
    assert err.max() > 0  # it really ran in bfloat16


def test_names_and_bad_input():
    assert infer.model_name(ModelConfig(2, 16, 64, 1.0)) == "edsr_baseline_x2"
    assert infer.model_name(ModelConfig(4, 32, 256, 0.1)) == "edsr_x4"
    assert infer.model_name(ModelConfig(3, 2, 8)) == "edsr_b2_f8_x3"
    up = infer.Upscaler(TINY, {"params": init(TINY)}, name="mine")
    assert up.name == "mine" and up.scale == 2
    with pytest.raises(ValueError, match="shape"):
        up(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        infer.Upscaler(TINY, init(TINY), dtype="float16")
    with pytest.raises(ValueError, match="tile"):
        infer.Upscaler(TINY, init(TINY), tile=4)


def test_batches_are_split_into_groups_that_fit_one_tile():
    params = init(TINY, seed=6)
    lrs = np.stack([image(15, 13, seed=s) for s in range(5)])  # buckets to 16 x 16
    infer.clear_cache(TINY)
    up = infer.Upscaler(TINY, params, tile=8)  # 24 x 24 tile: two 16 x 16 images per call
    before = infer.compile_count(TINY)
    out = up.predict(lrs)  # groups of 2, 2 and 1 (+1 empty)
    assert infer.compile_count(TINY) - before == 1
    for i in range(5):
        np.testing.assert_allclose(out[i], reference(params, lrs[i], TINY), atol=1e-3)


@pytest.mark.parametrize("ensemble", [False, True])
def test_tiles_inside_the_image_skip_the_mask_where_the_platform_gains(monkeypatch, ensemble):
    """GPU and TPU run tiles whose context lies inside the image without the padding mask
    (``xla_options.unmask_full_batches``; off on CPU, forced on here): the same bits as the
    masked pass everywhere (the mask is all ones there), and the unmasked program really runs:
    a 100 x 100 image in 16-pixel tiles has interior tiles, the border ones stay masked."""
    from edsr_jax.nets import xla_options

    params = init(TINY, seed=2)
    lr = image(100, 100, seed=2)
    masked = infer.Upscaler(TINY, params, tile=16, ensemble=ensemble)
    assert masked._full_fn is None  # CPU: one program
    monkeypatch.setattr(xla_options, "unmask_full_batches", lambda platform=None: True)
    split = infer.Upscaler(TINY, params, tile=16, ensemble=ensemble)
    key = next(k for k in infer._JITTED if k[0] == TINY and k[4] is False)  # unmasked
    before = infer._TRACES[key]
    calls = []
    full_fn = split._full_fn
    split._full_fn = lambda *a: calls.append(1) or full_fn(*a)
    np.testing.assert_array_equal(split.predict(lr), masked.predict(lr))
    assert calls and infer._TRACES[key] - before <= 1  # used, one compile for all interior tiles


def test_the_tile_budget_is_chosen_per_platform():
    """1 GiB of activations on CPU; a quarter of a GPU's or TPU's memory (80 GiB: 20 GiB), the
    CPU figure where a device reports no memory; the Upscaler's default follows it."""
    from edsr_jax.nets import xla_options

    assert xla_options.inference_budget_mb("cpu") == 1024
    assert xla_options.inference_budget_mb("gpu", 80 * 2**30) == 20 * 1024
    assert xla_options.inference_budget_mb("tpu", 16 * 2**30) == 4 * 1024
    assert xla_options.inference_budget_mb("gpu", 0) == 1024
    up = infer.Upscaler(TINY, init(TINY))
    assert up.tile == infer.tile_for_budget(TINY, xla_options.inference_budget_mb(), "float32")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_tpu_conv_input_layout_changes_no_value(dtype):
    """Every convolution input constrained to the TPU's layout (``xla_options.conv_input_layout``,
    (H, W, N, C) major to minor) stores the arrays otherwise and computes the same: on CPU the
    masked pass (an image in a frame of large values, a batch of 2 with other bounds; x2 with
    the tail on the LR grid as the TPU runs it, x3) and the unmasked pass equal today's bit for
    bit, and the masked one equals ``apply`` on the image (float32) inside its bounds."""
    from edsr_jax.nets import xla_options

    layout = xla_options.conv_input_layout("tpu")
    assert layout == (1, 2, 0, 3)
    assert all(xla_options.conv_input_layout(p) is None for p in ("cpu", "gpu", "cuda"))
    for scale, lr_tail in ((2, True), (3, False)):
        config = ModelConfig(scale, 2, 8)
        params = init(config, seed=scale)
        img = image(13, 17, seed=scale).astype(np.float32)
        x = np.full((2, 24, 28, 3), 230.0, np.float32)
        x[0, 5:18, 7:24] = img
        x[1] = np.random.default_rng(scale).uniform(0, 255, (24, 28, 3))
        bounds = np.array([[5, 18, 7, 24], [0, 24, 3, 28]], np.int32)
        run = jax.jit(infer.apply_masked, static_argnums=(3, 4, 5, 6, 7, 8, 9))
        for masked in (True, False):
            args = (params, x, bounds, config, infer.DTYPES[dtype], "xla", None, masked, lr_tail)
            got = np.asarray(run(*args, layout))
            np.testing.assert_array_equal(got, np.asarray(run(*args, None)))
            if masked and dtype == "float32":
                np.testing.assert_allclose(got[0, 5 * scale:18 * scale, 7 * scale:24 * scale],
                                           reference(params, img.astype(np.uint8), config), atol=1e-3)


def test_the_upscaler_takes_the_platforms_conv_input_layout(monkeypatch):
    """``infer.jitted`` compiles with ``xla_options.conv_input_layout`` (None on CPU; forced to
    the TPU's here): its own compile, and a tiled image comes out the same bits, its border
    tiles masked and its interior ones not (``unmask_full_batches`` forced on too)."""
    from edsr_jax.nets import xla_options

    params = init(TINY, seed=5)
    lr = image(50, 50, seed=5)  # 16-px tiles: one interior tile, ragged border ones
    want = infer.Upscaler(TINY, params, tile=16).predict(lr)
    monkeypatch.setattr(xla_options, "conv_input_layout", lambda platform=None: (1, 2, 0, 3))
    monkeypatch.setattr(xla_options, "unmask_full_batches", lambda platform=None: True)
    up = infer.Upscaler(TINY, params, tile=16)
    keys = [k for k in infer._JITTED if k[0] == TINY and k[-1] == (1, 2, 0, 3)]
    assert sorted(k[4] for k in keys) == [False, True]  # the unmasked pass and the masked one
    before = [infer._TRACES[k] for k in keys]
    np.testing.assert_array_equal(up.predict(lr), want)
    assert all(0 < infer._TRACES[k] - b <= 1 for k, b in zip(keys, before))
