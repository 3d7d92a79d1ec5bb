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
from edsr_jax import evaluate
from edsr_jax.evaluation import evaluator
from edsr_jax.io.cli import run


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
    from edsr_jax.degradation.imresize import imresize
    from edsr_jax.evaluation.metrics import psnr, ssim

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


def test_save_panels_writes_panels_and_never_overwrites(small_set, tmp_path, capsys):
    save = tmp_path / "panels"
    args = ["--bicubic", "--scales", "2", "--max-images", "2", "--save-panels", str(save), str(small_set)]
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
    mdsr_scale = None  # an EDSR (infer.Upscaler: the MDSR scale chosen, or None)
    loaded = []

    def __init__(self, ensemble, tile):
        self.ensemble, self.tile = ensemble, tile

    @classmethod
    def from_checkpoint(cls, path, ensemble=False, tile=None, conv_backend="auto", any_scale=False):
        if "bad" in str(path):
            raise ValueError("no model config in this folder")
        cls.loaded.append((str(path), ensemble, tile, conv_backend))
        return cls(ensemble, tile)

    def __call__(self, lr):
        assert lr.dtype == np.uint8 and lr.ndim == 3
        return evaluator.bicubic_upscale(lr, 2)


def test_checkpoint_path_with_a_fake_upscaler(small_set, tmp_path, monkeypatch, capsys):
    from edsr_jax.inference import infer

    monkeypatch.setitem(sys.modules, "edsr_jax.inference.infer", types.SimpleNamespace(
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
    from edsr_jax.io.images import list_images, read_rgb

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


def _smooth(shape, seed):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(shape[0] // 4, shape[1] // 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(img).resize((shape[1], shape[0]), Image.BILINEAR))


def make_benchmark(root, sizes=((41, 37), (36, 44)), scales=(2,), lr_root=None, naming="{stem}x{s}"):
    """``root/HR/imgK.png`` with pre-made LR ``LR_bicubic/X<s>/imgKx<s>.png`` (nearest
    decimation, so it differs from the LR evaluate would make); ``lr_root`` puts the LR
    folders elsewhere (DIV2K's layout). Returns ``{(name, s): (lr, hr_cropped)}``."""
    from edsr_jax.io.images import write_image

    hr_dir = root / "HR" if lr_root is None else root
    lr_root = root / "LR_bicubic" if lr_root is None else lr_root
    made = {}
    for k, (h, w) in enumerate(sizes):
        hr = _smooth((h, w), k)
        write_image(hr_dir / f"img{k}.png", hr)
        for s in scales:
            lr = hr[: h // s * s: s, : w // s * s: s]
            write_image(lr_root / f"X{s}" / (naming.format(stem=f"img{k}", s=s) + ".png"), lr)
            made[(f"img{k}.png", s)] = (lr, hr[: h // s * s, : w // s * s])
    return made


def test_premade_lr_as_distributed_is_scored_as_given(tmp_path, capsys):
    from edsr_jax.evaluation.metrics import psnr, ssim

    made = make_benchmark(tmp_path / "Bench", scales=(2, 3))
    out = tmp_path / "r.json"
    assert run(evaluate.main, ["--bicubic", "--scales", "2", "3", "--json", str(out),
                               str(tmp_path / "Bench")]) == 0
    err = capsys.readouterr().err
    assert "Bench: LR images as distributed" in err and "LR_bicubic/X2" in err
    data = json.loads(out.read_text())
    for r in data["results"]:
        s = r["scale"]
        assert r["dataset"] == "Bench" and r["images"] == 2
        assert r["protocol"]["lr_source"] == "files" and r["protocol"]["lr_dir"].endswith(f"LR_bicubic/X{s}")
        assert r["protocol"]["channel"] == "Y" and r["protocol"]["crop_border"] == s
        for p in r["per_image"]:
            lr, hr = made[(p["image"], s)]
            sr = evaluator.bicubic_upscale(lr, s)
            assert p["psnr"] == psnr(sr, hr, crop_border=s) and p["ssim"] == ssim(sr, hr, crop_border=s)
    # --make-lr ignores the files: MATLAB bicubic LR from HR, a different (higher) score.
    assert run(evaluate.main, ["--bicubic", "--scales", "2", "--make-lr", "--json", str(out), "--overwrite",
                               str(tmp_path / "Bench")]) == 0
    made_lr = json.loads(out.read_text())["results"][0]
    assert made_lr["protocol"]["lr_source"] == "matlab_bicubic" and made_lr["protocol"]["lr_dir"] is None
    assert made_lr["psnr"] > data["results"][0]["psnr"]


def test_div2k_layout_with_lr_dir_and_the_errors_of_pairs(tmp_path, capsys):
    hr_dir, lr_root = tmp_path / "DIV2K_valid_HR", tmp_path / "DIV2K_valid_LR_bicubic"
    made = make_benchmark(hr_dir, lr_root=lr_root, sizes=((40, 40), (44, 36), (30, 30), (32, 32)))
    out = tmp_path / "r.json"
    assert run(evaluate.main, ["--bicubic", "--scales", "2", "--lr-dir", str(lr_root), "--json", str(out),
                               str(hr_dir)]) == 0
    r = json.loads(out.read_text())["results"][0]
    assert r["images"] == 4 and r["dataset"] == "DIV2K_valid_HR" and r["protocol"]["lr_source"] == "files"
    # A missing, a wrong-size and an unreadable LR file: that image is skipped naming the files (exit 1).
    (lr_root / "X2" / "img0x2.png").unlink()
    (lr_root / "X2" / "img3x2.png").write_bytes(b"not an image")
    from edsr_jax.io.images import write_image
    write_image(lr_root / "X2" / "img1x2.png", made[("img1.png", 2)][0][:10], overwrite=True)
    capsys.readouterr()
    assert run(evaluate.main, ["--bicubic", "--scales", "2", "--lr-dir", str(lr_root), str(hr_dir)]) == 1
    err = capsys.readouterr().err
    assert "img0x2.png: no LR image for" in err and "img0.png" in err
    assert "img1.png is 36x44 but its LR image" in err and "img1x2.png is 18x10" in err
    assert "skipped: " in err and "img3x2.png: not a readable image" in err
    # Usage errors: no X4 folder, --lr-dir count, --lr-dir with --make-lr, bad baseline.
    cases = [
        (["--bicubic", "--scales", "4", "--lr-dir", str(lr_root), str(hr_dir)], "no X4 folder"),
        (["--bicubic", "--lr-dir", str(lr_root), "--lr-dir", str(lr_root), str(hr_dir)], "one per DATASET_DIR"),
        (["--bicubic", "--make-lr", "--lr-dir", str(lr_root), str(hr_dir)], "choose one"),
        (["--baselines", "lanczos", str(hr_dir)], "invalid choice: 'lanczos'"),
    ]
    for args, message in cases:
        assert run(evaluate.main, args) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("error:") == 1, (args, err)


def test_baselines_side_by_side_and_rgb(small_set, tmp_path, capsys):
    from edsr_jax.io.images import read_rgb
    from edsr_jax.evaluation.metrics import psnr

    out = tmp_path / "r.json"
    args = evaluate.parse_args(["--baselines", "nearest", "bilinear", str(small_set)])
    assert args.baselines == ["nearest", "bilinear"] and args.datasets == [str(small_set)]
    assert evaluate.parse_args(["--bicubic", "--baselines", "nearest", "x"]).baselines == ["nearest", "bicubic"]
    both = evaluate.parse_args(["--baselines", "nearest", "A", "--scales", "2", "B"])
    assert (both.baselines, both.scales, sorted(both.datasets)) == (["nearest"], [2], ["A", "B"])
    assert run(evaluate.main, ["--baselines", "nearest", "bilinear", "bicubic", "--scales", "2",
                               "--json", str(out), str(small_set)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["method"] for r in results] == ["nearest", "bilinear", "bicubic"]
    assert results[0]["psnr"] < results[1]["psnr"] < results[2]["psnr"]  # smooth images
    table = capsys.readouterr().out
    assert "nearest" in table and "bilinear" in table and "gain" not in table
    assert run(evaluate.main, ["--bicubic", "--rgb", "--scales", "2", "--json", str(out), "--overwrite",
                               str(small_set)]) == 0
    r = json.loads(out.read_text())["results"][0]
    assert r["protocol"]["channel"] == "RGB" and "PSNR RGB" in capsys.readouterr().out
    hr = evaluator.modcrop(read_rgb(small_set / "a.png"), 2)
    sr = evaluator.bicubic_upscale(evaluator.imresize(hr, 0.5), 2)
    assert r["per_image"][0]["psnr"] == psnr(sr, hr, crop_border=2, y_channel=False)
    assert r["per_image"][0]["psnr"] != psnr(sr, hr, crop_border=2)


def test_save_images_writes_full_sr_outputs_named_by_method_and_step(small_set, tmp_path, monkeypatch):
    from edsr_jax.inference import infer

    class Stepped(FakeUpscaler):
        step = 1234

    monkeypatch.setitem(sys.modules, "edsr_jax.inference.infer", types.SimpleNamespace(
        Upscaler=Stepped, conv_backend_for=infer.conv_backend_for))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    save = tmp_path / "sr"
    assert run(evaluate.main, ["--checkpoint", str(ckpt), "--baselines", "nearest", "--max-images", "1",
                               "--save-images", str(save), str(small_set)]) == 0
    files = sorted(p.relative_to(save).as_posix() for p in save.rglob("*.png"))
    assert files == ["small/x2/a_fake-x2_step1234.png", "small/x2/a_nearest.png"]
    from edsr_jax.io.images import read_rgb
    lr = evaluator.imresize(evaluator.modcrop(read_rgb(small_set / "a.png"), 2), 0.5)
    np.testing.assert_array_equal(read_rgb(save / files[1]), evaluator.nearest_upscale(lr, 2))
    assert read_rgb(save / files[0]).shape == (40, 36, 3)


def test_premade_lr_of_set5_scores_like_our_resize(tmp_path):
    """Set5 laid out as distributed (HR/ + LR_bicubic/X2 made by MATLAB-compatible imresize)
    scores exactly what LR made on the fly scores: the two paths agree."""
    from edsr_jax.io.images import list_images, read_rgb, write_image

    set5 = shared_dataset("Set5")
    bench = tmp_path / "Set5"
    for p in list_images(set5):
        hr = read_rgb(p)
        write_image(bench / "HR" / p.name, hr)
        write_image(bench / "LR_bicubic" / "X2" / f"{p.stem}x2.png", evaluator.imresize(evaluator.modcrop(hr, 2), 0.5))
    a = evaluator.evaluate_folder(set5, 2, evaluator.bicubic_upscale, "bicubic", progress=False)
    name, hr_dir, roots = evaluator.benchmark_layout(bench)
    assert (name, hr_dir, roots) == ("Set5", bench / "HR", [bench / "LR_bicubic"])
    b = evaluator.evaluate_folder(hr_dir, 2, evaluator.bicubic_upscale, "bicubic", progress=False,
                                  lr_dir=evaluator.lr_folder(roots[0], 2), dataset=name)
    assert a["per_image"] == b["per_image"] and b["protocol"]["lr_source"] == "files"


def test_basicsr_layout_gtmod12_and_lrbicx(tmp_path):
    """BasicSR's ``Set5/GTmod12/baby.png`` + ``Set5/LRbicx2/baby.png`` (LR named like its HR)."""
    made = make_benchmark(tmp_path / "Bench", sizes=((40, 36),), scales=(2, 4), naming="{stem}")
    (tmp_path / "Bench" / "HR").rename(tmp_path / "Bench" / "GTmod12")
    for s in (2, 4):
        (tmp_path / "Bench" / "LR_bicubic" / f"X{s}").rename(tmp_path / "Bench" / f"LRbicx{s}")
    name, hr_dir, roots = evaluator.benchmark_layout(tmp_path / "Bench")
    assert (name, hr_dir) == ("Bench", tmp_path / "Bench" / "GTmod12")
    assert [evaluator.lr_folder(roots[0], s) for s in (2, 4)] == [tmp_path / "Bench" / "LRbicx2",
                                                                 tmp_path / "Bench" / "LRbicx4"]
    out = tmp_path / "r.json"
    assert run(evaluate.main, ["--bicubic", "--scales", "2", "4", "--json", str(out), str(tmp_path / "Bench")]) == 0
    for r in json.loads(out.read_text())["results"]:
        lr, hr = made[("img0.png", r["scale"])]
        assert r["protocol"]["lr_dir"].endswith(f"LRbicx{r['scale']}")
        assert r["psnr"] == evaluator.score_image(hr, r["scale"], evaluator.bicubic_upscale, lr)[0]
