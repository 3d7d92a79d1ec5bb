"""A corpus of bad and odd inputs run through every tool that reads images.

Each case has exactly one documented outcome per tool (docs/bad_inputs.md holds the same
table): ``converted`` (used, with a ``note:`` naming the file), ``used`` (used as is),
``skipped`` (a warning naming the file; the rest is still done, exit 1 for the CLIs),
``stop`` (one ``error: ...`` line naming the path, exit 2; ``DatasetError`` for the data
sources, which the trainer turns into the same). No case may raise a traceback.
"""

import io
import json
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edsr_jax import evaluate, prepare, upscale
from edsr_jax.io import cli
from edsr_jax.data import sources as data
from conftest import assert_documented_rows, torch_or_skip

SCALE = 2
PATCH = 8  # LR patch side in the data tests; HR patch 16


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(path: Path, side: int = 30000) -> None:
    """A valid PNG header claiming side x side RGB pixels, with one tiny IDAT (no big allocation)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def make_corpus(folder: Path) -> None:
    """Every per-file case of the table, one file each, plus one good image."""
    folder.mkdir(parents=True)
    good = Image.fromarray(_rgb(40, 40))
    good.save(folder / "good.png")
    (folder / "empty.png").write_bytes(b"")
    png = _encoded(Image.fromarray(_rgb(40, 40, 1)), "PNG")
    (folder / "truncated_png.png").write_bytes(png[: len(png) // 2])
    jpg = _encoded(Image.fromarray(_rgb(40, 40, 2)), "JPEG", quality=90)
    (folder / "truncated_jpeg.jpg").write_bytes(jpg[: len(jpg) // 2])
    (folder / "text.png").write_text("this is not an image\n")
    Image.fromarray(_rgb(40, 40, 3)[..., 0]).save(folder / "gray.png")
    Image.fromarray(_rgb(40, 40, 4)).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    Image.fromarray(np.dstack([_rgb(40, 40, 5), np.full((40, 40), 128, np.uint8)])).save(folder / "rgba.png")
    sixteen = (np.random.default_rng(6).integers(0, 65536, (40, 40))).astype(np.uint16)
    Image.fromarray(sixteen).save(folder / "sixteen_bit.png")
    Image.fromarray(_rgb(40, 40, 7)).convert("CMYK").save(folder / "cmyk.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    Image.fromarray(_rgb(32, 48, 8)).save(folder / "exif_rotated.jpg", quality=90, exif=exif)
    Image.fromarray(_rgb(12, 12, 9)).save(folder / "small.png")
    bomb_png(folder / "bomb.png")
    # issue 26.6: every kind of input comes out right (converted by its value range) or is refused
    ramp = np.linspace(0.0, 1.0, 40 * 40).reshape(40, 40)
    Image.fromarray(ramp.astype(np.float32), "F").save(folder / "float_gray.tif")
    Image.fromarray((ramp * 255).astype(np.float32), "F").save(folder / "float_bright.tif")
    Image.fromarray((ramp * 90000).astype(np.int32), "I").save(folder / "int32_big.tif")
    from PIL import TiffImagePlugin

    signed = TiffImagePlugin.ImageFileDirectory_v2()
    signed[339] = 2  # SampleFormat: signed integers
    Image.fromarray(_rgb(40, 40, 10)[..., 0]).save(folder / "signed8.tif", tiffinfo=signed)
    high = np.random.default_rng(11).integers(0, 65536, (40, 40, 3)).astype(">u2")
    raw = b"".join(b"\x00" + high[y].tobytes() for y in range(40))
    (folder / "sixteen_rgb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 40, 40, 16, 2, 0, 0, 0))
        + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))
    frames = [Image.fromarray(_rgb(40, 40, 12 + k)) for k in range(2)]
    frames[0].save(folder / "animated.png", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 9  # not an orientation (1-8)
    Image.fromarray(_rgb(32, 48, 14)).save(folder / "bad_exif.jpg", quality=90, exif=exif)


# case -> (what the file is, outcome per tool). The data column is HROnlySource +
# make_train_dataset with an LR patch of 8 at x2; prepare uses --scales 2; evaluate --bicubic x2.
CASES = {
    "good.png": ("40x40 RGB PNG", dict(prepare="used", data="used", upscale="used", evaluate="used")),
    "empty.png": ("0-byte file", dict(prepare="skipped", data="skipped", upscale="skipped", evaluate="skipped")),
    "truncated_png.png": ("PNG cut in half", dict(prepare="skipped", data="skipped", upscale="skipped",
                                              evaluate="skipped")),
    "truncated_jpeg.jpg": ("JPEG cut in half", dict(prepare="skipped", data="skipped", upscale="skipped",
                                               evaluate="skipped")),
    "text.png": ("text file named .png", dict(prepare="skipped", data="skipped", upscale="skipped",
                                              evaluate="skipped")),
    "gray.png": ("8-bit grayscale", dict(prepare="converted", data="converted_silently", upscale="kept",
                                         evaluate="converted")),
    "palette.png": ("palette (P mode)", dict(prepare="converted", data="converted_silently", upscale="converted",
                                             evaluate="converted")),
    "rgba.png": ("RGBA", dict(prepare="converted", data="converted_silently", upscale="kept",
                                              evaluate="converted")),
    "sixteen_bit.png": ("16-bit grayscale PNG", dict(prepare="converted", data="converted_silently", upscale="kept",
                                                     evaluate="converted")),
    "cmyk.jpg": ("CMYK JPEG", dict(prepare="converted", data="converted_silently", upscale="converted", evaluate="converted")),
    "exif_rotated.jpg": ("JPEG with EXIF orientation 6", dict(prepare="converted", data="converted_silently",
                                                             upscale="converted", evaluate="converted")),
    "small.png": ("12x12, smaller than the patch", dict(prepare="used", data="skipped", upscale="used",
                                                       evaluate="skipped")),
    "bomb.png": ("PNG header claiming 30000x30000", dict(prepare="skipped", data="skipped",
                                                        upscale="skipped", evaluate="skipped")),
    "float_gray.tif": ("32-bit float grayscale TIFF, values in [0, 1]", dict(
        prepare="converted", data="converted_silently", upscale="kept", evaluate="converted")),
    "float_bright.tif": ("32-bit float TIFF with values up to 255 (not [0, 1])", dict(
        prepare="skipped", data="skipped", upscale="skipped", evaluate="skipped")),
    "int32_big.tif": ("32-bit integer TIFF with values above 65535", dict(
        prepare="skipped", data="skipped", upscale="skipped", evaluate="skipped")),
    "signed8.tif": ("TIFF of signed 8-bit samples", dict(
        prepare="skipped", data="skipped", upscale="skipped", evaluate="skipped")),
    "sixteen_rgb.png": ("16-bit RGB PNG", dict(prepare="converted", data="converted_silently", upscale="converted",
                                              evaluate="converted")),
    "animated.png": ("animated PNG, 2 frames", dict(prepare="converted", data="converted_silently",
                                                    upscale="kept", evaluate="converted")),
    "bad_exif.jpg": ("JPEG with EXIF orientation 9 (not a valid value)", dict(
        prepare="noted", data="converted_silently", upscale="noted", evaluate="noted")),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus") / "images"
    make_corpus(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import jax
    import jax.numpy as jnp

    from edsr_jax.training import checkpoint
    from edsr_jax.nets.edsr import ModelConfig

    cfg = ModelConfig(SCALE, 2, 8)
    params = cfg.build().init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    checkpoint.save_params_checkpoint(path, cfg, params, note="bad-input tests")
    return path


def run_cli(main, argv, capsys):
    """``cli.run(main, argv)`` in this process: (exit code, stdout, stderr)."""
    code = cli.run(main, [str(a) for a in argv])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


def assert_outcomes(tool, err, corpus, used_check):
    """Check every file's documented outcome in one tool's stderr."""
    for name, (_, outcomes) in CASES.items():
        path = str(corpus / name)
        outcome = outcomes[tool]
        noted = f"note: {path}:" in err
        skipped = f"skipped: {path}:" in err or f"warning: {path}:" in err
        assert noted == (outcome in ("converted", "noted")), (tool, name, err)
        assert skipped == (outcome == "skipped"), (tool, name, err)
        assert used_check(name) == (outcome != "skipped"), (tool, name)


# ---------------------------------------------------------------- per-file cases, one run per tool


def test_prepare_corpus(corpus, tmp_path, capsys):
    out = tmp_path / "prepared"
    code, stdout, err = run_cli(prepare.main, [corpus, "--out", out, "--scales", SCALE, "--workers", 1,
                                               "--no-progress"], capsys)
    assert code == 1, err  # unreadable files: the rest is done, exit 1
    manifest = json.loads((out / "manifest.json").read_text())
    done = {s for s, v in manifest["sources"].items() if v.get("outputs")}
    assert_outcomes("prepare", err, corpus, lambda name: name in done)
    assert "unreadable, skipped" in err
    rec = manifest["sources"]["exif_rotated.jpg"]
    assert rec["size"] == [48, 32]  # turned upright: 32 wide, 48 tall


def test_training_sources_corpus(corpus, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = data.HROnlySource(corpus, SCALE, cache_dir=tmp_path / "cache", progress=False)
        ds = data.make_train_dataset(source, patch_size=PATCH, batch_size=2, seed=0)
        batch = next(iter(ds))
    text = "\n".join(str(w.message) for w in caught)
    assert batch["lr"].shape == (2, PATCH, PATCH, 3) and batch["hr"].shape == (2, 2 * PATCH, 2 * PATCH, 3)
    # Each unreadable file is named with its path; an image too small for the patch by its name.
    for name, (_, outcomes) in CASES.items():
        if outcomes["data"] == "skipped":
            key = str(corpus / name) if name != "small.png" else "small (12x12)"
            assert key in text, (name, text)
        else:
            assert str(corpus / name) not in text, (name, text)
    used = set(source.names)
    assert used == {Path(n).stem for n, (_, o) in CASES.items() if o["data"] != "skipped"} | {"small"}
    assert source.image(source.names.index("exif_rotated")).shape == (48, 32, 3)


def test_upscale_corpus(corpus, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "up"
    code, _, err = run_cli(upscale.main, [corpus, "--checkpoint", tiny_checkpoint, "--out", out], capsys)
    assert code == 1, err  # broken inputs skipped, the rest done
    assert_outcomes("upscale", err, corpus, lambda name: (out / f"{Path(name).stem}.png").exists())
    with Image.open(out / "exif_rotated.png") as im:
        assert im.size == (64, 96)  # upright 32x48 at x2


def test_evaluate_corpus(corpus, tmp_path, capsys):
    js = tmp_path / "scores.json"
    code, stdout, err = run_cli(evaluate.main, ["--bicubic", "--scales", SCALE, "--json", js, corpus], capsys)
    assert code == 1, err
    scored = {r["image"] for r in json.loads(js.read_text())["results"][0]["per_image"]}
    assert_outcomes("evaluate", err, corpus, lambda name: name in scored)
    assert "could not be scored" in err


# ---------------------------------------------------------------- folder-level cases


@pytest.mark.parametrize("case", ["empty_folder", "missing_path"])
def test_empty_or_missing_folder_stops_every_tool(tmp_path, tiny_checkpoint, capsys, case):
    folder = tmp_path / ("empty" if case == "empty_folder" else "does_not_exist")
    if case == "empty_folder":
        folder.mkdir()
    runs = {
        "prepare": (prepare.main, [folder, "--out", tmp_path / "p", "--workers", 1]),
        "upscale": (upscale.main, [folder, "--checkpoint", tiny_checkpoint, "--out", tmp_path / "u"]),
        "evaluate": (evaluate.main, ["--bicubic", folder]),
    }
    for tool, (main, argv) in runs.items():
        code, _, err = run_cli(main, argv, capsys)
        assert code == 2, (tool, err)
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(folder) in lines[0], (tool, err)
    with pytest.raises(data.DatasetError, match=str(folder)):
        data.HROnlySource(folder, SCALE, cache_dir=tmp_path / "cache", progress=False)
    with pytest.raises(data.DatasetError, match=str(folder)):
        data.PairedFolderSource(folder, SCALE, cache_dir=tmp_path / "cache", progress=False)


def _paired_root(root: Path, lr_sizes: dict) -> Path:
    """DIV2K layout: HR 32x32 images and LR images of the given (h, w) (None: missing)."""
    (root / "HR").mkdir(parents=True)
    (root / "LR_bicubic" / f"X{SCALE}").mkdir(parents=True)
    for i, (stem, hw) in enumerate(lr_sizes.items()):
        Image.fromarray(_rgb(32, 32, i)).save(root / "HR" / f"{stem}.png")
        if hw is not None:
            Image.fromarray(_rgb(*hw, i)).save(root / "LR_bicubic" / f"X{SCALE}" / f"{stem}x{SCALE}.png")
    return root


@pytest.mark.parametrize("case, sizes, message", [
    ("size_mismatch", {"0001": (16, 16), "0002": (15, 16)},
     "0002.png is 32x32 but its LR image .*0002x2.png is 16x15"),
    ("missing_lr", {"0001": (16, 16), "0002": None}, "0002x2.png: missing LR image for .*0002.png"),
])
def test_paired_source_pair_problems_stop(tmp_path, case, sizes, message):
    root = _paired_root(tmp_path / case, sizes)
    with pytest.raises(data.DatasetError, match=message):
        data.PairedFolderSource(root, SCALE, cache_dir=tmp_path / "cache", progress=False)


def test_paired_source_skips_an_unreadable_pair(tmp_path):
    root = _paired_root(tmp_path / "r", {"0001": (16, 16), "0002": (16, 16)})
    bad = root / "LR_bicubic" / f"X{SCALE}" / f"0002x{SCALE}.png"
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.warns(UserWarning, match=str(bad)):
        src = data.PairedFolderSource(root, SCALE, cache_dir=tmp_path / "cache", progress=False)
    assert src.names == ["0001"]


# ---------------------------------------------------------------- outputs stay under their folder (issue 15.5)


def _one_image(folder: Path, side: int = 24) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_rgb(side, side)).save(folder / "a.png")
    return folder / "a.png"


@pytest.mark.parametrize("option, value, message", [
    ("--suffix", "/../../escaped", "must not contain a path separator"),
    ("--suffix", "_" + "x" * 300, "longer than the file system allows"),
    ("--ext", "/../../x.png", "must not contain a path separator"),
])
def test_upscale_output_names_stay_under_out(tmp_path, tiny_checkpoint, capsys, option, value, message):
    src = _one_image(tmp_path / "in")
    code, _, err = run_cli(upscale.main, [src, "--checkpoint", tiny_checkpoint, "--out", tmp_path / "out",
                                          option, value], capsys)
    assert code == 2 and err.startswith("error: ") and message in err, err
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.png"], "nothing written"


def test_upscale_never_writes_through_a_link_to_an_input(tmp_path, tiny_checkpoint, capsys):
    src = _one_image(tmp_path / "in")
    before = src.read_bytes()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.png").symlink_to(src)
    code, _, err = run_cli(upscale.main, [src, "--checkpoint", tiny_checkpoint, "--out", tmp_path / "out",
                                          "--overwrite"], capsys)
    assert code == 2 and "is an input of this command" in err, err
    assert src.read_bytes() == before


def test_prepare_refuses_an_output_folder_that_is_the_input(tmp_path, capsys):
    hr = tmp_path / "data" / "LR_bicubic" / "X2"
    _one_image(hr)
    code, _, err = run_cli(prepare.main, [hr, "--out", tmp_path / "data", "--scales", 2, "--workers", 1], capsys)
    assert code == 2 and "is the input folder" in err, err
    code, _, err = run_cli(prepare.main, [hr, "--out", tmp_path / "p", "--name", "n" * 300, "--workers", 1], capsys)
    assert code == 2 and "--name" in err and "longer than the file system allows" in err, err


@pytest.mark.parametrize("option, value, message", [
    ("--seed", "-5", "--seed -5: must be an integer in [0, 2**63)"),
    ("--seed", "7" * 1000, "--seed 777777777777...(1000 digits): must be an integer in [0, 2**63)"),
    ("--tile-size", "2" * 1000, "--tile-size 222222222222...(1000 digits): must be at most 65536 pixels"),
    ("--tiles", "99999999999x2", "at most 1024 rows and columns"),
])
def test_prepare_refuses_senseless_numbers(tmp_path, capsys, option, value, message):
    hr = tmp_path / "hr"
    _one_image(hr)
    code, _, err = run_cli(prepare.main, [hr, "--out", tmp_path / "p", "--scales", 2, "--workers", 1,
                                          option, value], capsys)
    assert code == 2 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "p").exists()


def test_prepare_does_not_write_through_a_linked_output_folder(tmp_path, capsys):
    hr = tmp_path / "hr"
    _one_image(hr, side=40)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "HR").symlink_to(elsewhere)
    code, _, err = run_cli(prepare.main, [hr, "--out", tmp_path / "p", "--scales", 2, "--workers", 1,
                                          "--no-progress"], capsys)
    assert code == 2 and "would be written outside" in err, err
    assert not any(elsewhere.iterdir())


def test_evaluate_json_is_never_an_input(tmp_path, capsys):
    src = _one_image(tmp_path / "set")
    before = src.read_bytes()
    code, _, err = run_cli(evaluate.main, ["--bicubic", "--scales", 2, "--json", src, "--overwrite", src.parent],
                           capsys)
    assert code == 2 and "is an input of this command" in err, err
    assert src.read_bytes() == before


def test_export_never_writes_into_what_it_reads(tmp_path, tiny_checkpoint, capsys):
    from edsr_jax import export

    inside = tiny_checkpoint / "checkpoints" / "0" / "params" / "x.shlo"
    code, _, err = run_cli(export.main, ["--checkpoint", tiny_checkpoint, "--format", "stablehlo",
                                         "--out", inside, "--overwrite"], capsys)
    assert code == 2 and "lies inside the checkpoint being exported" in err, err
    assert not inside.exists()
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"not really weights")
    code, _, err = run_cli(export.main, ["--from-torch", weights, "--scale", 2, "--out", weights], capsys)
    assert code == 2 and "is an input of this command" in err, err
    assert weights.read_bytes() == b"not really weights"


def test_written_files_have_the_usual_permissions(tmp_path):
    import os

    from edsr_jax.io import outputs

    old = os.umask(0o022)
    try:
        outputs._UMASK = None
        path = outputs.atomic_write(tmp_path / "f.json", "{}\n")
    finally:
        os.umask(old)
        outputs._UMASK = None
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


# ---------------------------------------------------------------- a full disk (issue 15.6)


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs, filled to the last byte; skipped where mounting is not permitted."""
    import os
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _torch_weights(tmp_path, tiny_checkpoint, capsys):
    """An official-layout ``.pt`` of the tiny checkpoint (``export --format torch``; needs PyTorch)."""
    from edsr_jax import export

    torch_or_skip()
    torch_pt = tmp_path / "w.pt"
    assert run_cli(export.main, ["--checkpoint", tiny_checkpoint, "--format", "torch", "--out", torch_pt],
                   capsys)[0] == 0
    return torch_pt


