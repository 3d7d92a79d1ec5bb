"""The evaluate CLI (published bicubic numbers on Set5, the JSON, its error handling) and the
evaluator functions it scores with."""

import json
import subprocess
import sys
import types

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, shared_dataset
from edsr_jax import evaluate, evaluator
from edsr_jax.cli import run


def write_png(path, shape=(40, 36, 3), seed=0):
    rng = np.random.default_rng(seed)
    # Smooth-ish content so bicubic does better than on pure noise.
    img = rng.integers(0, 256, size=(shape[0] // 4, shape[1] // 4, 3), dtype=np.uint8)
    Image.fromarray(img).resize((shape[1], shape[0]), Image.BILINEAR).save(path)


@pytest.fixture
def small_set(tmp_path):
    folder = tmp_path / "small"
    folder.mkdir()
    for i, name in enumerate(["a.png", "b.png", "c.png"]):
        write_png(folder / name, shape=(40 + i, 36 + 2 * i, 3), seed=i)
    return folder


def test_set5_bicubic_matches_published_numbers(tmp_path, capsys):
    set5 = shared_dataset("Set5")
    out = tmp_path / "results.json"
    assert run(evaluate.main, ["--bicubic", "--scales", "2", "4", "--json", str(out), str(set5)]) == 0
    data = json.loads(out.read_text())
    got = {r["scale"]: r for r in data["results"]}
    assert data["failed"] == [] and set(got) == {2, 4}
    # Published bicubic baselines (EDSR/RCAN tables): x2 33.66 / 0.9299, x4 28.42 / 0.8104.
    # Scripts differ in small ways (rounding Y or not, MATLAB versions), hence the tolerances.
    assert got[2]["psnr"] == pytest.approx(33.66, abs=0.03)
    assert got[4]["psnr"] == pytest.approx(28.42, abs=0.03)
    assert got[2]["ssim"] == pytest.approx(0.9299, abs=0.002)
    assert got[4]["ssim"] == pytest.approx(0.8104, abs=0.002)
    for r in got.values():
        assert r["dataset"] == "Set5" and r["method"] == "bicubic" and r["images"] == 5
        assert [p["image"] for p in r["per_image"]] == ["baby.png", "bird.png", "butterfly.png",
                                                        "head.png", "woman.png"]
        assert r["psnr"] == pytest.approx(np.mean([p["psnr"] for p in r["per_image"]]), abs=1e-12)
    table = capsys.readouterr().out
    assert "Set5" in table and "x2" in table and "33.6" in table and "28.4" in table


def test_evaluate_folder_with_a_custom_upscaler(small_set):
    calls = []

    def nearest(lr, scale):
        calls.append((lr.shape, lr.dtype, scale))
        return np.repeat(np.repeat(lr, scale, axis=0), scale, axis=1)

    r = evaluator.evaluate_folder(small_set, 2, nearest, "nearest", progress=False)
    assert r["images"] == 3 and r["failed"] == [] and r["method"] == "nearest"
    assert calls[0] == ((20, 18, 3), np.uint8, 2)
    # Odd sizes are cropped to a multiple of the scale first: 41x38 -> 40x38 -> LR 20x19.
    assert calls[1][0] == (20, 19, 3)
    bic = evaluator.evaluate_folder(small_set, 2, evaluator.bicubic_upscale, "bicubic", progress=False)
    assert bic["psnr"] > r["psnr"]  # bicubic beats nearest neighbour on smooth images


def test_score_image_is_the_papers_protocol():
    from edsr_jax.imresize import imresize
    from edsr_jax.metrics import psnr, ssim

    rng = np.random.default_rng(1)
    hr = rng.integers(0, 256, size=(36, 48, 3), dtype=np.uint8)
    p, s, lr, sr = evaluator.score_image(hr, 3, evaluator.bicubic_upscale)
    np.testing.assert_array_equal(lr, imresize(hr, 1 / 3))
    np.testing.assert_array_equal(sr, imresize(imresize(hr, 1 / 3), 3))
    assert p == psnr(sr, hr, crop_border=3) and s == ssim(sr, hr, crop_border=3)
    with pytest.raises(ValueError, match="shape"):
        evaluator.score_image(hr, 3, lambda lr, scale: lr)


def test_unreadable_image_is_listed_and_the_rest_scored(small_set, tmp_path, capsys):
    (small_set / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "r.json"
    assert run(evaluate.main, ["--bicubic", "--scales", "2", "3", "--json", str(out), str(small_set)]) == 1
    data = json.loads(out.read_text())
    assert [r["images"] for r in data["results"]] == [3, 3]
    assert len(data["failed"]) == 1 and data["failed"][0]["image"].endswith("broken.png")
    assert "broken.png" in capsys.readouterr().err


def test_refuses_to_overwrite_outputs(small_set, tmp_path):
    out = tmp_path / "r.json"
    out.write_text("keep me")
    args = ["--bicubic", "--scales", "2", "--json", str(out), str(small_set)]
    assert run(evaluate.main, args) == 2
    assert out.read_text() == "keep me"
    assert run(evaluate.main, args + ["--overwrite"]) == 0
    assert json.loads(out.read_text())["results"][0]["images"] == 3


def test_save_images_writes_panels_and_never_overwrites(small_set, tmp_path, capsys):
    save = tmp_path / "panels"
    args = ["--bicubic", "--scales", "2", "--max-images", "2", "--save-images", str(save), str(small_set)]
    assert run(evaluate.main, args) == 0
    files = sorted(p.relative_to(save).as_posix() for p in save.rglob("*.png"))
    assert files == ["small/x2/a_bicubic.png", "small/x2/b_bicubic.png"]
    panel = np.asarray(Image.open(save / "small/x2/a_bicubic.png"))
    # LR-nearest | bicubic | HR, 40x36 HR crops separated by 4-pixel gaps.
    assert panel.shape == (40, 3 * 36 + 2 * evaluator.PANEL_GAP, 3)
    before = (save / "small/x2/a_bicubic.png").stat().st_mtime_ns
    assert run(evaluate.main, args) == 2
    assert "exists" in capsys.readouterr().err
    assert (save / "small/x2/a_bicubic.png").stat().st_mtime_ns == before
    assert run(evaluate.main, args + ["--overwrite"]) == 0


class FakeUpscaler:
    """Stands in for infer.Upscaler: a x2 'model' that is bicubic plus a little blur."""

    scale = 2
    name = "fake-x2"
    loaded = []

    def __init__(self, ensemble, tile):
        self.ensemble, self.tile = ensemble, tile

    @classmethod
    def from_checkpoint(cls, path, ensemble=False, tile=None, conv_backend="auto"):
        if "bad" in str(path):
            raise ValueError("no model config in this folder")
        cls.loaded.append((str(path), ensemble, tile, conv_backend))
        return cls(ensemble, tile)

    def __call__(self, lr):
        assert lr.dtype == np.uint8 and lr.ndim == 3
        return evaluator.bicubic_upscale(lr, 2)


def test_checkpoint_path_with_a_fake_upscaler(small_set, tmp_path, monkeypatch, capsys):
    from edsr_jax import infer

    monkeypatch.setitem(sys.modules, "edsr_jax.infer", types.SimpleNamespace(
        Upscaler=FakeUpscaler, conv_backend_for=infer.conv_backend_for))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    out = tmp_path / "r.json"
    assert run(evaluate.main, ["--checkpoint", str(ckpt), "--bicubic", "--ensemble", "--tile", "32",
                               "--conv-backend", "xla", "--json", str(out), str(small_set)]) == 0
    assert FakeUpscaler.loaded[-1] == (str(ckpt), True, 32, "xla")
    results = json.loads(out.read_text())["results"]
    # The model's scale decides: only x2, for both methods.
    assert [(r["method"], r["scale"]) for r in results] == [("bicubic", 2), ("fake-x2", 2)]
    assert results[0]["psnr"] == results[1]["psnr"]
    table = capsys.readouterr().out
    assert "gain over bicubic" in table and "+0.000" in table
    # A scale the model does not have, a missing and an unloadable checkpoint: clear errors.
    assert run(evaluate.main, ["--checkpoint", str(ckpt), "--scales", "4", str(small_set)]) == 2
    assert "x2 model" in capsys.readouterr().err
    assert run(evaluate.main, ["--checkpoint", str(tmp_path / "nope"), str(small_set)]) == 2
    assert "nope: no such checkpoint" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    assert run(evaluate.main, ["--checkpoint", str(tmp_path / "bad"), str(small_set)]) == 2
    assert "bad: no model config in this folder" in capsys.readouterr().err


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "edsr_jax.evaluate", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_errors_in_a_subprocess(small_set, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (small_set / "text.png").write_text("this is not an image")
    cases = [
        (["--bicubic", str(tmp_path / "missing")], 2, "missing: no such folder"),
        (["--bicubic", str(empty)], 2, "empty: folder holds no image files"),
        (["--bicubic", "--scales", "5", str(small_set)], 2, "invalid choice: 5"),
        (["--bicubic", "--scales", "2", str(small_set)], 1, "text.png: not a readable image"),
    ]
    for args, code, message in cases:
        proc = cli(*args, cwd=ROOT)
        assert proc.returncode == code, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert "small" in proc.stdout and "3" in proc.stdout  # the good images were still scored


def test_scales_before_the_folders_are_parsed_as_scales(small_set):
    args = evaluate.parse_args(["--bicubic", "--scales", "2", "4", str(small_set)])
    assert args.scales == [2, 4] and args.datasets == [str(small_set)]


def test_spec_degrades_the_lr_deterministically_per_image(small_set):
    from edsr_jax.images import list_images, read_rgb

    seen = {}

    def record(lr, scale):
        seen.setdefault(len(seen), lr.copy())
        return np.repeat(np.repeat(lr, scale, axis=0), scale, axis=1)

    r = evaluator.evaluate_folder(small_set, 2, record, "nearest-up", spec="nearest", progress=False)
    assert r["degradation"] == "nearest" and r["images"] == len(seen) > 0
    first = evaluator.modcrop(read_rgb(list_images(small_set)[0]), 2)
    np.testing.assert_array_equal(seen[0], first[::2, ::2])  # decimation keeps the top-left pixel
    a = evaluator.evaluate_folder(small_set, 2, evaluator.bicubic_upscale, "bicubic",
                                 spec="nearest > jpeg(30,60)", progress=False)
    b = evaluator.evaluate_folder(small_set, 2, evaluator.bicubic_upscale, "bicubic",
                                 spec="nearest > jpeg(30,60)", progress=False)
    assert a["per_image"] == b["per_image"]
    plain = evaluator.evaluate_folder(small_set, 2, evaluator.bicubic_upscale, "bicubic", progress=False)
    assert a["psnr"] < plain["psnr"] and plain["degradation"] == "bicubic(2)"
