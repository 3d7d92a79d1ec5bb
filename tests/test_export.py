"""PyTorch interop against an independent PyTorch EDSR, and StableHLO artifacts
(edsr_jax.inference.export; the command edsr_jax.export).

Tolerances: the JAX and PyTorch forward passes are both float32 but sum convolution terms
in different orders; 1e-4 of the output's magnitude is ~100 float32 ulps, far below any
wiring mistake (a swapped kernel axis or channel order changes outputs by tens of units).
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edsr_jax import export
from edsr_jax.inference import export as export_lib
from edsr_jax.io import cli
from edsr_jax.inference import infer
from edsr_jax.inference import stablehlo_runner
from edsr_jax.inference import torch_convert
from edsr_jax.nets.edsr import ModelConfig
from conftest import torch_or_skip

ROOT = Path(__file__).resolve().parents[1]


def torch_model(scale, blocks=2, features=8, seed=0, res_scale=1.0):
    torch_or_skip()
    from torch_edsr import EDSR, randomize

    return randomize(EDSR(scale, blocks, features, res_scale), seed=seed).eval()


def run_torch(model, x):
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()


def lr_batch(n=2, h=13, w=17, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, h, w, 3)).astype(np.float32)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_torch_weights_give_the_torch_output(scale):
    model = torch_model(scale, seed=scale)
    config, params = torch_convert.from_state_dict(model.state_dict(), scale)
    assert config == ModelConfig(scale, 2, 8, 1.0)
    x = lr_batch(seed=scale)
    ref = run_torch(model, x)
    got = np.asarray(infer.apply(params, x, config))
    assert got.shape == ref.shape == (2, 13 * scale, 17 * scale, 3)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_res_scale_comes_from_the_preset_path():
    model = torch_model(2, seed=7, res_scale=0.1)
    config, params = torch_convert.from_state_dict(model.state_dict(), 2, res_scale=0.1)
    x = lr_batch(1, 9, 11, seed=7)
    ref = run_torch(model, x)
    assert np.abs(np.asarray(infer.apply(params, x, config)) - ref).max() <= 1e-4 * np.abs(ref).max()


@pytest.mark.parametrize("scale", [2, 4])
def test_round_trip_jax_torch_jax_is_exact(scale):
    torch = torch_or_skip()
    config = ModelConfig(scale, 2, 8)
    params = jax.tree_util.tree_map(
        np.asarray, config.build().init(jax.random.key(scale), jnp.zeros((1, 8, 8, 3)))["params"])
    sd = export_lib.torch_state_dict(config, params)
    model = torch_model(scale, seed=99)
    model.load_state_dict(sd)  # strict: every official key present, none extra
    assert list(sd) == list(model.state_dict())
    assert sd["tail.0.0.weight"].shape == torch.Size([32, 8, 3, 3])
    back_config, back = torch_convert.from_state_dict(model.state_dict(), scale)
    assert back_config == config
    flat_a = jax.tree_util.tree_leaves_with_path(params)
    flat_b = jax.tree_util.tree_leaves_with_path(back)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (_, a), (_, b) in zip(flat_a, flat_b):
        np.testing.assert_array_equal(a, b)


def test_mismatches_are_named():
    sd = torch_model(2, seed=1).state_dict()
    with pytest.raises(torch_convert.ConversionError, match=r"num_blocks: state_dict=2, preset 'edsr_baseline' x2=16"):
        torch_convert.from_state_dict(sd, 2, preset_name="edsr_baseline")
    with pytest.raises(torch_convert.ConversionError, match="scale: state_dict=2"):
        torch_convert.from_state_dict(sd, 4)
    bad = dict(sd)
    bad["sub_mean.bias"] = bad["sub_mean.bias"] * 0
    with pytest.raises(torch_convert.ConversionError, match="sub_mean.bias is not the standard DIV2K mean"):
        torch_convert.from_state_dict(bad, 2)
    extra = dict(sd, **{"body.9.weight": sd["head.0.bias"]})
    with pytest.raises(torch_convert.ConversionError, match="body.9.weight"):
        torch_convert.from_state_dict(extra, 2)
    with pytest.raises(torch_convert.ConversionError, match="no 'head.0.weight'"):
        torch_convert.from_state_dict({"fc.weight": np.zeros(3)}, 2)
    prefixed = {f"module.{k}": v for k, v in sd.items()}  # saved from nn.DataParallel
    assert torch_convert.from_state_dict(prefixed, 2)[0] == ModelConfig(2, 2, 8)


RUNNER_SCRIPT = textwrap.dedent("""
    import sys, numpy as np
    from edsr_jax.inference import stablehlo_runner
    model = stablehlo_runner.load(sys.argv[1])
    a = model.predict(np.load(sys.argv[2]))
    b = model.predict(np.load(sys.argv[3]))
    u8 = model(np.load(sys.argv[3])[0].astype(np.uint8))
    np.savez(sys.argv[4], a=a, b=b, u8=u8)
    heavy = [m for m in ("edsr_jax.nets.edsr", "edsr_jax.inference.infer", "flax") if m in sys.modules]
    print("imported:", heavy, model.scale, model.name)