def test_full_disk_is_one_line_in_every_writer(full_disk, tmp_path, tiny_checkpoint, capsys):
    from edsr_jax import export

    src = _one_image(tmp_path / "in", side=40)
    runs = {
        "export stablehlo": (export.main, ["--checkpoint", tiny_checkpoint, "--format", "stablehlo",
                                           "--out", full_disk / "m.shlo"], full_disk / "m.shlo"),
        "prepare": (prepare.main, [src.parent, "--out", full_disk / "p", "--scales", 2, "--workers", 1,
                                   "--no-progress"], full_disk / "p" / "HR" / "0001.png"),
        "upscale": (upscale.main, [src, "--checkpoint", tiny_checkpoint, "--out", full_disk / "u"],
                    full_disk / "u" / "a.png"),
        "evaluate --json": (evaluate.main, ["--bicubic", "--scales", 2, "--json", full_disk / "s.json",
                                            src.parent], full_disk / "s.json"),
        "evaluate --save-images": (evaluate.main, ["--bicubic", "--scales", 2, "--save-images", full_disk / "panels",
                                                   src.parent], full_disk / "panels" / "in" / "x2" / "a_bicubic.png"),
    }
    for what, (main, argv, target) in runs.items():
        code, _, err = run_cli(main, argv, capsys)
        lines = [ln for ln in err.strip().splitlines() if ln.startswith("error: ")]
        assert code == 2 and len(lines) == 1 and "no space left on device" in lines[0], (what, err)
        assert not target.exists(), what
    leftovers = [p.name for p in full_disk.rglob("*") if p.name.startswith(".tmp")]
    assert not leftovers, leftovers


