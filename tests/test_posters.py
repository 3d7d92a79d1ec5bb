"""The poster generator (edsr_jax.data.posters, its fonts edsr_jax.data.fonts, the command
edsr_jax.posters): determinism, sizes, palette, use as HR data, CLI errors, Chinese posters.

The Chinese posters' tests need a CJK font (``cjk_face_or_skip``): elsewhere they skip with one
line naming the package; CI installs it and sets ``EDSR_JAX_REQUIRE_CJK=1``, which fails them
instead of skipping."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont

from edsr_jax import posters as command
from edsr_jax.data import fonts, poster_text, posters
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
    train, held = poster_text.word_list("train"), poster_text.word_list("heldout")
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
    ["--fonts", "NoSuchFont"], [], ["--cjk-share", "1.5"], ["--cjk-share", "-0.1"], ["--cjk-share", "x"],
    ["--cjk-share", "nan"], ["--fonts", "pillow-default", "--cjk-share", "0.5"],
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


# -- Chinese posters ------------------------------------------------------------------------------
CJK_SKIP = f"Chinese poster test: no CJK font installed; to run these, install {fonts.CJK_PACKAGE}"


def cjk_face_or_skip():
    """The first installed CJK face, or skip with one line naming the package to install
    (``EDSR_JAX_REQUIRE_CJK=1``, set by .ci/run, fails instead)."""
    faces = [f for f in fonts.available_fonts() if f.cjk]
    if not faces:
        if os.environ.get("EDSR_JAX_REQUIRE_CJK") == "1":
            pytest.fail(f"EDSR_JAX_REQUIRE_CJK=1 but no CJK font is installed; install {fonts.CJK_PACKAGE}",
                        pytrace=False)
        pytest.skip(CJK_SKIP)
    return faces[0]


def is_cjk(ch):
    return "\u4e00" <= ch <= "\u9fff"


def test_cjk_font_check_skips_with_the_package_to_install(monkeypatch):
    monkeypatch.setattr(fonts, "_font_dirs", lambda: [])
    fonts._font_index.cache_clear()
    fonts.available_fonts.cache_clear()
    try:
        monkeypatch.delenv("EDSR_JAX_REQUIRE_CJK", raising=False)
        with pytest.raises(pytest.skip.Exception, match="install Debian fonts-wqy-microhei"):
            cjk_face_or_skip()
        monkeypatch.setenv("EDSR_JAX_REQUIRE_CJK", "1")
        with pytest.raises(pytest.fail.Exception, match="fonts-wqy-microhei"):
            cjk_face_or_skip()
        with pytest.raises(ValueError, match="fonts-wqy-microhei"):  # the generator says it too
            posters.render(0, 0, (256, 144), photos=[np.full((40, 60, 3), 128, np.uint8)], cjk_share=0.5)
    finally:
        fonts._font_index.cache_clear()
        fonts.available_fonts.cache_clear()


def test_chinese_texts_train_and_heldout_disjoint_and_chinese():
    train, held = poster_text.text_source("train", True), poster_text.text_source("heldout", True)
    assert len(train.words) >= 50 and len(held.words) >= 50
    assert len(train.sentences) >= 40 and len(held.sentences) >= 40
    assert not set(train.words) & set(held.words) and not set(train.sentences) & set(held.sentences)
    assert len(set(train.words)) == len(train.words) and len(set(held.words)) == len(held.words)
    for line in train.words + train.sentences + held.words + held.sentences:
        letters = [c for c in line if c.isalpha()]
        assert letters and all(is_cjk(c) for c in letters), line
    assert all(s.endswith("。") for s in train.sentences + held.sentences)
    assert poster_text.text_source("train", False).words == poster_text.word_list("train")


def test_chinese_share_is_drawn_from_the_seed_and_index():
    lots = [posters.is_chinese(7, i, 0.5) for i in range(400)]
    assert 0.4 < np.mean(lots) < 0.6
    assert lots == [posters.is_chinese(7, i, 0.5) for i in range(400)]
    assert lots != [posters.is_chinese(8, i, 0.5) for i in range(400)]
    for i in range(100):  # a larger share only adds Chinese posters
        assert posters.is_chinese(7, i, 0.3) <= posters.is_chinese(7, i, 0.6)
        assert not posters.is_chinese(7, i, 0.0) and posters.is_chinese(7, i, 1.0)
    with pytest.raises(ValueError, match="cjk_share"):
        posters.is_chinese(7, 0, 1.5)


def test_chinese_share_reproducible_and_recorded(tmp_path):
    face = cjk_face_or_skip()
    names = f"{fonts.PILLOW_DEFAULT},{face.name}"
    out = [tmp_path / "a", tmp_path / "b"]
    for o in out:
        assert run(["--out", str(o), "--count", "6", "--seed", "3", "--fonts", names, "--cjk-share", "0.5",
                    *SMALL]) == 0
    for a, b in zip(pngs(out[0]), pngs(out[1])):
        assert a.read_bytes() == b.read_bytes()
    record = json.loads((out[0] / "posters-s3.json").read_text())
    assert record["cjk_share"] == 0.5
    assert record["chinese"] == [poster_name for i, poster_name in enumerate(record["files"])
                                 if posters.is_chinese(3, i, 0.5)]
    assert 0 < len(record["chinese"]) < 6  # seed 3: both kinds among six


def test_chinese_poster_draws_chinese_text_with_its_glyphs():
    face = cjk_face_or_skip()
    photos = [np.full((40, 60, 3), 128, np.uint8)]
    faces = [fonts.select_fonts(fonts.PILLOW_DEFAULT)[0], face]
    held = poster_text.text_source("heldout", True)
    train = poster_text.text_source("train", True)
    for index in range(3):
        texts = []
        img = posters.render(1001, index, (1024, 576), photos=photos, fonts=faces, words="heldout",
                             cjk_share=1.0, texts=texts)
        letters = [c for t in texts for c in t if c.isalpha()]
        assert sum(map(is_cjk, letters)) >= 150 and all(is_cjk(c) for c in letters), texts
        assert texts[0] and all(is_cjk(c) for c in texts[0])  # the title
        assert any(t in held.sentences for t in texts)  # a held-out sentence, whole
        drawn = "".join(texts)
        assert not any(s in drawn for s in train.sentences)
        font = fonts.load_font(face, 24)
        assert all(fonts.has_glyphs(font, t) for t in texts)
        latin = posters.render(1001, index, (1024, 576), photos=photos, fonts=faces, words="heldout")
        assert np.mean(img != latin) > 0.05
        # red and dark ink on a light page, as on the Latin posters
        r, g, b = (img[..., k].astype(int) for k in range(3))
        assert ((r >= 150) & (g <= 90) & (b <= 90)).mean() > 0.005 and (img.max(-1) <= 120).mean() > 0.005


def test_latin_posters_do_not_depend_on_a_cjk_font_among_the_fonts():
    face = cjk_face_or_skip()
    photos = [np.full((40, 60, 3), 128, np.uint8)]
    latin = fonts.select_fonts(fonts.PILLOW_DEFAULT)
    index = next(i for i in range(50) if not posters.is_chinese(2, i, 0.5))
    texts = []
    a = posters.render(2, index, (512, 288), photos=photos, fonts=latin)
    b = posters.render(2, index, (512, 288), photos=photos, fonts=[*latin, face], cjk_share=0.5, texts=texts)
    assert np.array_equal(a, b)
    assert texts and not any(is_cjk(c) for t in texts for c in t)


def test_default_share_is_half_with_a_cjk_font_and_none_without(tmp_path, capsys, monkeypatch):
    face = cjk_face_or_skip()
    assert run(["--out", str(tmp_path / "a"), "--count", "1", "--fonts", f"{fonts.PILLOW_DEFAULT},{face.name}",
                *SMALL]) == 0
    assert json.loads((tmp_path / "a" / "posters-s0.json").read_text())["cjk_share"] == 0.5
    assert "Chinese share 0.5" in capsys.readouterr().err
    monkeypatch.setattr(fonts, "_font_dirs", lambda: [])
    fonts._font_index.cache_clear()
    fonts.available_fonts.cache_clear()
    try:
        assert run(["--out", str(tmp_path / "b"), "--count", "1", *SMALL]) == 0
        assert json.loads((tmp_path / "b" / "posters-s0.json").read_text())["cjk_share"] == 0.0
        err = capsys.readouterr().err
        assert "Chinese share 0: no CJK font installed, install Debian fonts-wqy-microhei" in err, err
    finally:
        fonts._font_index.cache_clear()
        fonts.available_fonts.cache_clear()
