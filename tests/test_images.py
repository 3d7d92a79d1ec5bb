"""read_rgb / write_image / list_images on odd and broken files made in tmp_path."""

import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from edsr_jax.io.images import ImageError, is_image_file, list_images, read_rgb, write_image


def rgb(shape=(12, 16, 3), seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def blocks(h=32, w=48):
    """Flat 16x16 colour blocks: survive JPEG well enough to check geometry."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:16, :16] = (255, 0, 0)
    img[:16, 16:32] = (0, 255, 0)
    img[16:, :16] = (0, 0, 255)
    img[16:, 32:] = (255, 255, 255)
    return img


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_rgb_png_is_exact_and_jpeg_close(tmp_path):
    img = rgb()
    Image.fromarray(img).save(tmp_path / "a.png")
    out = read_rgb(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (12, 16, 3)
    np.testing.assert_array_equal(out, img)
    Image.fromarray(blocks()).save(tmp_path / "a.jpg", quality=95)
    jpg = read_rgb(tmp_path / "a.jpg")
    assert jpg.shape == (32, 48, 3)
    # Block interiors, away from JPEG ringing at the edges: within a few levels.
    np.testing.assert_allclose(jpg[4:12, 4:12].astype(int), np.broadcast_to([255, 0, 0], (8, 8, 3)), atol=8)


def test_grayscale_palette_and_alpha(tmp_path):
    gray = rgb((10, 9, 1))[..., 0]
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    notes = []
    out = read_rgb(tmp_path / "g.png", notes)
    assert out.shape == (10, 9, 3) and all((out[..., c] == gray).all() for c in range(3))
    assert notes and "grayscale" in notes[0] and "g.png" in notes[0]

    pal = Image.fromarray(blocks()).quantize(colors=4)
    pal.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    np.testing.assert_array_equal(read_rgb(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))

    rgba = np.dstack([rgb(), np.full((12, 16), 7, np.uint8)])  # nearly transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    notes = []
    out = read_rgb(tmp_path / "t.png", notes)
    np.testing.assert_array_equal(out, rgba[..., :3])  # alpha dropped, colour kept as stored
    assert "alpha" in notes[0]


def test_16_bit_png_is_scaled_to_8_bit(tmp_path):
    values = np.array([[0, 257, 65535], [32896, 128, 65280]], np.uint16)  # 257*k -> k
    Image.fromarray(values).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    notes = []
    out = read_rgb(tmp_path / "d.png", notes)
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[..., 0], [[0, 1, 255], [128, 0, 254]])
    assert "16-bit" in notes[0]


def test_cmyk_jpeg(tmp_path):
    Image.fromarray(blocks()).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    notes = []
    out = read_rgb(tmp_path / "c.jpg", notes)
    assert out.shape == (32, 48, 3) and "CMYK" in notes[0]
    np.testing.assert_allclose(out[20:28, 36:44].astype(int), 255, atol=8)  # white stays white


def test_exif_rotated_jpeg_comes_back_upright(tmp_path):
    # Orientation 6 means "rotate 90 degrees clockwise to display": a camera held
    # upright stores a landscape buffer. read_rgb must return what a viewer shows.
    stored = blocks(32, 48)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "r.jpg", quality=95, exif=exif)
    notes = []
    out = read_rgb(tmp_path / "r.jpg", notes)
    upright = np.rot90(stored, k=-1)  # clockwise
    assert out.shape == upright.shape == (48, 32, 3)
    # Compare the interiors of the 16x16 blocks (JPEG chroma subsampling blurs their edges).
    for by in range(3):
        for bx in range(2):
            box = (slice(16 * by + 4, 16 * by + 12), slice(16 * bx + 4, 16 * bx + 12))
            np.testing.assert_allclose(out[box].astype(int), upright[box].astype(int), atol=12)
    # The stored top-left red block is now at the top-right.
    assert out[4, 28, 0] > 200 and out[4, 28, 1] < 60
    assert "EXIF orientation 6" in notes[0]


@pytest.mark.parametrize("kind", ["empty", "truncated_png", "truncated_jpeg", "text_png", "missing"])
def test_broken_files_raise_image_error_naming_the_file(tmp_path, kind):
    img = rgb((40, 40, 3))
    path = tmp_path / f"{kind}.{'jpg' if 'jpeg' in kind else 'png'}"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind.startswith("truncated"):
        Image.fromarray(img).save(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text_png":
        path.write_text("this is a text file, not a picture\n")
    with pytest.raises(ImageError) as info:
        read_rgb(path)
    assert str(path) in str(info.value)
    expected = {"empty": "empty file", "truncated_png": "truncated", "truncated_jpeg": "truncated",
                "text_png": "not a readable image", "missing": "no such file"}[kind]
    assert expected in str(info.value)


@pytest.mark.parametrize("side", [30000, 20000])
def test_huge_header_is_refused_fast_without_decoding(tmp_path, side, recwarn):
    # A valid PNG whose IHDR claims side x side RGB pixels but whose data is 10 bytes.
    # Both are over MAX_PIXELS (16384^2): a clear ImageError giving the size, in milliseconds,
    # with no giant allocation (only the header is parsed) and no Pillow warning.
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + png_chunk(b"IEND", b""))
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    start = time.perf_counter()
    with pytest.raises(ImageError, match="over the limit") as info:
        read_rgb(path)
    assert time.perf_counter() - start < 1.0
    assert str(path) in str(info.value) and f"{side}x{side}" in str(info.value)
    assert not [w for w in recwarn if "DecompressionBomb" in w.category.__name__]


def test_large_but_allowed_header_gives_no_pillow_bomb_warning(tmp_path, recwarn):
    # 10000 x 10000 is under MAX_PIXELS: no DecompressionBombWarning (Pillow's default would
    # warn above 89 Mpx); the file is then reported as truncated since its data is missing.
    ihdr = struct.pack(">IIBBBBB", 10000, 10000, 8, 0, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + png_chunk(b"IEND", b""))
    (tmp_path / "big.png").write_bytes(data)
    with pytest.raises(ImageError, match="truncated"):
        read_rgb(tmp_path / "big.png")
    assert not [w for w in recwarn if "DecompressionBomb" in w.category.__name__]


def test_write_image_refuses_to_overwrite(tmp_path):
    path = tmp_path / "sub" / "out.png"
    img = rgb()
    assert write_image(path, img) == path
    np.testing.assert_array_equal(read_rgb(path), img)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        write_image(path, rgb(seed=1))
    assert path.read_bytes() == before
    write_image(path, rgb(seed=1), overwrite=True)
    np.testing.assert_array_equal(read_rgb(path), rgb(seed=1))
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.png"]  # no temporary left behind
    with pytest.raises(TypeError, match="uint8"):
        write_image(tmp_path / "f.png", img.astype(np.float32))


def test_list_images(tmp_path):
    for name in ["b.png", "a.JPG", "c.txt", "d.webp"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "dir.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "d.webp"]
    assert is_image_file("x.TIFF") and not is_image_file("x.gif.txt")
    with pytest.raises(ImageError, match="no such folder"):
        list_images(tmp_path / "missing")
    with pytest.raises(ImageError, match="not a folder"):
        list_images(tmp_path / "b.png")


def png16(path, arr):
    """A 16-bit PNG of ``arr`` (H, W, C) uint16, C = 2 (gray + alpha), 3 or 4, written by hand
    (Pillow writes no 16-bit colour PNG)."""
    h, w, c = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, {2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw))
                     + png_chunk(b"IEND", b""))


def test_read_image_kinds_and_what_cannot_come_back(tmp_path):
    """The README's kinds table, at the file level: what read_image keeps, and the notes for
    what it cannot (16-bit colour PNG decoded to 8 bits, a CMYK ICC profile on RGB pixels)."""
    from edsr_jax.io.images import read_image

    a16 = np.random.default_rng(0).integers(0, 65536, (6, 5, 3)).astype(np.uint16)
    png16(tmp_path / "rgb16.png", a16)
    notes = []
    d = read_image(tmp_path / "rgb16.png", notes)
    assert d.kind == "RGB" and d.pixels.dtype == np.uint8 and d.alpha is None
    np.testing.assert_array_equal(d.pixels, (a16 >> 8).astype(np.uint8))  # Pillow keeps the high byte
    assert len(notes) == 1 and "16-bit PNG with colour or alpha: decoded to 8 bits" in notes[0]
    g16 = np.random.default_rng(1).integers(0, 65536, (6, 5)).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    d = read_image(tmp_path / "g16.png")
    assert d.kind == "L16" and d.pixels.dtype == np.float32
    np.testing.assert_allclose(d.pixels[..., 1], g16 / 257.0, rtol=1e-6)
    cmyk_icc = bytes(16) + b"CMYK" + bytes(108)  # only the header's colour space matters here
    Image.fromarray(rgb()).convert("CMYK").save(tmp_path / "cmyk.jpg", icc_profile=cmyk_icc)
    notes = []
    d = read_image(tmp_path / "cmyk.jpg", notes)
    assert d.kind == "RGB" and d.icc_profile is None
    assert any("CMYK converted to RGB" in n for n in notes) and any("ICC profile dropped" in n for n in notes)


@pytest.mark.parametrize("suffix, kind, mode, said", [
    (".jpg", "LA", "L", "JPEG holds no 8-bit grayscale + alpha: written as 8-bit grayscale"),
    (".jpg", "L16", "L", "JPEG holds no 16-bit grayscale: written as 8-bit grayscale"),
    (".webp", "L", "RGB", "WEBP holds no 8-bit grayscale: written as 8-bit colour"),
    (".bmp", "RGBA", "RGB", "BMP holds no 8-bit colour + alpha: written as 8-bit colour"),
    (".ppm", "L16", "I", None),  # 16-bit PGM
    (".tif", "LA", "LA", None),
    (".png", "L16", "I;16", None),
])
def test_write_kind_falls_back_to_what_the_format_holds(tmp_path, suffix, kind, mode, said):
    from edsr_jax.io.images import write_kind

    rng = np.random.default_rng(2)
    image = {"L16": rng.integers(0, 65536, (6, 5)).astype(np.uint16),
             "L": rng.integers(0, 256, (6, 5), dtype=np.uint8),
             "LA": rng.integers(0, 256, (6, 5), dtype=np.uint8),
             "RGBA": rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)}[kind]
    alpha = rng.integers(0, 256, (6, 5), dtype=np.uint8) if kind in ("LA", "RGBA") else None
    notes = []
    path = write_kind(tmp_path / f"x{suffix}", image, kind, alpha, notes=notes)
    with Image.open(path) as im:
        assert im.mode == mode and im.size == (5, 6)
    assert notes == ([] if said is None else [f"{path}: {said}"])