def test_full_disk_in_a_torch_import_is_one_line_and_the_retry_works(full_disk, tmp_path, tiny_checkpoint,
                                                                     capsys):
    from edsr_jax import export

    torch_pt = _torch_weights(tmp_path, tiny_checkpoint, capsys)
    argv = ["--from-torch", torch_pt, "--scale", 2, "--out", full_disk / "imp"]
    code, _, err = run_cli(export.main, argv, capsys)
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and "no space left on device" in lines[0], err
    assert not (full_disk / "imp").exists()
    assert not [p.name for p in full_disk.rglob("*") if p.name.startswith(".tmp")]
    # Room again: the retry of the import is not blocked by anything the failure left.
    (full_disk / "filler").unlink()
    assert run_cli(export.main, argv, capsys)[0] == 0


# ---------------------------------------------------------------- validation at the door (issue 15.7)


@pytest.mark.parametrize("override, message", [
    ("optim.lr=inf", "config.optim.lr = inf: must be a finite number"),
    ("optim.lr=nan", "config.optim.lr = nan"),
    ("model.res_scale=inf", "config.model.res_scale = inf: must be a finite number"),
    ("optim.eps=-1e-8", "config.optim.eps = -1e-08: must be > 0"),
    ("train.keep_best=-1", "config.train.keep_best = -1: must be an integer in [0,"),
    ("train.keep_last=-2", "config.train.keep_last = -2"),
    ("data.val_max_images=-3", "config.data.val_max_images = -3: must be an integer in [0,"),
    ("train.steps=" + "9" * 1000, "config.train.steps = 999"),
    ("train.seed=" + "1" * 20, "config.train.seed = 111"),
    ("data.val_spec=   ", "config.data.val_spec = '   ': is blank"),
    ("data.spec=jpeg(", "config.data.spec = 'jpeg(': not a valid degradation spec"),
    ("data.cache_dir=CACHE_FILE", "config.data.cache_dir = "),
])
def test_train_refuses_senseless_values_before_anything_is_written(tmp_path, capsys, override, message):
    from conftest import ROOT
    from edsr_jax import train

    (tmp_path / "file").write_text("x")
    override = override.replace("CACHE_FILE", str(tmp_path / "file"))
    workdir = tmp_path / "w"
    code, _, err = run_cli(train.main, ["--config", ROOT / "tests" / "configs" / "tiny.py", "--workdir", workdir,
                                        f"--config.{override}"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not workdir.exists()


# ---------------------------------------------------------------- the documented table

WORDS = {
    "used": "used",
    "converted": "converted, `note:` naming the file",
    "converted_silently": "converted (no note)",
    "kept": "kept: the output has the input's kind (README, upscale)",
    "skipped": "skipped, warning naming the file",
    "noted": "used as stored, `note:` naming the file",
}
FOLDER_CASES = [
    ("empty folder", "stop: `error:` naming the folder, exit 2", "stop: DatasetError naming the folder",
     *(["stop: `error:` naming the folder, exit 2"] * 2)),
    ("path that does not exist", "stop: `error:` naming the path, exit 2", "stop: DatasetError naming the path",
     *(["stop: `error:` naming the path, exit 2"] * 2)),
    ("LR/HR pair whose sizes disagree (paired source)", "n/a", "stop: DatasetError naming both files",
     "n/a", "pair skipped, warning naming both files, exit 1"),
    ("missing LR file (paired source)", "n/a", "stop: DatasetError naming the missing LR and its HR",
     "n/a", "pair skipped, warning naming the missing LR and its HR, exit 1"),
    ("unreadable LR file (paired source)", "n/a", "pair skipped, warning naming the file", "n/a",
     "pair skipped, warning naming the file, exit 1"),
]


def table_rows() -> list[str]:
    """The markdown rows of docs/bad_inputs.md, built from CASES and FOLDER_CASES."""
    rows = []
    for name, (what, o) in CASES.items():
        rows.append(f"| {what} (`{name}`) | " + " | ".join(
            WORDS[o[t]] for t in ("prepare", "data", "upscale", "evaluate")) + " |")
    for row in FOLDER_CASES:
        rows.append("| " + " | ".join(row) + " |")
    return rows


def test_documented_table_matches_the_tests():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "bad_inputs.md").read_text()
    for row in table_rows():
        assert row in doc, f"docs/bad_inputs.md lacks the row:\n{row}"


def test_prepare_corpus_in_a_real_process_finishes_without_traceback(corpus, tmp_path):
    """The same corpus through ``python -m edsr_jax.prepare`` (2 spawned workers), with a timeout."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    r = subprocess.run([sys.executable, "-m", "edsr_jax.prepare", str(corpus), "--out", str(tmp_path / "p"),
                        "--scales", "2", "--workers", "2", "--no-progress"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    for name, (_, o) in CASES.items():
        assert (f"skipped: {corpus / name}:" in r.stderr) == (o["prepare"] == "skipped"), name


# ---------------------------------------------------------------- one CLI convention

CLIS = ("train", "evaluate", "upscale", "prepare", "export", "inference.stablehlo_runner")


@pytest.mark.slow
def test_every_cli_reports_a_bad_option_in_one_error_line_and_helps_with_exit_0():
    """``python -m edsr_jax.X --no-such-option`` and ``--help`` for all five CLIs and the
    StableHLO runner, as real
    processes (so that nothing else, e.g. a library warning, reaches stderr): a bad option is
    exactly one ``error: ...`` line naming it and exit 2; ``--help`` is usage on stdout, an
    empty stderr and exit 0."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    required = {"train": ["--config", "experiments/quickstart.py", "--workdir", "w"], "evaluate": ["Set5"],
                "upscale": ["a.png", "--checkpoint", "c", "--out", "o"], "prepare": ["hr", "--out", "o"],
                "export": ["--checkpoint", "c", "--out", "o"], "inference.stablehlo_runner": ["m", "i", "o"]}
    runs = {(tool, case): subprocess.Popen(
        [sys.executable, "-m", f"edsr_jax.{tool}", *args], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for tool in CLIS
        for case, args in (("bad", [*required[tool], "--no-such-option", "7"]), ("help", ["--help"]))}
    for (tool, case), proc in runs.items():
        out, err = proc.communicate(timeout=120)
        if case == "bad":
            assert proc.returncode == 2, (tool, err)
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0] == "error: unrecognized arguments: --no-such-option 7", (tool, err)
            assert out == "", (tool, out)
        else:
            assert proc.returncode == 0, (tool, err)
            assert out.startswith(f"usage: python -m edsr_jax.{tool}") and err == "", (tool, out, err)


