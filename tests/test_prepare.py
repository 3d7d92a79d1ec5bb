"""The dataset preparation CLI (edsr_jax.prepare) and its library (edsr_jax.data.prepare,
edsr_jax.data.manifest)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edsr_jax import prepare
from edsr_jax.data.manifest import lr_variant_spec
from edsr_jax.data.prepare import tile_boxes
from edsr_jax.degradation import degrade
from edsr_jax.io.images import read_rgb
from edsr_jax.degradation.imresize import imresize

ROOT = Path(__file__).resolve().parents[1]


def picture(h, w, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 127 + 90 * np.sin(x / 9.0)[..., None] * np.cos(y / 7.0)[..., None]
    return np.clip(base + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture
def mixed(tmp_path):
    """a.png RGB 100x130, b_gray.png, c_rgba.png, d_bad.jpg (corrupt), e_small.png (10x10)."""
    hr = tmp_path / "hr"
    hr.mkdir()
    img = picture(100, 130)
    Image.fromarray(img).save(hr / "a.png")
    Image.fromarray(img[:60, :72, 1]).save(hr / "b_gray.png")
    Image.fromarray(np.dstack([img[:50, :50], np.full((50, 50), 9, np.uint8)])).save(hr / "c_rgba.png")
    (hr / "d_bad.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    Image.fromarray(img[:10, :10]).save(hr / "e_small.png")
    return hr, img


def files(folder):
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def test_mixed_folder_then_resume(mixed, tmp_path, capsys):
    hr_dir, img = mixed
    out = tmp_path / "out"
    code = prepare.main([str(hr_dir), "--out", str(out), "--workers", "1", "--no-progress"])
    cap = capsys.readouterr()
    assert code == 1  # the corrupt file
    assert "grayscale converted to RGB" in cap.err and "RGBA image: alpha channel dropped" in cap.err
    assert "d_bad.jpg: not a readable image" in cap.err
    assert "1 unreadable, skipped" in cap.err and "1 too small, skipped" in cap.err
    assert "e_small.png: 10x10 is smaller than 12x12" in cap.err
    assert cap.out.startswith("12 written,")  # 3 images x (HR + 3 LR)

    got = files(out)
    assert set(got) == {"manifest.json"} | {f"HR/000{i}.png" for i in (1, 2, 3)} | {
        f"LR_bicubic/X{s}/000{i}x{s}.png" for i in (1, 2, 3) for s in (2, 3, 4)}
    hr = read_rgb(out / "HR/0001.png")
    np.testing.assert_array_equal(hr, img[:96, :120])  # cropped to a multiple of lcm(2,3,4)
    for s in (2, 3, 4):
        lr = read_rgb(out / f"LR_bicubic/X{s}/0001x{s}.png")
        assert lr.shape == (96 // s, 120 // s, 3)
        np.testing.assert_array_equal(lr, imresize(hr, 1 / s))
    assert read_rgb(out / "HR/0002.png").shape == (60, 72, 3)
    np.testing.assert_array_equal(read_rgb(out / "HR/0003.png"), img[:48, :48])

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"] == {"spec": "bicubic", "specs": {"2": "bicubic(2)", "3": "bicubic(3)",
                                                                "4": "bicubic(4)"},
                                    "name": "bicubic", "scales": [2, 3, 4], "tiling": None, "seed": 0}
    rec = manifest["outputs"]["0001"]
    assert rec["source"] == "a.png" and rec["tile"] == 1 and rec["box"] == [0, 0, 96, 120]
    assert rec["hr"] == "HR/0001.png"
    assert rec["lr"]["3"] == {"path": "LR_bicubic/X3/0001x3.png", "spec": "bicubic(3)",
                              "seed": [0, 1, 1, 3], "params": [{"op": "bicubic", "scale": 3}]}
    assert manifest["sources"]["b_gray.png"]["notes"][0].endswith("grayscale converted to RGB")
    assert manifest["sources"]["e_small.png"]["status"] == "small"
    assert "d_bad.jpg" not in manifest["sources"]  # tried again next time

    mtimes = {k: p.stat().st_mtime_ns for k, p in got.items() if k != "manifest.json"}
    code = prepare.main([str(hr_dir), "--out", str(out), "--workers", "1", "--no-progress"])
    cap = capsys.readouterr()
    assert code == 1 and cap.out.startswith("0 written, 0 already present")
    assert "4 of 5 images already finished" in cap.out
    assert {k: p.stat().st_mtime_ns for k, p in files(out).items() if k != "manifest.json"} == mtimes


def test_interrupted_run_recovers_without_overwriting(mixed, tmp_path, capsys):
    hr_dir, _ = mixed
    out = tmp_path / "out"
    args = [str(hr_dir), "--out", str(out), "--scales", "2", "--workers", "1", "--no-progress"]
    prepare.main(args)
    # As if killed after writing 0002's files but before recording them, and before 0003x2.
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["sources"]["b_gray.png"], manifest["outputs"]["0002"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "LR_bicubic/X2/0003x2.png").unlink()
    capsys.readouterr()
    assert prepare.main(args) == 1
    assert capsys.readouterr().out.startswith("1 written, 3 already present (2 recovered")
    # A file that differs from what the run makes is a conflict, never replaced.
    del manifest["sources"]["c_rgba.png"], manifest["outputs"]["0003"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(out / "LR_bicubic/X2/0003x2.png")
    assert prepare.main(args) == 1
    assert "0003x2.png: exists and differs" in capsys.readouterr().err
    assert read_rgb(out / "LR_bicubic/X2/0003x2.png").max() == 0
    assert prepare.main(args + ["--overwrite"]) == 1  # only the corrupt input is left
    assert read_rgb(out / "LR_bicubic/X2/0003x2.png").max() > 0


def test_refuses_other_settings_and_foreign_folders(mixed, tmp_path, capsys):
    hr_dir, _ = mixed
    out = tmp_path / "out"
    base = [str(hr_dir), "--out", str(out), "--scales", "2", "--workers", "1", "--no-progress"]
    prepare.main(base)
    before = {k: p.read_bytes() for k, p in files(out).items()}
    for extra, what in [(["--seed", "1"], "seed"), (["--tiles", "2x2"], "tiling"),
                        (["--spec", "bilinear", "--name", "bicubic"], "specs")]:
        capsys.readouterr()
        with pytest.raises(prepare.cli.UsageError, match=f"other settings \\({what}"):
            prepare.main(base + extra)
    with pytest.raises(prepare.cli.UsageError, match="other settings \\(scales"):
        prepare.main(base[:3] + ["--scales", "2", "4"] + base[5:])
    assert {k: p.read_bytes() for k, p in files(out).items()} == before
    (out / "manifest.json").unlink()
    with pytest.raises(prepare.cli.UsageError, match="holds images but .*manifest.json is missing"):
        prepare.main(base)
    assert prepare.main(base + ["--seed", "1", "--overwrite"]) == 1
    assert json.loads((out / "manifest.json").read_text())["settings"]["seed"] == 1


def test_tile_boxes():
    assert prepare.parse_tiles("2x3") == (2, 3) and prepare.parse_tiles(" 1 X 4 ") == (1, 4)
    for bad in ("2", "0x2", "2x", "axb", "2x2x2"):
        with pytest.raises(ValueError, match="ROWSxCOLS"):
            prepare.parse_tiles(bad)
    assert tile_boxes(100, 130, None, 12) == [(0, 0, 96, 120)]
    assert tile_boxes(100, 130, {"grid": [2, 2]}, 4) == [
        (0, 0, 48, 64), (0, 65, 48, 129), (50, 0, 98, 64), (50, 65, 98, 129)]
    boxes = tile_boxes(100, 130, {"size": 48, "overlap": 12}, 12)
    assert [b[:2] for b in boxes] == [(y, x) for y in (0, 36, 52) for x in (0, 36, 72, 82)]
    assert all((b[2] - b[0], b[3] - b[1]) == (48, 48) for b in boxes)
    assert tile_boxes(40, 130, {"size": 48, "overlap": 0}, 12) == []
    assert tile_boxes(20, 20, {"grid": [2, 2]}, 12) == []
    assert tile_boxes(11, 200, None, 12) == []


def test_tiles_random_spec_and_workers(tmp_path):
    hr_dir = tmp_path / "hr"
    hr_dir.mkdir()
    for i in range(3):
        Image.fromarray(picture(96 + 8 * i, 120, seed=i)).save(hr_dir / f"p{i}.png")
    spec = "blur(0.2,1.5) > bicubic > noise(0,5) > jpeg(40,90)"
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        argv = [str(hr_dir), "--out", str(out), "--scales", "2", "4", "--spec", spec,
                "--tile-size", "48", "--overlap", "8", "--workers", str(workers), "--no-progress"]
        assert prepare.main(argv) == 0
        outs.append(out)
    a, b = files(outs[0]), files(outs[1])
    assert a.keys() == b.keys()
    assert all(a[k].read_bytes() == b[k].read_bytes() for k in a)
    assert "LR_blur_bicubic_noise_jpeg/X4/0001_06x4.png" in a  # 3 x 3 tiles of image 1
    manifest = json.loads(a["manifest.json"].read_text())
    rec = manifest["outputs"]["0002_05"]
    assert rec["box"] == [40, 40, 88, 88] and rec["source"] == "p1.png"
    lr4 = rec["lr"]["4"]
    assert lr4["spec"] == "blur(0.2,1.5) > bicubic(4) > noise(0,5) > jpeg(40,90)"
    assert lr4["seed"] == [0, 2, 5, 4] and [p["op"] for p in lr4["params"]] == [
        "blur", "bicubic", "noise", "jpeg"]
    # The manifest's seed and params reproduce the file.
    hr = read_rgb(outs[0] / rec["hr"])
    np.testing.assert_array_equal(hr, picture(104, 120, seed=1)[40:88, 40:88])
    pipe = degrade.parse(lr4["spec"])
    np.testing.assert_array_equal(pipe(hr, np.random.default_rng(lr4["seed"])),
                                  read_rgb(outs[0] / lr4["path"]))


@pytest.mark.parametrize("argv, message", [
    (["{missing}", "--out", "{out}"], "no such folder"),
    (["{empty}", "--out", "{out}"], "no image files"),
    (["{hr}", "--out", "{out}", "--tiles", "2by2"], "--tiles '2by2': expected ROWSxCOLS"),
    (["{hr}", "--out", "{out}", "--spec", "bicubic > jpg(3)"], "--spec: unknown operator 'jpg'"),
    (["{hr}", "--out", "{out}", "--spec", "bicubic(4)"], "--spec: 'bicubic(4)' downscales by 4, not 2"),
    (["{hr}", "--out", "{out}", "--scales", "5"], "--scales: each must be one of 2, 3, 4"),
    (["{hr}", "--out", "{out}", "--tile-size", "50"], "--tile-size 50: must be a positive multiple"),
    (["{hr}", "--out", "{out}", "--overlap", "4"], "--overlap applies to --tile-size"),
    (["{hr}"], "the following arguments are required: --out"),
])
def test_bad_options_exit_2(tmp_path, argv, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "hr").mkdir()
    Image.fromarray(picture(24, 24)).save(tmp_path / "hr" / "a.png")
    paths = {k: str(tmp_path / k) for k in ("missing", "empty", "out", "hr")}
    proc = subprocess.run([sys.executable, "-m", "edsr_jax.prepare", *[a.format(**paths) for a in argv]],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not (tmp_path / "out" / "HR").exists()


def test_a_second_lr_variant_shares_the_hr_files(tmp_path, capsys):
    """`prepare` again with another --name adds LR_<name> next to the first LR folder: the HR
    tiles are not written again, the variant is recorded under manifest["variants"], resumes
    like the first, and trains (PairedFolderSource) like any prepared folder."""
    from edsr_jax.io import cli
    from edsr_jax.data import sources as data

    hr_dir = tmp_path / "hr"
    hr_dir.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        Image.fromarray(rng.integers(0, 256, (50, 45, 3), dtype=np.uint8)).save(hr_dir / f"p{k}.png")
    out = tmp_path / "data"
    base = [str(hr_dir), "--out", str(out), "--workers", "1", "--no-progress", "--tiles", "1x2"]
    assert cli.run(prepare.main, base + ["--scales", "2", "4"]) == 0
    hr_files = sorted((out / "HR").iterdir())
    stamps = [p.stat().st_mtime_ns for p in hr_files]
    capsys.readouterr()
    variant = base + ["--scales", "2", "--spec", "nearest > jpeg(30,60)", "--name", "poster"]
    assert cli.run(prepare.main, variant) == 0
    said = capsys.readouterr().out
    assert said.startswith("4 written, 4 already present")  # 4 LR written, the 4 HR tiles shared
    assert sorted((out / "HR").iterdir()) == hr_files and [p.stat().st_mtime_ns for p in hr_files] == stamps
    assert sorted(p.name for p in (out / "LR_poster" / "X2").iterdir()) == [
        "0001_01x2.png", "0001_02x2.png", "0002_01x2.png", "0002_02x2.png"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["name"] == "bicubic"
    v = manifest["variants"]["poster"]
    assert v["settings"]["specs"] == {"2": "nearest(2) > jpeg(30,60)"} and len(v["outputs"]) == 4
    assert v["outputs"]["0001_01"]["hr"] == "HR/0001_01.png"
    assert v["outputs"]["0001_01"]["lr"]["2"]["path"] == "LR_poster/X2/0001_01x2.png"
    # Again: nothing to do; the first variant is untouched and still resumes.
    assert cli.run(prepare.main, variant) == 0 and cli.run(prepare.main, base + ["--scales", "2", "4"]) == 0
    assert "0 written" in capsys.readouterr().out
    src = data.PairedFolderSource(out, 2, "poster", progress=False, cache_dir=tmp_path / "cache")
    lr, hr = src.image(0)
    assert hr.shape == (2 * lr.shape[0], 2 * lr.shape[1], 3)
    np.testing.assert_array_equal(hr, np.asarray(Image.open(out / "HR" / "0001_01.png"))[: hr.shape[0], : hr.shape[1]])
    # A variant whose scales do not divide the HR crop (a multiple of 4), or changed settings: refused.
    for extra, message in ((["--scales", "3", "--name", "x3"], "cropped to a multiple of 4"),
                           (["--scales", "2", "--spec", "bicubic", "--name", "poster"],
                            "LR_poster was prepared with other settings")):
        assert cli.run(prepare.main, base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("error:") == 1, err
    assert not (out / "LR_x3").exists()


def test_training_reads_the_lr_name_from_the_manifest_when_there_is_one(tmp_path):
    """data.lr_name "" (default) on a prepared folder: its only LR variant; several variants:
    one error naming them; a folder without a manifest (DIV2K as distributed): "bicubic"; an
    explicit name is kept. The run stores the resolved name (``training.datasets.resolve_lr_name``)."""
    from edsr_jax.io import cli
    from edsr_jax.training import config as config_lib
    from edsr_jax.training.datasets import resolve_lr_name

    hr = tmp_path / "hr"
    hr.mkdir()
    Image.fromarray(picture(48, 48)).save(hr / "a.png")
    out = tmp_path / "data"
    base = [str(hr), "--out", str(out), "--workers", "1", "--no-progress", "--scales", "2"]
    assert cli.run(prepare.main, base + ["--spec", "nearest > jpeg(30,60)"]) == 0

    def resolved(folder, lr_name=""):
        c = config_lib.base_config()
        c.data.source, c.data.train, c.data.lr_name = "paired", str(folder), lr_name
        note = resolve_lr_name(c)
        return c.data.lr_name, note

    name, note = resolved(out)
    assert name == "nearest_jpeg" and "only LR variant" in note
    assert resolved(out, "other") == ("other", None)
    plain = tmp_path / "div2k"
    (plain / "HR").mkdir(parents=True)
    assert resolved(plain) == ("bicubic", None)
    assert cli.run(prepare.main, base + ["--spec", "bicubic", "--name", "bic"]) == 0
    with pytest.raises(cli.UsageError, match=r"2 LR variants \(nearest_jpeg, bic\)"):
        resolved(out)
    assert resolved(out, "bic") == ("bic", None)
    hr_run = config_lib.base_config()  # LR made on the fly: the name is unused, stored as before
    resolve_lr_name(hr_run)
    assert hr_run.data.lr_name == "bicubic"


def test_lr_variant_spec_reads_each_variant_from_the_manifest(tmp_path):
    """Training asks the manifest which degradation made an LR folder (it decides the
    augmentation that keeps pairs aligned: ``training.datasets.training_spec``)."""
    rng = np.random.default_rng(0)
    (tmp_path / "hr").mkdir()
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(tmp_path / "hr" / "a.png")
    out = tmp_path / "out"
    base = [str(tmp_path / "hr"), "--out", str(out), "--scales", "2", "4", "--workers", "1", "--no-progress"]
    assert prepare.main(base) == 0
    assert prepare.main(base + ["--spec", "nearest > jpeg(30,60)", "--name", "poster"]) == 0
    assert lr_variant_spec(out, "bicubic", 2) == "bicubic(2)"
    assert lr_variant_spec(out, "poster", 4) == "nearest(4) > jpeg(30,60)"
    assert lr_variant_spec(out, "other", 2) is None
    assert lr_variant_spec(tmp_path / "hr", "bicubic", 2) is None  # no manifest
    (out / "manifest.json").write_text("{")
    with pytest.raises(ValueError, match="manifest.json: unreadable manifest"):
        lr_variant_spec(out, "poster", 2)
