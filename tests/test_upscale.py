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

from edsr_jax import upscale
from edsr_jax.training import checkpoint
from edsr_jax.io import cli
from edsr_jax.inference import infer
from edsr_jax.io.images import read_rgb, write_image
from edsr_jax.degradation.imresize import imresize
from edsr_jax.evaluation.metrics import psnr
from edsr_jax.nets.edsr import ModelConfig

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


@pytest.mark.slow
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


def test_outputs_keep_the_kind_of_their_input(tmp_path, ckpt, capsys):
    """The README's table "input kind -> output", row by row."""
    from PIL import Image, ImageCms

    from edsr_jax.io.images import read_image

    path, params = ckpt
    ref = infer.Upscaler(CONFIG, params)
    rng = np.random.default_rng(3)
    h, w = 12, 16
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (h, w), dtype=np.uint8)
    alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
    gray16 = rng.integers(0, 65536, (h, w), dtype=np.uint16)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rgb).save(src / "rgb.png")
    Image.fromarray(gray).save(src / "gray.png")
    Image.fromarray(np.dstack([gray, alpha])).save(src / "gray_alpha.png")
    Image.fromarray(np.dstack([rgb, alpha])).save(src / "rgba.png")
    Image.fromarray(rgb).quantize(16).save(src / "palette.png")
    Image.fromarray(rgb).quantize(16).save(src / "palette_t.png", transparency=0)
    Image.fromarray(gray16).save(src / "gray16.png")
    Image.fromarray(gray > 127).save(src / "bilevel.png")
    Image.fromarray(rgb).convert("CMYK").save(src / "cmyk.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "TestCam"  # rotate 90 degrees clockwise to view; camera make
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(rgb[:8]).save(src / "rotated.jpg", exif=exif, icc_profile=srgb, quality=95)  # 16 x 8
    out = tmp_path / "out"
    code, err = run([src, "--checkpoint", path, "--out", out], capsys)
    assert code == 0, err

    def opened(name):
        return Image.open(out / name)

    # RGB -> RGB, exactly the model's output; RGBA -> RGBA, alpha by MATLAB bicubic.
    assert opened("rgb.png").mode == "RGB"
    np.testing.assert_array_equal(np.asarray(opened("rgb.png")), ref(rgb))
    rgba = np.asarray(opened("rgba.png"))
    assert rgba.shape == (2 * h, 2 * w, 4)
    np.testing.assert_array_equal(rgba[..., :3], ref(rgb))
    np.testing.assert_array_equal(rgba[..., 3], imresize(alpha, 2))
    # L -> L (no colour tint), the rounded mean of the model's channels; LA -> LA.
    want_gray = np.floor(ref.predict(np.repeat(gray[..., None], 3, 2)).astype(np.float64).mean(-1) + 0.5)
    assert opened("gray.png").mode == "L"
    np.testing.assert_array_equal(np.asarray(opened("gray.png")), np.clip(want_gray, 0, 255))
    la = np.asarray(opened("gray_alpha.png"))
    assert opened("gray_alpha.png").mode == "LA" and la.shape == (2 * h, 2 * w, 2)
    np.testing.assert_array_equal(la[..., 1], imresize(alpha, 2))
    # 16-bit grayscale -> 16-bit grayscale, the model run on value / 257 (finer than 8-bit steps).
    g16 = opened("gray16.png")
    assert g16.mode == "I;16"
    f = ref.predict(np.repeat((gray16 / 257.0).astype(np.float32)[..., None], 3, 2)).astype(np.float64)
    np.testing.assert_array_equal(np.asarray(g16), np.clip(np.floor(f.mean(-1) * 257 + 0.5), 0, 65535))
    assert len(np.unique(np.asarray(g16) % 257)) > 1  # not just 8-bit values scaled up
    # palette -> RGB (RGBA with transparency); 1-bit -> L; CMYK -> RGB.
    assert opened("palette.png").mode == "RGB" and opened("palette_t.png").mode == "RGBA"
    assert opened("bilevel.png").mode == "L" and opened("cmyk.png").mode == "RGB"
    # EXIF orientation applied once: upright pixels, the tag removed, other EXIF and ICC kept.
    rot = opened("rotated.png")
    assert rot.size == (2 * 8, 2 * 16) and rot.mode == "RGB"  # turned upright: 8 wide, 16 high
    assert rot.getexif().get(0x0112) is None and rot.getexif().get(0x010F) == "TestCam"
    assert rot.info.get("icc_profile") == srgb
    assert "palette image: written as RGB" in err and "1-bit image" in err and "CMYK converted" in err
    # JPEG output: no alpha, no 16-bit (said in a note); --quality sets the JPEG quality.
    code, err = run([src / "rgba.png", src / "gray16.png", "--checkpoint", path, "--out", tmp_path / "jpg",
                     "--ext", ".jpg", "--quality", "40"], capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "jpg" / "rgba.jpg").mode == "RGB"
    assert Image.open(tmp_path / "jpg" / "gray16.jpg").mode == "L"
    assert "JPEG holds no 8-bit colour + alpha: written as 8-bit colour" in err
    code, _ = run([src / "rgb.png", "--checkpoint", path, "--out", tmp_path / "q95", "--ext", ".jpg"], capsys)
    code40, _ = run([src / "rgb.png", "--checkpoint", path, "--out", tmp_path / "q40", "--ext", ".jpg",
                     "--quality", "40"], capsys)
    assert code == code40 == 0
    assert (tmp_path / "q40" / "rgb.jpg").stat().st_size < (tmp_path / "q95" / "rgb.jpg").stat().st_size
    assert read_image(tmp_path / "q95" / "rgb.jpg").kind == "RGB"
    # --ext same: each output in its input's file type (and kind).
    code, err = run([src / "rgba.png", src / "cmyk.jpg", src / "gray16.png", "--checkpoint", path,
                     "--out", tmp_path / "same", "--ext", "same", "--quality", "90"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "same").iterdir()) == ["cmyk.jpg", "gray16.png", "rgba.png"]
    assert Image.open(tmp_path / "same" / "cmyk.jpg").format == "JPEG"
    assert Image.open(tmp_path / "same" / "gray16.png").mode == "I;16"
    for bad, message in ((["--ext", ".png", "--quality", "90"], "--quality applies to JPEG and WebP"),
                         (["--ext", ".jpg", "--quality", "0"], "--quality 0: must be 1..100")):
        code, err = run([src / "rgb.png", "--checkpoint", path, "--out", tmp_path / "bad", *bad], capsys)
        assert code == 2 and message in err and err.count("error:") == 1


def test_a_relative_checkpoint_path_works(tmp_path, ckpt, capsys, monkeypatch):
    """`--checkpoint runs/x` as the README writes it (Orbax itself wants absolute paths)."""
    path, _ = ckpt
    make_images(tmp_path / "in", [(10, 12)])
    monkeypatch.chdir(path.parent)
    code, err = run(["--checkpoint", path.name, "--out", tmp_path / "out", tmp_path / "in"], capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "img0.png").exists()


def test_every_file_the_clis_write_has_normal_permissions(tmp_path, ckpt, capsys):
    """Under umask 022 every file upscale, evaluate (--json, --save-images, --save-panels),
    prepare and export write is 0644 and every folder 0755, as `open()` and `mkdir` give
    (temporary files renamed into place would otherwise keep mkstemp's 0600)."""
    from edsr_jax import evaluate, export, prepare
    from edsr_jax.io import outputs

    path, _ = ckpt
    make_images(tmp_path / "in", [(16, 16), (16, 16)])
    out = tmp_path / "out"
    old = os.umask(0o022)
    outputs._UMASK = None
    try:
        assert cli.run(upscale.main, [str(tmp_path / "in"), "--checkpoint", str(path), "--out", str(out / "up")]) == 0
        assert cli.run(upscale.main, [str(tmp_path / "in"), "--checkpoint", str(path), "--out", str(out / "jpg"),
                                      "--ext", ".jpg", "--quality", "80"]) == 0
        assert cli.run(evaluate.main, ["--bicubic", "--checkpoint", str(path), str(tmp_path / "in"),
                                       "--json", str(out / "r.json"), "--save-images", str(out / "sr"),
                                       "--save-panels", str(out / "panels")]) == 0
        assert cli.run(prepare.main, [str(tmp_path / "in"), "--out", str(out / "prep"), "--scales", "2",
                                      "--workers", "1", "--no-progress"]) == 0
        assert cli.run(export.main, ["--checkpoint", str(path), "--format", "stablehlo",
                                     "--out", str(out / "m.shlo")]) == 0
    finally:
        os.umask(old)
        outputs._UMASK = None
    capsys.readouterr()
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) >= 13  # 2 + 2 upscaled, json, 4 SR, 2 panels, prepared HR/LR + manifest, export
    wrong = [(str(p.relative_to(out)), oct(p.stat().st_mode & 0o777)) for p in out.rglob("*")
             if p.stat().st_mode & 0o777 != (0o755 if p.is_dir() else 0o644)]
    assert wrong == []