""")


def test_stablehlo_artifact_runs_without_the_model_code(tmp_path):
    config = ModelConfig(3, 2, 8)
    params = config.build().init(jax.random.key(1), jnp.zeros((1, 8, 8, 3)))["params"]
    art = tmp_path / "m.stablehlo"
    art.write_bytes(export_lib.stablehlo_artifact(config, params))
    header, _ = stablehlo_runner.unpack(art.read_bytes())
    assert header["scale"] == 3 and header["model"] == config.to_dict()
    assert header["platforms"] == ["cpu", "cuda"] and header["input"]["shape"] == ["b", "h", "w", 3]
    xa, xb = lr_batch(2, 11, 14, seed=1), np.round(lr_batch(1, 20, 9, seed=2))
    np.save(tmp_path / "a.npy", xa)
    np.save(tmp_path / "b.npy", xb)
    proc = subprocess.run([sys.executable, "-c", RUNNER_SCRIPT, str(art), str(tmp_path / "a.npy"),
                           str(tmp_path / "b.npy"), str(tmp_path / "out.npz")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert "imported: [] 3 edsr_b2_f8_x3" in proc.stdout
    out = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(out["a"], np.asarray(infer.apply(params, xa, config)), atol=1e-3)
    want_b = np.asarray(infer.apply(params, xb, config))
    np.testing.assert_allclose(out["b"], want_b, atol=1e-3)
    np.testing.assert_array_equal(out["u8"], np.clip(np.round(want_b[0]), 0, 255).astype(np.uint8))
    with pytest.raises(ValueError, match="not an edsr-jax StableHLO artifact"):
        stablehlo_runner.unpack(b"garbage")


def test_cli_import_export_round_trip(tmp_path, capsys):
    torch = torch_or_skip()
    model = torch_model(2, seed=5)
    pt = tmp_path / "w.pt"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, pt)
    ckpt = tmp_path / "ckpt"
    # scale and preset read from the state_dict's shapes (x2: one upsampler conv of 4 x features)
    assert cli.run(export.main, ["--from-torch", str(pt), "--out", str(ckpt)]) == 0

    up = infer.Upscaler.from_checkpoint(ckpt)
    lr = np.random.default_rng(5).integers(0, 256, (12, 15, 3), dtype=np.uint8)
    ref = run_torch(model, lr[None].astype(np.float32))[0]
    assert np.abs(up.predict(lr) - ref).max() <= 1e-4 * np.abs(ref).max()

    out_pt = tmp_path / "back.pt"  # --format torch from the suffix
    assert cli.run(export.main, ["--checkpoint", str(ckpt), "--out", str(out_pt)]) == 0
    back = torch.load(out_pt, weights_only=True)
    assert list(back) == list(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(back[k], v), k

    art = tmp_path / "m.shlo"  # --format stablehlo from the suffix
    assert cli.run(export.main, ["--checkpoint", str(ckpt), "--out", str(art), "--platforms", "cpu"]) == 0
    np.testing.assert_allclose(stablehlo_runner.load(art).predict(lr), ref, atol=1e-3)

    capsys.readouterr()
    # existing outputs are never replaced without --overwrite
    assert cli.run(export.main, ["--checkpoint", str(ckpt), "--format", "torch", "--out", str(out_pt)]) == 2
    assert "exists (pass --overwrite" in capsys.readouterr().err
    assert cli.run(export.main, ["--from-torch", str(pt), "--scale", "2", "--out", str(ckpt)]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err


def test_cli_errors(tmp_path, capsys, monkeypatch):
    torch = torch_or_skip()
    pt = tmp_path / "w.pt"
    torch.save(torch_model(2).state_dict(), pt)
    cases = [
        (["--from-torch", str(pt), "--scale", "2", "--preset", "edsr", "--out", str(tmp_path / "c")],
         "num_blocks: state_dict=2, preset 'edsr' x2=32"),
        (["--from-torch", str(pt), "--scale", "3", "--out", str(tmp_path / "c")], "scale: state_dict=2"),
        (["--from-torch", str(tmp_path / "nope.pt"), "--scale", "2", "--out", str(tmp_path / "c")],
         "nope.pt: no such file"),
        (["--from-torch", str(pt), "--scale", "4", "--out", str(tmp_path / "c")], "scale: state_dict=2, --scale 4"),
        (["--checkpoint", str(tmp_path / "none"), "--format", "torch", "--out", str(tmp_path / "x.pt")],
         "none"),
        (["--checkpoint", str(tmp_path), "--out", str(tmp_path / "x")], "cannot tell the format from 'no suffix'"),
        (["--checkpoint", str(tmp_path), "--out", str(tmp_path / "x.tflite")], "pass --format stablehlo, torch or onnx"),
    ]
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    cases.append((["--from-torch", str(tmp_path / "junk.pt"), "--scale", "2", "--out", str(tmp_path / "c")],
                  "not a PyTorch weights file"))
    for argv, message in cases:
        assert cli.run(export.main, argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (argv, err)
        assert "Traceback" not in err
    assert not (tmp_path / "c").exists()

    monkeypatch.setitem(sys.modules, "torch", None)  # as if PyTorch were not installed
    assert cli.run(export.main, ["--from-torch", str(pt), "--scale", "2", "--out", str(tmp_path / "c")]) == 2
    assert 'pip install "edsr-jax[torch]"' in capsys.readouterr().err


def test_header_is_plain_json(tmp_path):
    blob = stablehlo_runner.pack({"scale": 2, "name": "x"}, b"\x00\x01\n\x02")
    header, rest = stablehlo_runner.unpack(blob)
    assert header == {"scale": 2, "name": "x"} and rest == b"\x00\x01\n\x02"
    assert json.loads(blob.splitlines()[1]) == header


ALONE = ("import sys, runpy; sys.modules['edsr_jax'] = None; {block_pil}"
         "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


@pytest.mark.slow
def test_stablehlo_runner_copied_alone_runs_with_jax_and_numpy_only(tmp_path):
    """The runner file copied into an empty folder, run in a fresh process that cannot import
    edsr_jax (nor, in the first runs, Pillow): .npy in, .npy out, the model's numbers; the
    CLI convention kept (one error: line, exit 2)."""
    import os
    import shutil

    from PIL import Image

    config = ModelConfig(2, 2, 8)
    params = config.build().init(jax.random.key(2), jnp.zeros((1, 8, 8, 3)))["params"]
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(ROOT / "edsr_jax" / "inference" / "stablehlo_runner.py", alone / "stablehlo_runner.py")
    (alone / "m.stablehlo").write_bytes(export_lib.stablehlo_artifact(config, params, platforms=["cpu"]))
    lr = np.round(lr_batch(1, 10, 13, seed=3))[0]
    np.save(alone / "in.npy", lr)
    Image.fromarray(lr.astype(np.uint8)).save(alone / "in.png")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def runner(*args, pil=False):
        code = ALONE.format(block_pil="" if pil else "sys.modules['PIL'] = None; ")
        return subprocess.run([sys.executable, "-c", code, "stablehlo_runner.py", *args], cwd=alone, env=env,
                              capture_output=True, text=True, timeout=120)

    proc = runner("m.stablehlo", "in.npy", "out.npy")
    assert proc.returncode == 0, proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("out.npy: ")] == [
        ln for ln in proc.stderr.splitlines() if "26x20 from in.npy (13x10)" in ln]  # the one summary line
    np.testing.assert_allclose(np.load(alone / "out.npy"), np.asarray(infer.apply(params, lr[None], config))[0],
                               atol=1e-3)
    for args, message in ((("m.stablehlo", "in.npy", "out.npy"), "out.npy: exists"),
                          (("m.stablehlo", "in.png", "out.png"), "image files need Pillow"),
                          (("in.npy", "in.npy", "x.npy"), "not an edsr-jax StableHLO artifact"),
                          (("m.stablehlo",), "the following arguments are required")):
        proc = runner(*args)
        assert proc.returncode == 2 and proc.stderr.count("error:") == 1 and message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    proc = runner("m.stablehlo", "in.png", "out.png", pil=True)  # with Pillow: image files
    assert proc.returncode == 0, proc.stderr
    assert np.asarray(Image.open(alone / "out.png")).shape == (20, 26, 3)
    assert sorted(p.name for p in alone.iterdir()) == ["in.npy", "in.png", "m.stablehlo", "out.npy", "out.png",
                                                       "stablehlo_runner.py"]


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_from_torch_reads_scale_and_preset_from_the_shapes(scale, tmp_path):
    """x2: one upsampler conv with 4 x features outputs, x3: 9 x, x4: two 4 x convs."""
    from edsr_jax.training.restore import restore_for_inference

    torch = torch_or_skip()
    pt = tmp_path / "w.pt"
    torch.save(torch_model(scale).state_dict(), pt)
    step = export_lib.import_torch(pt, tmp_path / "ckpt")
    config, _ = restore_for_inference(tmp_path / "ckpt")
    assert config == ModelConfig(scale, 2, 8) and step.name == "0"


def test_stablehlo_runner_says_what_it_wrote_in_one_line(tmp_path, capsys):
    config = ModelConfig(2, 2, 8)
    params = config.build().init(jax.random.key(2), jnp.zeros((1, 8, 8, 3)))["params"]
    art = tmp_path / "m.shlo"
    art.write_bytes(export_lib.stablehlo_artifact(config, params, platforms=["cpu"]))
    np.save(tmp_path / "in.npy", np.round(lr_batch(2, 10, 13, seed=3)))
    assert stablehlo_runner.run([str(art), str(tmp_path / "in.npy"), str(tmp_path / "out.npy")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{tmp_path / 'out.npy'}: 2 x 26x20 from {tmp_path / 'in.npy'} "
                                               "(2 x 13x10), ") and " x2, " in err[0], err
