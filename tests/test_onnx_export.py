"""ONNX export (edsr_jax.inference.onnx_export; python -m edsr_jax.export --format onnx), run
with onnxruntime against ``edsr_jax.apply`` and the ``Upscaler``.

Tolerance: both sides compute in float32 but sum each convolution's 9 x C terms in different
orders (onnxruntime's MLAS against XLA's or oneDNN's kernels); outputs reach ~255, where one
float32 ulp is 1.5e-5 (3e-5 above 256). Measured on this machine: at most 5e-5 on the tiny
models; on the built-in photo-x2 (16 blocks, 64 features, uniform-noise input, outputs up to 417)
2.4e-4 against ``apply`` and 4.3e-4 against the Upscaler (whose masked, padded buckets sum in yet
another order). The bound, 1e-4 of the output's magnitude (0.03-0.04 of a grey level, as in
test_export.py), is far below any wiring mistake: a wrong pixel-shuffle order
(DepthToSpace DCR instead of CRD), a transposed kernel or a mixed-up layout moves outputs by
tens of grey levels. Without onnx / onnxruntime (``pip install -e ".[test]"`` brings them) the
tests that run a model skip.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import edsr_jax
from edsr_jax import export
from edsr_jax.inference import onnx_export
from edsr_jax.io import cli
from edsr_jax.nets import mdsr
from edsr_jax.nets.edsr import ModelConfig


@pytest.fixture
def ort():
    pytest.importorskip("onnx", reason='needs onnx: pip install -e ".[test]"')
    return pytest.importorskip("onnxruntime", reason='needs onnxruntime: pip install -e ".[test]"')


def session(ort, model_bytes):
    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])


def run_nhwc(sess, x):
    """(N, H, W, 3) float32 through the NCHW model, back to NHWC."""
    return sess.run(None, {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0].transpose(0, 2, 3, 1)


def lr_batch(n, h, w, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, h, w, 3)).astype(np.float32)


def tiny_params(config, scale=None, seed=0):
    extra = () if scale is None else (scale,)
    variables = config.build().init(jax.random.key(seed), jnp.zeros((1, 8, 8, 3)), *extra)
    return jax.tree_util.tree_map(np.asarray, variables)


def assert_close(got, ref):
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max(), np.abs(got - ref).max()


@pytest.mark.parametrize("config", [ModelConfig(2, 2, 8, 0.1), ModelConfig(3, 2, 8), ModelConfig(4, 2, 8)],
                         ids=["x2-res0.1", "x3", "x4"])
def test_edsr_matches_apply_at_any_batch_height_and_width(ort, config):
    params = tiny_params(config, seed=config.scale)
    sess = session(ort, onnx_export.onnx_bytes(config, params))
    s = config.scale
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
    assert inp.shape == ["batch", 3, "height", "width"] and out.shape == ["batch", 3, f"height*{s}", f"width*{s}"]
    for n, h, w in [(1, 17, 23), (3, 32, 9)]:  # one session, two batch sizes and sizes
        x = lr_batch(n, h, w, seed=h)
        got = run_nhwc(sess, x)
        assert got.shape == (n, h * s, w * s, 3)
        assert_close(got, np.asarray(edsr_jax.apply(params, x, config)))


@pytest.mark.parametrize("scale", [3, 4])
def test_mdsr_holds_one_scale_and_matches_apply(ort, scale):
    config = mdsr.MDSRConfig((2, 3, 4), 2, 8)
    params = tiny_params(config, scale=scale)
    model = onnx_export.onnx_model(config, params, scale=scale)
    names = {t.name for t in model.graph.initializer}
    i = config.scales.index(scale)
    assert f"upsample.{i}.0.weight" in names and "pre_process.0.0.body.0.weight" not in names
    assert {p.key: p.value for p in model.metadata_props}["scale"] == str(scale)
    sess = session(ort, model.SerializeToString())
    for h, w in [(11, 19), (24, 8)]:
        x = lr_batch(2, h, w, seed=w)
        assert_close(run_nhwc(sess, x), np.asarray(edsr_jax.apply(params, x, config, scale=scale)))
    with pytest.raises(ValueError, match="choose one with"):
        onnx_export.onnx_model(config, params)


def test_cli_exports_a_builtin_model_that_matches_the_upscaler(ort, tmp_path, capsys):
    out = tmp_path / "photo-x2.onnx"
    assert cli.run(export.main, ["--model", "photo-x2", "--out", str(out)]) == 0
    assert f"wrote {out} (edsr_baseline_x2, x2)" in capsys.readouterr().out
    sess = session(ort, out.read_bytes())
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["scale"] == "2" and meta["layout"] == "NCHW" and meta["range"] == "[0, 255]"
    upscaler = edsr_jax.Upscaler.from_pretrained("photo-x2")
    for h, w in [(20, 28), (33, 17)]:
        x = lr_batch(1, h, w, seed=h)
        assert_close(run_nhwc(sess, x)[0], upscaler.predict(x[0]))
    # an existing file is refused, as for every export
    assert cli.run(export.main, ["--model", "photo-x2", "--out", str(out)]) == 2
    assert "exists (pass --overwrite" in capsys.readouterr().err


def test_cli_exports_a_checkpoint_with_format_onnx(ort, tmp_path, capsys):
    from edsr_jax.training import checkpoint

    config = ModelConfig(3, 2, 8)
    params = tiny_params(config, seed=5)
    checkpoint.save_params_checkpoint(tmp_path / "run", config, params)
    out = tmp_path / "model.bin"  # a suffix that says nothing: --format decides
    assert cli.run(export.main, ["--checkpoint", str(tmp_path / "run"), "--format", "onnx",
                                 "--out", str(out)]) == 0
    assert "(edsr_b2_f8_x3, x3)" in capsys.readouterr().out
    x = lr_batch(2, 15, 12, seed=5)
    assert_close(run_nhwc(session(ort, out.read_bytes()), x), np.asarray(edsr_jax.apply(params, x, config)))


def test_cli_refuses_a_compute_dtype_other_than_float32(ort, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert cli.run(export.main, ["--model", "photo-x2", "--out", str(out), "--dtype", "bfloat16"]) == 2
    assert capsys.readouterr().err == "error: --dtype bfloat16: an ONNX export computes in float32\n"
    assert not out.exists()


def test_without_onnx_the_export_is_one_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if onnx were not installed
    out = tmp_path / "m.onnx"
    assert cli.run(export.main, ["--model", "photo-x2", "--out", str(out)]) == 2
    assert capsys.readouterr().err == f'error: {onnx_export.ONNX_HINT}\n'
    assert 'pip install "edsr-jax[onnx]"' in onnx_export.ONNX_HINT
    assert not out.exists()
