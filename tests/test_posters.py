"""The poster generator (edsr_jax.data.posters, its fonts edsr_jax.data.fonts, the command
edsr_jax.posters): determinism, sizes, palette, use as HR data, CLI errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont

from edsr_jax import posters as command
from edsr_jax.data import fonts, posters
from edsr_jax.data.prepare import prepare
from edsr_jax.io import cli
from edsr_jax.io.images import read_rgb

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--size", "256x144"]


def run(argv):
    return cli.run(command.main, argv)


def pngs(folder):
    return sorted(Path(folder).glob("poster-*.png"))


@pytest.fixture(scope="module")
def seed1(tmp_path_factory):
    """Three 256x144 posters of seed 1 (built-in photographs)."""
    out = tmp_path_factory.mktemp("posters") / "s1"
    assert run(["--out", str(out), "--count", "3", "--seed", "1", *SMALL]) == 0
    return out


def test_files_sizes_and_record(seed1):
    files = pngs(seed1)
    assert [f.name for f in files] == [f"poster-s1-{i:04d}.png" for i in range(3)]
    for f in files:
        with Image.open(f) as im:
            assert im.mode == "RGB" and im.size == (256, 144)
        assert f.stat().st_mode & 0o777 == 0o666 & ~_umask()
    record = json.loads((seed1 / "posters-s1.json").read_text())
    assert record["seed"] == 1 and record["size"] == [256, 144] and record["files"] == [f.name for f in files]
    assert fonts.PILLOW_DEFAULT in [f["name"] for f in record["fonts"]]
    assert not list(seed1.glob(".tmp-*"))


def _umask():
    import os

    m = os.umask(0)
    os.umask(m)
    return m


def test_same_seed_gives_identical_files_and_count_does_not_matter(seed1, tmp_path):
    assert run(["--out", str(tmp_path), "--count", "2", "--seed", "1", *SMALL]) == 0
    again = pngs(tmp_path)
    assert len(again) == 2
    for a, b in zip(again, pngs(seed1)):
        assert a.read_bytes() == b.read_bytes()


def test_different_seeds_and_indices_differ(seed1, tmp_path):
    assert run(["--out", str(tmp_path), "--count", "3", "--seed", "2", *SMALL]) == 0
    ones = [read_rgb(f) for f in pngs(seed1)]
    twos = [read_rgb(f) for f in pngs(tmp_path)]
    for a, b in zip(ones, twos):
        assert np.mean(a != b) > 0.1
    assert np.mean(ones[0] != ones[1]) > 0.1


def test_palette_light_background_red_and_dark_ink():
    photos = [np.full((40, 60, 3), 128, np.uint8)]  # a flat mid-grey photograph: not light, red or dark
    for index in range(4):
        img = posters.render(5, index, (512, 288), photos=photos).astype(int)
        r, g, b = img[..., 0], img[..., 1], img[..., 2]
        light = (img.min(-1) >= 225).mean()
        red = ((r >= 150) & (g <= 90) & (b <= 90)).mean()
        dark = (img.max(-1) <= 120).mean()
        assert light > 0.5, light
        assert red > 0.005, red
        assert dark > 0.005, dark
        # inks are red, black or grey: no other saturated colour outside the photograph
        blue_or_green = ((b > r + 60) | (g > r + 60)).mean()
        assert blue_or_green == 0.0


def test_photos_from_a_folder_are_framed(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.dstack([np.zeros((50, 70), np.uint8), np.full((50, 70), 200, np.uint8),
                               np.zeros((50, 70), np.uint8)])).save(photos / "green.png")
    out = tmp_path / "out"
    assert run(["--out", str(out), "--count", "2", "--seed", "0", "--photos", str(photos), *SMALL]) == 0
    img = np.concatenate([read_rgb(f).reshape(-1, 3) for f in pngs(out)]).astype(int)
    green = (img[:, 1] > 150) & (img[:, 0] < 60) & (img[:, 2] < 60)
    assert green.mean() > 0.01  # the only photograph (pure green) was placed


def test_words_heldout_disjoint_and_changes_the_text():
    train, held = posters.word_list("train"), posters.word_list("heldout")
    assert train and held and not set(train) & set(held)
    photos = [np.full((40, 60, 3), 128, np.uint8)]
    a = posters.render(0, 0, (256, 144), photos=photos, words="train")
    b = posters.render(0, 0, (256, 144), photos=photos, words="heldout")
    assert np.mean(a != b) > 0.01


def test_fonts_always_include_pillow_default_and_selection_changes_pixels():
    faces = fonts.available_fonts()
    assert fonts.PILLOW_DEFAULT in [f.name for f in faces]
    for f in faces:
        font = fonts.load_font(f, 20)
        assert font.getlength("Poster") > 0
    default = fonts.select_fonts(fonts.PILLOW_DEFAULT)
    assert [f.name for f in default] == [fonts.PILLOW_DEFAULT]
    if len(faces) > 1:
        photos = [np.full((40, 60, 3), 128, np.uint8)]
        other = fonts.select_fonts(",".join(f.name for f in faces if f.name != fonts.PILLOW_DEFAULT))
        a = posters.render(0, 0, (512, 288), photos=photos, fonts=default)
        b = posters.render(0, 0, (512, 288), photos=photos, fonts=other)
        assert np.mean(a != b) > 0.001


def test_has_glyphs_tells_a_missing_glyph():
    font = ImageFont.load_default(size=24)
    assert fonts.has_glyphs(font, "Poster 2x2")
    assert not fonts.has_glyphs(font, "年度")  # Pillow's built-in font has no CJK glyphs


def test_prepare_tiles_2x2_on_posters(seed1, tmp_path):
    out = tmp_path / "data"
    summary = prepare(seed1, out, spec="nearest > jpeg(30,60)", scales=(2,), tiling={"grid": [2, 2]},
                      progress=False)
    assert summary.written == 3 * 4 * 2 and not summary.unreadable and not summary.small
    hr = sorted((out / "HR").rglob("*.png"))
    lr = sorted(p for p in out.rglob("*") if p.is_file() and "LR" in p.parent.as_posix())
    assert len(hr) == 3 * 4
    assert len(lr) == 3 * 4
    for p in hr:
        assert read_rgb(p).shape == (72, 128, 3)


def test_posters_folder_is_an_hr_only_training_source(seed1, tmp_path):
    from edsr_jax.data import sources as data

    src = data.HROnlySource(seed1, 2, "nearest > jpeg(30,60)", cache_dir=tmp_path / "cache", progress=False)
    assert len(src) == 3  # the JSON record beside the posters is not an image
    assert src.image(0).shape == (144, 256, 3)
    assert np.array_equal(src.image(0), read_rgb(pngs(seed1)[0]))


def test_never_overwrites_without_overwrite(seed1, tmp_path, capsys):
    out = tmp_path / "o"
    assert run(["--out", str(out), "--count", "1", "--seed", "1", *SMALL]) == 0
    before = (out / "poster-s1-0000.png").read_bytes()
    capsys.readouterr()
    assert run(["--out", str(out), "--count", "1", "--seed", "1", *SMALL]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--overwrite" in err
    assert run(["--out", str(out), "--count", "1", "--seed", "1", "--overwrite", *SMALL]) == 0
    assert (out / "poster-s1-0000.png").read_bytes() == before


@pytest.mark.parametrize("argv", [
    ["--size", "10x"], ["--size", "2048"], ["--size", "32x32"], ["--size", "100000x100"],
    ["--count", "-1"], ["--count", "0"], ["--count", "x"], ["--seed", "-3"],
    ["--fonts", "NoSuchFont"], [],
])
def test_bad_options_one_error_line_exit_2(argv, tmp_path, capsys):
    if argv != []:
        argv = ["--out", str(tmp_path / "o"), *SMALL, *argv]
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["missing", "empty", "file", "corrupt"])
def test_bad_photos_folder_one_error_line(kind, tmp_path, capsys):
    photos = tmp_path / "photos"
    if kind == "empty":
        photos.mkdir()
    elif kind == "file":
        photos.write_text("not a folder")
    elif kind == "corrupt":
        photos.mkdir()
        (photos / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert run(["--out", str(tmp_path / "o"), "--photos", str(photos), "--count", "1", *SMALL]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(photos) in err, err
    assert not (tmp_path / "o").exists()


def test_only_pillow_font_when_nothing_is_installed(monkeypatch):
    monkeypatch.setattr(fonts, "_font_dirs", lambda: [])
    fonts._font_index.cache_clear()
    fonts.available_fonts.cache_clear()
    try:
        assert [f.name for f in fonts.available_fonts()] == [fonts.PILLOW_DEFAULT]
        img = posters.render(0, 0, (256, 144), photos=[np.full((40, 60, 3), 128, np.uint8)])
        assert img.shape == (144, 256, 3) and img.dtype == np.uint8
    finally:
        fonts._font_index.cache_clear()
        fonts.available_fonts.cache_clear()


def test_cli_as_a_module(seed1, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edsr_jax.posters", "--out", str(tmp_path / "p"), "--count", "1",
                           "--seed", "1", *SMALL], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "p" / "poster-s1-0000.png").read_bytes() == (seed1 / "poster-s1-0000.png").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "edsr_jax.posters", "--out", str(tmp_path), "--count", "1",
                           "--size", "10x"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.startswith("error: argument --size") and proc.stderr.count("\n") == 1
    proc = subprocess.run([sys.executable, "-m", "edsr_jax.posters", "--list-fonts"], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0 and fonts.PILLOW_DEFAULT in proc.stdout
