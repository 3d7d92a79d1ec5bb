"""The upscale CLI end to end with a real (tiny) checkpoint, and evaluate --checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edsr_jax import checkpoint, cli, infer, upscale
from edsr_jax.images import read_rgb, write_image
from edsr_jax.imresize import imresize
from edsr_jax.metrics import psnr
from edsr_jax.model import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ModelConfig(scale=2, num_blocks=2, num_features=8)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    params = CONFIG.build().init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    path = tmp_path_factory.mktemp("ckpt")
    checkpoint.save_params_checkpoint(path, CONFIG, params, note="test")
    return path, params["params"]


def make_images(folder, sizes, seed=0, prefix="img"):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, (h, w) in enumerate(sizes):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        path = write_image(folder / f"{prefix}{i}.{'png' if i % 2 == 0 else 'bmp'}", img)
        out[path] = img
    return out


def run(argv, capsys):
    code = cli.run(upscale.main, [str(a) for a in argv])
    return code, capsys.readouterr().err


def test_upscales_folder_and_glob_keeping_names(tmp_path, ckpt, capsys):
    path, params = ckpt
    images = make_images(tmp_path / "in", [(20, 30), (33, 17), (16, 16)])
    extra = make_images(tmp_path / "more", [(12, 40), (10, 10)], seed=1, prefix="more")
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    code, err = run([tmp_path / "in", str(tmp_path / "more" / "*.png"), "--checkpoint", path,
                     "--out", tmp_path / "out", "--suffix", "_x2"], capsys)
    assert code == 1  # the broken file is reported and skipped; the others are done
    assert "skipped:" in err and "broken.png" in err and "Traceback" not in err
    assert "4 of 5 image(s) upscaled x2" in err
    reference = infer.Upscaler(CONFIG, params)
    del extra[tmp_path / "more" / "more1.bmp"]  # not matched by the *.png pattern
    for src, img in {**images, **extra}.items():
        out = tmp_path / "out" / f"{src.stem}_x2.png"
        sr = read_rgb(out)
        assert sr.shape == (2 * img.shape[0], 2 * img.shape[1], 3)
        np.testing.assert_array_equal(sr, reference(img))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "img0_x2.png", "img1_x2.png", "img2_x2.png", "more0_x2.png"]


def test_never_overwrites(tmp_path, ckpt, capsys):
    path, _ = ckpt
    make_images(tmp_path / "in", [(20, 24), (18, 18)])
    out = tmp_path / "out"
    assert run([tmp_path / "in", "--checkpoint", path, "--out", out], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["img0.png", "img1.png"]
    (out / "img0.png").write_bytes(b"user data")
    code, err = run([tmp_path / "in", "--checkpoint", path, "--out", out], capsys)
    assert code == 2 and "exist already" in err and "--overwrite" in err
    assert (out / "img0.png").read_bytes() == b"user data"
    assert run([tmp_path / "in", "--checkpoint", path, "--out", out, "--overwrite"], capsys)[0] == 0
    assert (out / "img0.png").read_bytes() == before["img0.png"]

    # --out is the input folder: refused even though the names would differ
    code, err = run([tmp_path / "in", "--checkpoint", path, "--out", tmp_path / "in", "--suffix", "_x2"],
                    capsys)
    assert code == 2 and "is a folder of the inputs" in err
    # two inputs with one stem would write one output
    make_images(tmp_path / "other", [(20, 24)])
    code, err = run([tmp_path / "in" / "img0.png", tmp_path / "other" / "img0.png", "--checkpoint", path,
                     "--out", tmp_path / "out2"], capsys)
    assert code == 2 and "would both be written" in err
    assert not (tmp_path / "out2").exists()


def test_usage_errors_exit_2(tmp_path, ckpt, capsys):
    path, _ = ckpt
    make_images(tmp_path / "in", [(20, 24)])
    (tmp_path / "empty").mkdir()
    cases = [
        ([tmp_path / "in", "--checkpoint", tmp_path / "nope", "--out", tmp_path / "o"], "nope"),
        ([tmp_path / "missing.png", "--checkpoint", path, "--out", tmp_path / "o"], "no such file"),
        ([tmp_path / "empty", "--checkpoint", path, "--out", tmp_path / "o"], "holds no image files"),
        ([str(tmp_path / "*.jpg"), "--checkpoint", path, "--out", tmp_path / "o"], "matches no image files"),
        ([tmp_path / "in", "--checkpoint", path, "--out", tmp_path / "o", "--tile", "4"], "--tile 4"),
        ([tmp_path / "in", "--checkpoint", path, "--out", tmp_path / "o", "--ext", "txt"], "--ext txt"),
    ]
    for argv, message in cases:
        code, err = run(argv, capsys)
        assert code == 2 and err.startswith("error: ") and message in err, (argv, err)
    assert not (tmp_path / "o").exists()


def test_conv_backend_option_opts_out_with_the_same_output(tmp_path, ckpt, capsys):
    """``--conv-backend xla`` (XLA's convolutions) and the default (oneDNN's where built)
    write the same image up to float32 rounding (at most 1 level in a rare pixel)."""
    path, _ = ckpt
    make_images(tmp_path / "in", [(20, 30)])
    outs = {}
    for backend in ("xla", "auto"):
        code, err = run([tmp_path / "in", "--checkpoint", path, "--out", tmp_path / backend,
                         "--conv-backend", backend], capsys)
        assert code == 0, err
        outs[backend] = read_rgb(tmp_path / backend / "img0.png").astype(int)
    assert outs["xla"].shape == (40, 60, 3)
    assert np.abs(outs["xla"] - outs["auto"]).max() <= 1


def test_module_entry_point_tiles_ensemble_bfloat16(tmp_path, ckpt):
    path, params = ckpt
    images = make_images(tmp_path / "in", [(40, 28)])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "edsr_jax.upscale", str(tmp_path / "in"), "--checkpoint",
                           str(path), "--out", str(tmp_path / "out"), "--tile", "16", "--ensemble",
                           "--dtype", "bfloat16"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (src, img), = images.items()
    sr = read_rgb(tmp_path / "out" / "img0.png")
    exact = infer.Upscaler(CONFIG, params, ensemble=True)(img)
    assert np.abs(sr.astype(int) - exact).mean() < 1.0  # bfloat16: close, not equal
    proc = subprocess.run([sys.executable, "-m", "edsr_jax.upscale", str(tmp_path / "in"), "--checkpoint",
                           str(tmp_path / "nothing"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_evaluate_with_checkpoint(tmp_path, ckpt, capsys):
    evaluate = pytest.importorskip("edsr_jax.evaluate")
    path, params = ckpt
    hr_images = make_images(tmp_path / "set", [(40, 36), (32, 48)], seed=3)
    json_path = tmp_path / "scores.json"
    code = cli.run(evaluate.main, ["--checkpoint", str(path), "--json", str(json_path), str(tmp_path / "set")])
    assert code == 0, capsys.readouterr().err
    (result,) = json.loads(json_path.read_text())["results"]
    assert result["method"] == "edsr_b2_f8_x2" and result["scale"] == 2 and result["images"] == 2
    up = infer.Upscaler(CONFIG, params)
    expected = np.mean([psnr(up(imresize(hr, 0.5)), hr, crop_border=2) for hr in hr_images.values()])
    assert result["psnr"] == pytest.approx(expected, abs=1e-6)