def test_outputs_of_another_scale_or_type_beside_are_refused_in_one_line(tmp_path, ckpt, capsys):
    """A run at x4 wrote comic.jpg; an x2 run into the same --out would write comic.png beside
    it, and the two would pass for one another: refused, naming the file; --suffix resolves it."""
    path, _ = ckpt
    make_images(tmp_path / "in", [(16, 20)], prefix="comic")
    out = tmp_path / "out"
    out.mkdir()
    write_image(out / "comic0.jpg", np.zeros((64, 80, 3), np.uint8))  # an earlier x4 run's, as JPEG
    code, err = run([tmp_path / "in", "--checkpoint", path, "--out", out], capsys)
    assert code == 2 and err.count("error:") == 1
    assert f"{out / 'comic0.jpg'} exists beside the output comic0.png" in err and "--suffix" in err
    assert sorted(p.name for p in out.iterdir()) == ["comic0.jpg"]
    code, err = run([tmp_path / "in", "--checkpoint", path, "--out", out, "--overwrite"], capsys)
    assert code == 2  # --overwrite replaces an output of the same name, not another file beside it
    assert run([tmp_path / "in", "--checkpoint", path, "--out", out, "--suffix", "_x2"], capsys)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["comic0.jpg", "comic0_x2.png"]
    code, err = run([tmp_path / "in", "--checkpoint", path, "--out", out, "--suffix", "_x2"], capsys)
    assert code == 2 and "pass --overwrite to replace them, or --suffix / another --out" in err