@pytest.mark.parametrize("tool, argv, message", [
    ("train", ["--workdir", "w"], "the following arguments are required: --config"),
    ("train", ["--config", "experiments/quickstart.py", "--workdir", "w", "extra"], "unrecognized arguments: extra"),
    ("train", ["--config", "no/such/config.py", "--workdir", "w"], "--config no/such/config.py: no such file"),
    ("train", ["--config", "README.md", "--workdir", "w"], "--config README.md: SyntaxError"),
    ("train", ["--config", "experiments/quickstart.py", "--workdir", "w", "--config.optim.lr=abc"],
     "flag --config.optim.lr=abc: could not convert string to float: 'abc'"),
    ("train", ["--config", "experiments/quickstart.py", "--workdir", "w", "--config.optim.lrr", "1"],
     "unknown config field --config.optim.lrr: config.optim has no field 'lrr' (did you mean 'lr'?)"),
    ("train", ["--config", "experiments/quickstart.py", "--workdir", "w", "--num_processes", "two"],
     "argument --num_processes: invalid int value: 'two'"),
    ("evaluate", ["--scales", "x", "Set5"], "argument --scales: expected scales from 2 3 4, got 'x'"),
    ("evaluate", ["--bicubic"], "the following arguments are required: DATASET_DIR"),
    ("evaluate", ["--tile", "0", "Set5"], "argument --tile: must be at least 1, got 0"),
    ("upscale", ["a.png", "--model", "photo-x2", "--checkpoint", "c"],
     "argument --checkpoint: not allowed with argument --model"),
    ("upscale", ["a.png", "--checkpoint", "c", "--out", "o", "--dtype", "float16"],
     "argument --dtype: invalid choice: 'float16'"),
    ("prepare", ["hr", "--out", "o", "--scales", "two"], "argument --scales: invalid int value: 'two'"),
    ("upscale", ["a.png", "--checkpoint", "c", "--out", "o", "--conv-backend", "mkl"],
     "--conv-backend must be one of ('auto', 'xla', 'onednn'), got 'mkl'"),
    ("upscale", ["a.png", "--checkpoint", "c", "--out", "o", "--dtype", "bfloat16", "--conv-backend", "onednn"],
     "--conv-backend 'onednn' cannot be used: it computes in float32, --dtype is bfloat16"),
    ("evaluate", ["--bicubic", "--conv-backend", "xla", "Set5"], "--conv-backend applies to a model"),
    ("evaluate", ["--checkpoint", "c", "--conv-backend", "cudnn", "Set5"], "--conv-backend must be one of"),
    ("export", ["--out", "x"], "one of the arguments --checkpoint --model --from-torch is required"),
    ("export", ["--checkpoint", "c", "--from-torch", "w.pt", "--out", "x"], "not allowed with argument"),
])
def test_option_errors_are_one_error_line_exit_2(tool, argv, message, capsys):
    """The parsers' own errors (``cli.ArgumentParser``) in-process: one line, exit 2."""
    import importlib

    from conftest import ROOT

    main = importlib.import_module(f"edsr_jax.{tool}").main
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        code, out, err = run_cli(main, argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (tool, argv, err)
    assert message in lines[0], (tool, argv, err)


def test_train_config_overrides_are_applied_in_either_form():
    from edsr_jax import train

    args, config = train.parse_args(["--config.optim.lr", "3e-4", "--config", "experiments/quickstart.py",
                                     "--workdir", "w", "--config.train.steps=-5", "--cpu_collectives"])
    assert (config.optim.lr, config.train.steps) == (3e-4, -5)
    assert args.workdir == "w" and args.cpu_collectives and not args.distributed


def test_run_maps_help_and_ctrl_c_to_their_exit_codes(capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    assert cli.run(interrupted, []) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    assert cli.run(upscale.main, ["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: python -m edsr_jax.upscale")


# ---------------------------------------------------------------- names and paths too long (issue 26.5)


def _long_paths(tmp_path: Path) -> dict[str, Path]:
    """A name of 300 bytes (over NAME_MAX, 255) and a path of ~5,000 bytes (over PATH_MAX, 4,096)."""
    return {"name": tmp_path / ("n" * 300), "path": tmp_path.joinpath(*["p" * 200] * 25)}


@pytest.mark.parametrize("which", ["name", "path"])
def test_too_long_names_and_paths_are_one_line_in_every_command(tmp_path, tiny_checkpoint, capsys, which):
    """Every command given a path the file system cannot hold, as input or as output: exit 2, one
    ``error:`` line naming the path (long names cut) and the limit, no traceback, nothing written."""
    from conftest import ROOT
    from edsr_jax import export, train

    src = _one_image(tmp_path / "in", side=24)
    long = _long_paths(tmp_path)[which]
    limit = "(255)" if which == "name" else "(4096)"
    runs = {
        "prepare --out": (prepare.main, [src.parent, "--out", long, "--scales", 2, "--workers", 1]),
        "prepare HR_DIR": (prepare.main, [long, "--out", tmp_path / "p", "--scales", 2, "--workers", 1]),
        "upscale --out": (upscale.main, [src, "--checkpoint", tiny_checkpoint, "--out", long]),
        "upscale INPUT": (upscale.main, [f"{long}.png", "--checkpoint", tiny_checkpoint, "--out", tmp_path / "u"]),
        "evaluate --json": (evaluate.main, ["--bicubic", "--scales", 2, "--json", f"{long}.json", src.parent]),
        "evaluate --save-images": (evaluate.main, ["--bicubic", "--scales", 2, "--save-images", long, src.parent]),
        "evaluate DATASET_DIR": (evaluate.main, ["--bicubic", "--scales", 2, long]),
        "export --out": (export.main, ["--checkpoint", tiny_checkpoint, "--out", f"{long}.stablehlo"]),
        "export --checkpoint": (export.main, ["--checkpoint", long, "--out", tmp_path / "m.stablehlo"]),
        "export --from-torch": (export.main, ["--from-torch", f"{long}.pt", "--out", tmp_path / "imp"]),
        "train --workdir": (train.main, ["--config", ROOT / "tests" / "configs" / "tiny.py", "--workdir", long]),
        "train --config": (train.main, ["--config", f"{long}.py", "--workdir", tmp_path / "w"]),
    }
    for what, (main, argv) in runs.items():
        code, out, err = run_cli(main, argv, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (what, err)
        assert "longer than the file system allows " + limit in lines[0] and len(lines[0]) < 400, (what, err)
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert written == ["in", "in/a.png"], written


def test_name_too_long_message_names_the_part_and_the_limit():
    msg = cli.name_too_long("/tmp/" + "x" * 300 + "/a.png")
    assert msg.startswith("/tmp/xxxxxxxxxxxxxxxxxxxxxxxx...(300 bytes)/a.png: its name 'xxxxxxxxxxxxxxxxxxxxxxxx'... "
                          "is 300 bytes, longer than the file system allows (255)"), msg
    msg = cli.name_too_long("/".join(["y" * 100] * 50))
    assert "...(5049 bytes): the path is 5049 bytes, longer than the file system allows (4096)" in msg, msg

    def raises(argv):
        raise OSError(36, "File name too long", "z" * 400)

    def other(argv):
        raise OSError(13, "Permission denied", "f")

    assert cli.run(raises, []) == 2
    with pytest.raises(PermissionError):  # only ENAMETOOLONG is a usage error; the others stay errors
        cli.run(other, [])


# Rows of docs/bad_inputs.md's "Round three" table (issue 26), one per class of case tested here
# and in tests/test_reliability.py.
ROUND_THREE_EVENTS = [
    "a path with a name over 255 bytes or over 4,096 bytes in all, as input or output of `train`, `prepare`, "
    "`export`, `evaluate`, `upscale`",
]


def test_documented_round_three_table_matches_the_tests():
    assert_documented_rows(ROUND_THREE_EVENTS)
ROUND_THREE_EVENTS.append(
    "two writers into one output (two `upscale` runs into one `--out`, `evaluate --json / --save-images`, `export`, "
    "`export --from-torch`, `prepare`): a file created by another process after this one checked")
ROUND_THREE_EVENTS += [
    "`prepare` stopped by SIGTERM or Ctrl-C",
    "`prepare` killed (`kill -9`)",
    "a `prepare` worker killed (or out of memory)",
    "a second `prepare` on an output folder in use (e.g. adding another LR variant meanwhile)",
    "SIGTERM to any command",
    "`prepare DIR --out DIR` (the output folder is the input folder)",
]


def test_prepare_refuses_its_input_folder_as_output(tmp_path, capsys):
    """``prepare DIR --out DIR`` would mix the prepared set into its sources (and a second run would
    take HR/ for an input's neighbour): refused like ``upscale``'s --out, in any spelling of DIR."""
    hr = tmp_path / "hr"
    _one_image(hr, side=40)
    for out in (hr, tmp_path / "hr" / ".." / "hr", Path(str(hr) + "/")):
        code, _, err = run_cli(prepare.main, [hr, "--out", out, "--scales", 2, "--workers", 1], capsys)
        assert code == 2 and err.startswith(f"error: --out {out} is the input folder {hr}"), err
    assert sorted(p.name for p in hr.iterdir()) == ["a.png"]


# ---------------------------------------------------------------- imported weights checked (issue 26.3)


def _torch_state_dicts():
    """Official-layout state_dicts of tiny models: EDSR x4 (two upsampler stages) and x3, 1 block,
    8 features; MDSR x2 x3 x4, 1 block (tests/torch_edsr.py and torch_mdsr.py, EDSR-PyTorch's)."""
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "tests"))
    torch = torch_or_skip()
    from torch_edsr import EDSR
    from torch_mdsr import MDSR

    torch.manual_seed(0)
    return {"edsr_x4": EDSR(4, 1, 8).state_dict(), "edsr_x3": EDSR(3, 1, 8).state_dict(),
            "mdsr": MDSR(1, 8).state_dict()}


def _load(sd):
    from edsr_jax.inference import torch_convert

    if any(k.startswith("pre_process.") for k in sd):
        return torch_convert.mdsr_from_state_dict(sd)
    return torch_convert.from_state_dict(sd, torch_convert.infer_config(sd).scale)


@pytest.mark.parametrize("model", ["edsr_x4", "edsr_x3", "mdsr"])
def test_every_tensor_and_key_is_checked_against_the_architecture(model):
    """For every key of the state_dict in turn: that tensor one wider in its last axis or (a conv)
    with one input channel more, that key removed (the fixed mean shifts may be absent), an extra
    key: one-line ConversionError naming it, before anything is converted."""
    torch_or_skip()
    import torch

    from edsr_jax.inference import torch_convert

    sd = _torch_state_dicts()[model]
    _load(sd)  # the untouched one converts
    for key, value in sd.items():
        shapes = [(*value.shape[:-1], value.shape[-1] + 1)]  # a wider last axis
        if value.ndim == 4:
            shapes.append((value.shape[0], value.shape[1] + 1, *value.shape[2:]))  # more input channels
        for shape in shapes:
            with pytest.raises(torch_convert.ConversionError) as e:
                _load(dict(sd, **{key: torch.zeros(shape)}))
            msg = str(e.value)
            assert "\n" not in msg and f"wrong shape (1): {key} {shape} (expected" in msg, (key, msg)
        if key not in torch_convert.MEAN_SHIFT_KEYS:
            gone = {k: v for k, v in sd.items() if k != key}
            with pytest.raises(torch_convert.ConversionError) as e:
                _load(gone)
            msg = str(e.value)  # "missing (1): KEY", or for the keys that tell the architecture
            assert "\n" not in msg and (msg.endswith(f"missing (1): {key}") or f"'{key}'" in msg
                                        or f"lacks {key}" in msg), (key, msg)
    with pytest.raises(torch_convert.ConversionError, match=r"unexpected \(1\): body.0.body.1.weight$"):
        _load(dict(sd, **{"body.0.body.1.weight": sd["head.0.bias"]}))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_weights_are_accepted_and_converted(dtype):
    """A correct state_dict stored in float16 / bfloat16 (its mean shifts rounded to that precision)
    converts to float32 weights equal to the stored values exactly; a mean shift that differs by
    more than the format's rounding is still refused."""
    torch_or_skip()
    import torch

    from edsr_jax.inference import torch_convert

    for model, sd in _torch_state_dicts().items():
        half = {k: v.to(getattr(torch, dtype)) for k, v in sd.items()}
        config, params = _load(half)
        assert config == _load(sd)[0]
        assert {a.dtype for a in jax_leaves(params)} == {np.dtype(np.float32)}
        back = (torch_convert.mdsr_to_state_dict(params, config) if model == "mdsr"
                else torch_convert.to_state_dict(params, config))
        for k, v in half.items():  # every weight is the stored half value, exactly
            if k not in torch_convert.MEAN_SHIFT_KEYS:
                assert np.array_equal(back[k], v.float().numpy()), (model, k)
        shifted = dict(half, **{"sub_mean.bias": half["sub_mean.bias"] * 0.98})  # 2 grey levels off
        with pytest.raises(torch_convert.ConversionError, match="sub_mean.bias is not the standard DIV2K mean"):
            _load(shifted)


def jax_leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


def test_export_from_torch_refuses_a_misshapen_tensor_in_one_line_and_imports_half_weights(tmp_path, capsys):
    torch_or_skip()
    import torch

    from edsr_jax import export

    sd = _torch_state_dicts()["edsr_x4"]
    bad = dict(sd, **{"body.0.body.2.weight": torch.zeros(8, 4, 3, 3)})
    torch.save(bad, tmp_path / "bad.pt")
    code, _, err = run_cli(export.main, ["--from-torch", tmp_path / "bad.pt", "--out", tmp_path / "imp"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0] == (f"error: {tmp_path / 'bad.pt'}: the state_dict does not fit EDSR x4, 1 blocks, 8 features: "
                        "wrong shape (1): body.0.body.2.weight (8, 4, 3, 3) (expected (8, 8, 3, 3))"), err
    assert not (tmp_path / "imp").exists()
    torch.save({k: v.half() for k, v in sd.items()}, tmp_path / "half.pt")
    code, out, err = run_cli(export.main, ["--from-torch", tmp_path / "half.pt", "--out", tmp_path / "imp"], capsys)
    assert code == 0 and "wrote checkpoint" in out, err
ROUND_THREE_EVENTS += [
    "`export --from-torch` weights with a tensor of the wrong shape, a missing or an unexpected key",
    "`export --from-torch` weights stored in float16 or bfloat16",
]


# ---------------------------------------------------------------- every kind of input (issue 26.6)


def test_wide_and_odd_samples_are_read_by_their_value_range_or_refused(tmp_path):
    """``read_rgb`` / ``read_image`` on every kind of sample that is not 8-bit: the values are
    those of the file mapped by its range (float [0, 1] x 255, 16-bit / 257, 16-bit colour by its
    high byte as Pillow decodes it), a note naming the file says so; values without such a
    meaning are one ImageError naming the file and why (never clipped, wrapped or darkened)."""
    from PIL import TiffImagePlugin

    from edsr_jax.io.images import ImageError, read_image, read_rgb

    ramp = np.linspace(0.0, 1.0, 24 * 20).reshape(24, 20)
    Image.fromarray(ramp.astype(np.float32), "F").save(tmp_path / "f.tif")
    v16 = (ramp * 65535).round().astype(np.uint16)
    Image.fromarray(v16).save(tmp_path / "g16.png")
    Image.fromarray(v16.astype(np.int32), "I").save(tmp_path / "i32.tif")
    got = read_rgb(tmp_path / "f.tif", notes := [])
    np.testing.assert_array_equal(got, np.repeat(np.round(ramp * 255).astype(np.uint8)[..., None], 3, 2))
    assert len(notes) == 1 and notes[0].startswith(f"{tmp_path / 'f.tif'}: F (32-bit float [0, 1])")
    d = read_image(tmp_path / "f.tif")
    assert d.kind == "F" and d.pixels.dtype == np.float32
    np.testing.assert_allclose(d.pixels[..., 0], ramp * 255, rtol=1e-6)  # float32 of value x 255
    for name in ("g16.png", "i32.tif"):
        np.testing.assert_array_equal(read_rgb(tmp_path / name)[..., 0], np.round(v16 / 257.0).astype(np.uint8))
        d = read_image(tmp_path / name)
        assert d.kind == "L16", name
        np.testing.assert_allclose(d.pixels[..., 0], v16 / 257.0, rtol=1e-6)
    refused = {
        "f_bright.tif": (Image.fromarray((ramp * 255).astype(np.float32), "F"), {},
                         "32-bit float image with values in [0, 255]: only [0, 1] is read as black to white"),
        "f_negative.tif": (Image.fromarray((ramp - 0.5).astype(np.float32), "F"), {},
                           "32-bit float image with values in [-0.5, 0.5]"),
        "f_nan.tif": (Image.fromarray(np.where(ramp > 0.5, np.nan, ramp).astype(np.float32), "F"), {},
                      "32-bit float image with non-finite values (NaN or infinity)"),
        "i_big.tif": (Image.fromarray((ramp * 70000).astype(np.int32), "I"), {},
                      "I integer image with values in [0, 70000]: outside the 16-bit range [0, 65535]"),
        "i_negative.tif": (Image.fromarray((ramp * 200 - 100).astype(np.int32), "I"), {},
                           "I integer image with values in [-100, 100]: outside the 16-bit range"),
    }
    signed = TiffImagePlugin.ImageFileDirectory_v2()
    signed[339] = 2
    refused["signed8.tif"] = (Image.fromarray((ramp * 255).astype(np.uint8)), {"tiffinfo": signed},
                              "signed 8-bit samples (TIFF SampleFormat 2), which Pillow would read as unsigned")
    for name, (img, kw, message) in refused.items():
        img.save(tmp_path / name, **kw)
        for read in (read_rgb, read_image):
            with pytest.raises(ImageError) as e:
                read(tmp_path / name)
            assert str(e.value).startswith(f"{tmp_path / name}: {message}"), (name, str(e.value))


def test_float_grayscale_upscales_to_float_or_the_nearest_kind(tmp_path, tiny_checkpoint, capsys):
    """A 32-bit float TIFF in [0, 1] comes out as a 32-bit float TIFF (``--ext same``): the model
    run on value x 255, its three channels averaged, / 255, clipped to [0, 1] (float32: exact);
    as PNG (no float) it is 16-bit grayscale, value x 65535 rounded, with a note."""
    from edsr_jax.inference.infer import Upscaler

    ramp = np.linspace(0.0, 1.0, 24 * 20).reshape(24, 20).astype(np.float32)
    (tmp_path / "in").mkdir()
    Image.fromarray(ramp, "F").save(tmp_path / "in" / "f.tif")
    code, _, err = run_cli(upscale.main, [tmp_path / "in" / "f.tif", "--checkpoint", tiny_checkpoint,
                                          "--out", tmp_path / "same", "--ext", "same"], capsys)
    assert code == 0 and "note:" not in err, err
    model = Upscaler.from_checkpoint(tiny_checkpoint)
    gray = np.mean(np.asarray(model.predict(np.repeat((ramp * np.float32(255))[..., None], 3, 2)), np.float64), -1)
    want = np.clip(gray / 255.0, 0.0, 1.0).astype(np.float32)
    with Image.open(tmp_path / "same" / "f.tif") as im:
        assert im.mode == "F" and im.size == (40, 48)
        np.testing.assert_array_equal(np.asarray(im), want)
    code, _, err = run_cli(upscale.main, [tmp_path / "in" / "f.tif", "--checkpoint", tiny_checkpoint,
                                          "--out", tmp_path / "png"], capsys)
    assert code == 0 and "PNG holds no 32-bit float grayscale: written as 16-bit grayscale" in err, err
    with Image.open(tmp_path / "png" / "f.png") as im:
        assert im.mode.startswith("I;16")
        np.testing.assert_array_equal(np.asarray(im), np.floor(want.astype(np.float64) * 65535 + 0.5))


@pytest.mark.parametrize("value", [0, 9, 255, 65535])
def test_an_invalid_exif_orientation_is_never_reported_as_applied(tmp_path, value, tiny_checkpoint, capsys):
    """EXIF orientations outside 1-8: the pixels are used as stored and the note says the value was
    ignored (it used to say "turned upright"); upscale's output carries no orientation tag."""
    from edsr_jax.io.images import read_image

    arr = _rgb(20, 30, 3)
    exif = Image.Exif()
    exif[0x0112] = value
    Image.fromarray(arr).save(tmp_path / "e.png", exif=exif)
    d = read_image(tmp_path / "e.png", notes := [])
    np.testing.assert_array_equal(d.pixels, arr)
    assert notes == [f"{tmp_path / 'e.png'}: EXIF orientation {value} is not a valid value (1-8): ignored, "
                     "the pixels are used as stored"]
    code, _, err = run_cli(upscale.main, [tmp_path / "e.png", "--checkpoint", tiny_checkpoint, "--out",
                                          tmp_path / "u"], capsys)
    assert code == 0 and "turned upright" not in err and "is not a valid value" in err, err
    with Image.open(tmp_path / "u" / "e.png") as im:
        assert im.size == (60, 40) and 0x0112 not in im.getexif()


@pytest.mark.parametrize("fmt", ["png", "tif", "webp"])
def test_animated_and_multipage_files_use_the_first_frame_with_a_note(tmp_path, fmt):
    from edsr_jax.io.images import read_image, read_rgb

    frames = [_rgb(16, 16, k) for k in range(3)]
    path = tmp_path / f"a.{fmt}"
    Image.fromarray(frames[0]).save(path, save_all=True, append_images=[Image.fromarray(f) for f in frames[1:]],
                                    **({"lossless": True} if fmt == "webp" else {}))
    for read in (read_rgb, read_image):
        got = read(path, notes := [])
        np.testing.assert_array_equal(got if read is read_rgb else got.pixels, frames[0])
        assert notes == [f"{path}: 3 frames (an animation or a multi-page file): the first frame is used"]


def test_an_identical_image_scores_infinite_psnr_in_valid_json(tmp_path, capsys):
    """A constant image is its own bicubic upscaling: PSNR is infinite. ``--json`` stays strict JSON
    (a parser that rejects Infinity and NaN reads it): the value is the string "inf"."""
    folder = tmp_path / "flat"
    folder.mkdir()
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(folder / "flat.png")
    code, out, err = run_cli(evaluate.main, ["--bicubic", "--scales", 2, "--json", tmp_path / "s.json", folder],
                             capsys)
    assert code == 0 and " inf " in out, (out, err)

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    data = json.loads((tmp_path / "s.json").read_text(), parse_constant=refuse)
    r = data["results"][0]
    assert r["psnr"] == "inf" and r["per_image"][0]["psnr"] == "inf" and r["ssim"] == 1.0
    assert float(r["psnr"]) == float("inf")
    from edsr_jax.io import outputs

    assert outputs.json_text({"a": [float("inf"), -float("inf"), float("nan"), 1.5]}) == \
        '{"a": ["inf", "-inf", null, 1.5]}'


@pytest.mark.parametrize("tool, argv, name", [
    ("upscale", ["a.png", "--model", ""], "--model"),
    ("upscale", ["", "--checkpoint", "c"], "INPUT"),
    ("upscale", ["a.png", "--model", "photo-x2", "--out", " "], "--out"),
    ("evaluate", ["--model", "", "Set5"], "--model"),
    ("evaluate", ["--bicubic", "--spec", "", "Set5"], "--spec"),
    ("evaluate", ["--bicubic", ""], "DATASET_DIR"),
    ("evaluate", ["--bicubic", "--json", "", "Set5"], "--json"),
    ("export", ["--model", "", "--out", "m.stablehlo"], "--model"),
    ("export", ["--checkpoint", "c", "--out", ""], "--out"),
    ("prepare", ["hr", "--out", "o", "--spec", ""], "--spec"),
    ("prepare", ["hr", "--out", "o", "--name", "  "], "--name"),
    ("prepare", ["", "--out", "o"], "HR_DIR"),
    ("train", ["--config", "", "--workdir", "w"], "--config"),
    ("train", ["--config", "experiments/quickstart.py", "--workdir", ""], "--workdir"),
    ("diagnose", ["", "--json", "d.json"], "LR_DIR"),
])
def test_blank_values_are_errors_in_every_command(tool, argv, name, capsys, tmp_path):
    """A blank value is an error for every option and argument (``cli.ArgumentParser``): ``--model ''``
    used to run the default model, ``--spec ''`` bicubic, an empty INPUT the current folder."""
    import importlib

    from conftest import ROOT

    main = importlib.import_module(f"edsr_jax.{tool}").main
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        code, out, err = run_cli(main, argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and lines == [f"error: argument {name}: empty value {argv[argv.index(name) + 1] if name.startswith('--') else ''!r}"], err


def test_upscale_suffix_may_be_blank(tmp_path, tiny_checkpoint, capsys):
    src = _one_image(tmp_path / "in")
    code, _, err = run_cli(upscale.main, [src, "--checkpoint", tiny_checkpoint, "--out", tmp_path / "u",
                                          "--suffix", ""], capsys)
    assert code == 0 and (tmp_path / "u" / "a.png").exists(), err


def test_diagnose_says_why_each_file_could_not_be_diagnosed(tmp_path, capsys):
    from edsr_jax import diagnose

    folder = tmp_path / "lr"
    folder.mkdir()
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    Image.fromarray(_rgb(8, 8)).save(folder / "tiny.png")
    Image.fromarray(np.full((40, 40), 700, np.uint16)).save(folder / "deep.png")
    Image.fromarray(np.linspace(0, 1, 1600).reshape(40, 40).astype(np.float32), "F").save(folder / "f.tif")
    why = {"empty.png": "empty file (0 bytes)", "text.jpg": "not a readable image",
           "tiny.png": "8x8 is too small to diagnose", "deep.png": "16-bit image", "f.tif": "32-bit float grayscale image"}
    code, _, err = run_cli(diagnose.main, [folder], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "none of its 5 image files could be diagnosed: " in lines[0], err
    shown = sorted(why)[:4]  # the first four reasons, in name order, then "..."
    for name in shown:
        assert f"{folder / name}: {why[name]}" in lines[0], (name, err)
    assert lines[0].endswith("; ..."), err
    Image.fromarray(_rgb(48, 48, 5)).save(folder / "good.png")  # one usable: every other file is listed
    code, out, err = run_cli(diagnose.main, [folder], capsys)
    assert code == 1, err
    for name, reason in why.items():
        assert f"skipped: {folder / name}: {reason}" in out, (name, out)


def test_train_config_errors_name_the_override_at_fault(tmp_path, capsys):
    from conftest import ROOT
    from edsr_jax import train

    tiny = ROOT / "tests" / "configs" / "tiny.py"
    (tmp_path / "noget.py").write_text("def config():\n    return {}\n")
    runs = [
        (["--config", tmp_path / "noget.py"], f"error: --config {tmp_path / 'noget.py'}: defines no get_config()"),
        (["--config", tiny, "--config.optim.lr=1e-4", "--config.train.stepz=3", "--config.data.seed=1"],
         "error: unknown config field --config.train.stepz: config.train has no field 'stepz' (did you mean 'steps'?)"),
        (["--config", tiny, "--config.optim.lr", "1e-4", "--config.nosuch.field", "1"],
         "error: unknown config field --config.nosuch.field: config has no field 'nosuch'"),
    ]
    for argv, message in runs:
        code, _, err = run_cli(train.main, [*argv, "--workdir", tmp_path / "w"], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith(message), (argv, err)
    assert not (tmp_path / "w").exists()


ROUND_THREE_EVENTS += [  # tested in tests/test_video.py
    "a video input (mp4, mkv, mov, webm, avi) where PyAV is not installed",
    "a video that cannot be opened, or stops decoding before its end (truncated, a damaged packet)",
    "`upscale` of a video stopped by SIGTERM or Ctrl-C",
    "`--codec` / `--crf` that do not fit the video's container, or given without a video input",
]
ROUND_THREE_EVENTS += [
    "an image that is not 8-bit: 32-bit float, 16-bit or 32-bit integer, signed, 16-bit colour (all readers)",
    "an animated or multi-page file (PNG, TIFF, WebP)",
    "an EXIF orientation that is not one of 1-8",
    "`evaluate --json` with an image scored against itself (infinite PSNR); `diagnose --json`",
    "a blank value (`--model ''`, `--spec ''`, an empty INPUT, `--out ' '`) in any command",
    "`diagnose` on a folder where some or no file can be diagnosed",
    "`train --config FILE` without `get_config`; an override of an unknown field",
]


@pytest.mark.parametrize("kind", ["RGB", "L", "L16", "F"])
def test_tiff_inputs_upscale_to_tiff(tmp_path, tiny_checkpoint, capsys, kind):
    """A TIFF's EXIF as Pillow reads it is the file's own directory (size, bits per sample,
    strips): carried over, it made every TIFF-to-TIFF upscale fail ("codec configuration error").
    Only its metadata is kept now (here: Software), for every kind."""
    arrays = {"RGB": _rgb(12, 10), "L": _rgb(12, 10)[..., 0],
              "L16": np.random.default_rng(1).integers(0, 65536, (12, 10)).astype(np.uint16),
              "F": np.random.default_rng(2).random((12, 10)).astype(np.float32)}
    exif = Image.Exif()
    exif[305] = "scanner 1.0"  # Software
    (tmp_path / "in").mkdir()
    Image.fromarray(arrays[kind]).save(tmp_path / "in" / "t.tif", exif=exif)
    code, _, err = run_cli(upscale.main, [tmp_path / "in" / "t.tif", "--checkpoint", tiny_checkpoint, "--out",
                                          tmp_path / "u", "--ext", "same"], capsys)
    assert code == 0, err
    with Image.open(tmp_path / "u" / "t.tif") as im:
        assert im.size == (20, 24) and im.getexif().get(305) == "scanner 1.0"
        assert im.mode == {"RGB": "RGB", "L": "L", "L16": "I;16", "F": "F"}[kind]
