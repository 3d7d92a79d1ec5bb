"""MDSR: parameter counts of the official models, layout, per-scale routing, and PyTorch interop
against an independent PyTorch MDSR (tests/torch_mdsr.py) with the official key names.

Tolerance of the forward comparison: both sides compute in float32 but sum each convolution's
terms (9 or 25 taps x C_in channels) in different orders, and the rounding differences pass
through every block; 1e-4 of the output's magnitude is ~100 float32 ulps, far below any wiring
mistake (a swapped kernel axis, branch or channel order changes outputs by whole units).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edsr_jax.nets import mdsr
from edsr_jax.nets import onednn_conv
from edsr_jax.inference import torch_convert
from edsr_jax.nets.edsr import count_params
from conftest import torch_or_skip

# The official release's trainable parameters (EDSR-PyTorch; MeanShift is frozen).
PUBLISHED = {"mdsr_baseline": 3_227_203, "mdsr": 7_953_987}
TINY = mdsr.MDSRConfig((2, 3, 4), num_blocks=2, num_features=8)


def abstract_params(config, scale=2, hw=(8, 8)):
    model = config.build()
    x = jax.ShapeDtypeStruct((1, *hw, 3), jnp.float32)
    return jax.eval_shape(functools.partial(model.init, scale=scale), jax.random.key(0), x)["params"]


def init(config, seed=0, scale=2):
    return config.build().init(jax.random.key(seed), jnp.zeros((1, 6, 6, 3)), scale)["params"]


def lr_batch(n=2, h=11, w=13, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, h, w, 3)).astype(np.float32)


def run_jax(params, x, scale, config=TINY, conv_backend="xla"):
    return np.asarray(config.build(conv_backend=conv_backend).apply({"params": params}, x, scale))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_parameter_counts(name):
    # eval_shape traces init without allocating; the count holds all three scales' branches.
    assert count_params(abstract_params(mdsr.preset(name))) == PUBLISHED[name]


def test_param_tree_layout_holds_every_scale_whichever_scale_init_saw():
    trees = [jax.tree_util.tree_map(lambda a: a.shape, abstract_params(TINY, s)) for s in (2, 3, 4)]
    assert trees[0] == trees[1] == trees[2]
    p = trees[0]
    assert set(p) == {"head", "pre_process_x2", "pre_process_x3", "pre_process_x4", "block_0",
                      "block_1", "body_conv", "upsample_x2", "upsample_x3", "upsample_x4", "tail"}
    assert p["pre_process_x3"]["block_1"]["conv0"]["kernel"] == (5, 5, 8, 8)
    assert p["block_1"]["conv1"]["kernel"] == (3, 3, 8, 8)
    assert p["upsample_x2"] == {"stage_0": {"kernel": (3, 3, 8, 32), "bias": (32,)}}
    assert p["upsample_x3"] == {"stage_0": {"kernel": (3, 3, 8, 72), "bias": (72,)}}
    assert set(p["upsample_x4"]) == {"stage_0", "stage_1"}
    assert p["tail"]["kernel"] == (3, 3, 8, 3)
    paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(p)]
    assert not any("mean" in k.lower() for k in paths)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_output_shape_and_dtype(scale):
    y = run_jax(init(TINY), lr_batch(2, 5, 7), scale)
    assert y.shape == (2, 5 * scale, 7 * scale, 3) and y.dtype == np.float32
    assert np.isfinite(y).all()


def test_scale_must_be_one_of_the_models_and_static():
    params = init(TINY)
    model = TINY.build()
    with pytest.raises(ValueError, match=r"scale must be one of this MDSR's scales \(2, 3, 4\), got 5"):
        model.apply({"params": params}, lr_batch(1, 4, 4), 5)
    with pytest.raises(TypeError, match="static argument"):
        jax.jit(model.apply)({"params": params}, lr_batch(1, 4, 4), 2)
    # the documented way: scale static under jit
    y = jax.jit(model.apply, static_argnums=2)({"params": params}, lr_batch(1, 4, 4), 3)
    assert y.shape == (1, 12, 12, 3)


def test_each_scale_reads_only_its_own_branches():
    params = init(TINY, seed=1)
    x = lr_batch(1, 6, 6, seed=1)
    before = {s: run_jax(params, x, s) for s in (2, 3, 4)}
    bumped = dict(params)
    for branch in ("pre_process_x3", "upsample_x3"):
        bumped[branch] = jax.tree_util.tree_map(lambda a: a + 0.05, params[branch])
    after = {s: run_jax(bumped, x, s) for s in (2, 3, 4)}
    np.testing.assert_array_equal(after[2], before[2])
    np.testing.assert_array_equal(after[4], before[4])
    assert np.abs(after[3] - before[3]).max() > 1.0  # and x3 does read them


def test_initialisation_is_pytorchs_conv2d_default_for_5x5_too():
    """Kernels and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = k*k*C_in: the bound
    holds exactly and the std is within 5% of bound/sqrt(3) (6,400 samples per 5x5 kernel,
    2,304 per 3x3: sampling error under 2%)."""
    config = mdsr.MDSRConfig((2, 3, 4), num_blocks=1, num_features=16)
    params = init(config, seed=3)
    checked = 0
    for path, layer in jax.tree_util.tree_leaves_with_path(
            params, is_leaf=lambda x: isinstance(x, dict) and "kernel" in x):
        k, b = np.asarray(layer["kernel"]), np.asarray(layer["bias"])
        if k.size < 2000:
            continue  # head and tail: too few samples for the std check
        bound = 1.0 / np.sqrt(k.shape[0] * k.shape[1] * k.shape[2])
        limit = bound * (1 + 1e-6)  # the float32 rounding of the bound itself
        assert np.abs(k).max() <= limit and np.abs(b).max() <= limit, path
        assert abs(k.std() / (bound / np.sqrt(3)) - 1) < 0.05, (path, k.std(), bound)
        checked += 1
    assert checked == 3 * 4 + 2 + 1 + 4  # pre-process convs, block convs, body conv, upsamplers


@pytest.mark.skipif(not onednn_conv.available(), reason="oneDNN convolution not built here")
def test_onednn_backend_computes_the_5x5_blocks_as_xla_does():
    params = init(TINY, seed=2)
    x = lr_batch(1, 9, 10, seed=2)
    ref = run_jax(params, x, 3)
    got = run_jax(params, x, 3, conv_backend="onednn")
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_config_validation_and_presets():
    assert mdsr.preset("mdsr") == mdsr.MDSRConfig((2, 3, 4), 80, 64)
    with pytest.raises(ValueError, match="unknown MDSR preset 'mdsr_x2'"):
        mdsr.preset("mdsr_x2")
    with pytest.raises(ValueError, match="scales must be distinct"):
        mdsr.MDSRConfig((2, 2)).validate()
    assert mdsr.MDSRConfig((2, 3, 4), 2, 8).to_dict() == {"scales": [2, 3, 4], "num_blocks": 2,
                                                           "num_features": 8}
    # head 1 + pre-processing 2 blocks x 2 convs x 2 + 16 blocks x 2 + body 1 + 2 stages + tail 1
    assert mdsr.receptive_radius(mdsr.preset("mdsr_baseline"), 4) == 1 + 8 + 32 + 1 + 2 + 1


# --- PyTorch interop ---------------------------------------------------------------------------

def torch_mdsr(blocks=2, features=8, seed=0):
    torch_or_skip()
    from torch_mdsr import MDSR, randomize

    return randomize(MDSR(blocks, features), seed=seed).eval()


def run_torch(model, x, scale):
    import torch

    with torch.no_grad():
        y = model.set_scale(scale)(torch.from_numpy(x).permute(0, 3, 1, 2))
    return y.permute(0, 2, 3, 1).numpy()


def test_torch_weights_give_the_torch_output_at_every_scale():
    model = torch_mdsr(seed=4)
    config, params = torch_convert.mdsr_from_state_dict(model.state_dict())
    assert config == TINY
    for scale in (2, 3, 4):
        x = lr_batch(seed=scale)
        ref = run_torch(model, x, scale)
        got = run_jax(params, x, scale)
        assert got.shape == ref.shape == (2, 11 * scale, 13 * scale, 3)
        rel = np.abs(got - ref).max() / np.abs(ref).max()
        assert rel <= 1e-4, (scale, rel)
        # the comparison means something: the network moves the output off the mean by over
        # 100x the tolerance (measured: 6.6 at x4 against a tolerance of 0.012)
        assert np.abs(ref - ref.mean(axis=(1, 2), keepdims=True)).max() > 100 * 1e-4 * np.abs(ref).max()


def test_jax_to_torch_to_jax_is_bitwise():
    torch = torch_or_skip()

    params = init(TINY, seed=5)
    sd = torch_convert.mdsr_to_state_dict({"params": params}, TINY)
    model = torch_mdsr()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    config, back = torch_convert.mdsr_from_state_dict(model.state_dict())
    assert config == TINY
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(back)):
        assert b.dtype == np.float32
        np.testing.assert_array_equal(np.asarray(a), b, err_msg=jax.tree_util.keystr(path))
    # and torch, given our weights, computes our function
    x = lr_batch(1, 7, 8, seed=5)
    for scale in (2, 3, 4):
        ref = run_torch(model, x, scale)
        assert np.abs(run_jax(params, x, scale) - ref).max() <= 1e-4 * np.abs(ref).max()


def test_the_official_key_set_loads_as_the_preset():
    """A full-size state_dict with the official MDSR-baseline keys (the PyTorch reference's, which
    holds the official 3,227,203 parameters) loads as preset ``mdsr_baseline``."""
    sd = torch_mdsr(16, 64).state_dict()
    assert sum(v.numel() for k, v in sd.items() if "mean" not in k) == PUBLISHED["mdsr_baseline"]
    assert set(sd) == set(torch_convert.mdsr_state_dict_keys(mdsr.preset("mdsr_baseline")))
    # spot checks against the official release's names, written out
    for key in ("head.0.weight", "pre_process.2.1.body.2.bias", "body.15.body.2.weight",
                "body.16.weight", "upsample.0.0.weight", "upsample.1.0.weight",
                "upsample.2.2.weight", "tail.0.bias", "sub_mean.bias", "add_mean.weight"):
        assert key in sd, key
    config, params = torch_convert.mdsr_from_state_dict(sd, preset_name="mdsr_baseline")
    assert config == mdsr.preset("mdsr_baseline")
    assert count_params(params) == PUBLISHED["mdsr_baseline"]
    np.testing.assert_array_equal(params["pre_process_x3"]["block_0"]["conv1"]["kernel"],
                                  sd["pre_process.1.0.body.2.weight"].numpy().transpose(2, 3, 1, 0))
    # a DataParallel "module." prefix is dropped, as for EDSR
    tiny = {f"module.{k}": v for k, v in torch_mdsr().state_dict().items()}
    assert torch_convert.mdsr_from_state_dict(tiny)[0] == TINY


def test_missing_and_unexpected_keys_are_named_in_one_error():
    sd = dict(torch_mdsr().state_dict())
    del sd["pre_process.1.0.body.2.weight"]
    del sd["body.0.body.0.bias"]
    sd["body.1.body.1.weight"] = sd["body.1.body.0.weight"]  # e.g. a BatchNorm-style extra
    with pytest.raises(torch_convert.ConversionError) as e:
        torch_convert.mdsr_from_state_dict(sd)
    msg = str(e.value)
    assert "missing (2): body.0.body.0.bias, pre_process.1.0.body.2.weight" in msg
    assert "unexpected (1): body.1.body.1.weight" in msg


def test_wrong_shapes_presets_and_mean_shifts_are_refused():
    torch = torch_or_skip()

    sd = dict(torch_mdsr().state_dict())
    bad = dict(sd, **{"pre_process.0.1.body.0.weight": torch.zeros(8, 8, 3, 3)})
    with pytest.raises(torch_convert.ConversionError, match=r"wrong shape \(1\): pre_process.0.1.body.0.weight \(8, 8, 3, 3\) \(expected \(8, 8, 5, 5\)\)"):
        torch_convert.mdsr_from_state_dict(bad)
    with pytest.raises(torch_convert.ConversionError,
                       match=r"num_blocks: state_dict=2, preset 'mdsr_baseline'=16"):
        torch_convert.mdsr_from_state_dict(sd, preset_name="mdsr_baseline")
    shifted = dict(sd, **{"add_mean.bias": sd["add_mean.bias"] * 2})
    with pytest.raises(torch_convert.ConversionError, match="add_mean.bias is not the standard DIV2K"):
        torch_convert.mdsr_from_state_dict(shifted)


def test_edsr_and_mdsr_loaders_name_the_other_model():
    torch_or_skip()
    from torch_edsr import EDSR

    with pytest.raises(torch_convert.ConversionError, match="MDSR state_dict.*mdsr_from_state_dict"):
        torch_convert.from_state_dict(torch_mdsr().state_dict(), 2)
    with pytest.raises(torch_convert.ConversionError, match="an EDSR state_dict"):
        torch_convert.mdsr_from_state_dict(EDSR(2, 2, 8).state_dict())


def test_branch_order_follows_the_state_dict():
    """The official model numbers its branches by its ``scale`` list; a checkpoint of another
    order (or a subset) maps each branch to the scale its upsampler implies."""
    torch_or_skip()
    from torch_mdsr import MDSR, randomize

    model = randomize(MDSR(1, 8, scales=(4, 2)), seed=6).eval()
    config, params = torch_convert.mdsr_from_state_dict(model.state_dict())
    assert config == mdsr.MDSRConfig((4, 2), 1, 8)
    x = lr_batch(1, 5, 6, seed=6)
    for scale in (4, 2):
        ref = run_torch(model, x, scale)
        assert np.abs(run_jax(params, x, scale, config) - ref).max() <= 1e-4 * np.abs(ref).max()