def test_progress_within_an_image_counts_every_tile_and_ensemble_pass(ckpt):
    path, params = ckpt
    img = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    for ensemble in (False, True):
        up = infer.Upscaler(CONFIG, {"params": params}, tile=16, ensemble=ensemble)
        seen = []
        out = up(img, progress=lambda done, total: seen.append((done, total)))
        total = 3 * 4 * (8 if ensemble else 1)  # 40/16 -> 3 rows, 56/16 -> 4 columns of tiles
        assert up.passes(40, 56) == total and seen == [(k, total) for k in range(1, total + 1)]
        assert np.array_equal(out, up(img))  # the same image with or without a listener
    whole = infer.Upscaler(CONFIG, {"params": params})
    calls = []
    whole(np.stack([img] * 3), progress=lambda d, t: calls.append((d, t)))
    assert whole.passes(40, 56, 3) == len(calls) == calls[-1][1] == 1  # 3 small images, one call


def test_upscale_shows_a_bar_within_a_long_image(tmp_path, ckpt, capsys):
    path, _ = ckpt
    make_images(tmp_path / "in", [(40, 40)], prefix="big")
    code, err = run([tmp_path / "in", "--checkpoint", path, "--out", tmp_path / "out", "--tile", "8",
                     "--ensemble"], capsys)
    assert code == 0, err
    assert "big0.png (tiles x 8 ensemble passes)" in err and "/200" in err  # 5 x 5 tiles x 8
