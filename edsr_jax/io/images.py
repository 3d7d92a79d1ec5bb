"""Reading and writing image files as RGB uint8 arrays, with clear errors.

Every program of the project reads images through ``read_rgb`` so that odd files
(grayscale, palette, RGBA, 16-bit, 32-bit float, CMYK, EXIF-rotated, animated) are converted
the same way everywhere, by their value range, each conversion said in a note, and broken or
unusable ones (empty, truncated, not an image, decompression bombs, float values outside
[0, 1], integers beyond 16 bits or below 0, signed 8-bit samples) raise ``ImageError`` naming
the file: never a silently dark, clipped or wrapped image.

``read_image`` / ``write_kind`` are the kind-preserving pair ``upscale`` uses: the pixels
the model sees plus what the output must give back (grayscale, alpha, 16-bit, ICC
profile, EXIF with the orientation applied once), written in the closest form the
output format allows (``OUTPUT_KINDS``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
# 30000 x 30000 headers and the like are refused before any pixel is decoded.
MAX_PIXELS = 16384 * 16384
# read_rgb checks MAX_PIXELS itself right after Pillow parses the header, before decoding.
# Pillow's own guard (warn above 89 Mpx, refuse above 179 Mpx by default) would contradict
# that for large photographs, with a vaguer message; switch it off. All reads go through here.
Image.MAX_IMAGE_PIXELS = None


class ImageError(Exception):
    """An image file that cannot be used; the message names the file and why."""


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the file name has one of the suffixes in ``IMAGE_SUFFIXES``."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name; the temporary files of a
    writer (``.tmp-*``, ``outputs.TEMP_PREFIX``, e.g. left by a killed run) are not images.

    Raises ``ImageError`` when the folder does not exist or is not a folder.
    """
    from edsr_jax.io.outputs import TEMP_PREFIX

    folder = Path(folder)
    if not folder.exists():
        raise ImageError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise ImageError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and is_image_file(p) and not p.name.startswith(TEMP_PREFIX))


def image_files(folder: str | os.PathLike) -> list[Path]:
    """``list_images`` that also raises ``ImageError`` when the folder holds no image file."""
    paths = list_images(folder)
    if not paths:
        raise ImageError(f"{folder}: folder holds no image files (looked for {' '.join(IMAGE_SUFFIXES)})")
    return paths


def read_rgb(path: str | os.PathLike, notes: list[str] | None = None) -> np.ndarray:
    """Decode an image file to ``(H, W, 3) uint8`` RGB.

    Conversions (grayscale, palette, alpha dropped, 16-bit scaled to 8, float [0, 1] scaled to
    [0, 255], CMYK, EXIF orientation applied, the first frame of an animation) append a
    sentence to ``notes`` when given. Raises ``ImageError`` for anything that is not a readable
    image or whose values have no faithful 8-bit meaning.
    """
    return _read(path, notes, _to_rgb)


class _Refused(Exception):
    """Raised by a converter for pixels it will not guess at; ``_read`` names the file."""


def _read(path: str | os.PathLike, notes: list[str] | None, convert):
    """Open, check and decode ``path``, then ``convert(img, note, bits)`` (``bits``: 16 when the
    file stores 16-bit samples that Pillow may hand over as 8); ImageError naming the file."""
    path = Path(path)
    note = (lambda s: notes.append(f"{path}: {s}")) if notes is not None else (lambda s: None)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror or e})") from None
    if size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")
    too_big = f"over the limit of {MAX_PIXELS} pixels (a decompression bomb or an image too large to use whole)"
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise ImageError(f"{path}: {w}x{h} pixels is {too_big}")
            bits, signed = _samples(img)  # before load(), which drops the tile descriptors
            if signed and img.mode in ("L", "LA", "P", "RGB", "RGBA"):
                raise ImageError(f"{path}: signed 8-bit samples (TIFF SampleFormat 2), which Pillow would "
                                 "read as unsigned (wrapped); convert the file to unsigned samples")
            frames = getattr(img, "n_frames", 1)
            img.load()
            if frames > 1:
                note(f"{frames} frames (an animation or a multi-page file): the first frame is used")
            out = convert(img, note, bits)
    except ImageError:
        raise
    except _Refused as e:
        raise ImageError(f"{path}: {e}") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{path}: {too_big}") from None
    except UnidentifiedImageError as e:
        raise ImageError(f"{path}: not a readable image ({e.__class__.__name__})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: broken or truncated image ({e})") from None
    arr = out.pixels if isinstance(out, Decoded) else out
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"{path}: image has no pixels")
    return out


class Decoded(NamedTuple):
    """An image file as ``upscale`` sees it (``read_image``).

    ``pixels``: ``(H, W, 3)`` what the model gets, uint8, or float32 in [0, 255] (value / 257)
    for a 16-bit source, value x 255 for a 32-bit float one (values in [0, 1]); ``alpha``: ``(H, W)`` uint8 or None; ``kind``: what the output
    gives back, one of ``OUTPUT_KINDS``; ``icc_profile`` / ``exif``: bytes to write back
    or None (EXIF without its orientation tag once the pixels are upright).
    """

    pixels: np.ndarray
    alpha: np.ndarray | None
    kind: str
    icc_profile: bytes | None
    exif: bytes | None


# What each kind of output is made of; write_kind maps it onto what the format can hold.
OUTPUT_KINDS = {
    "RGB": "8-bit colour",
    "RGBA": "8-bit colour + alpha",
    "L": "8-bit grayscale",
    "LA": "8-bit grayscale + alpha",
    "L16": "16-bit grayscale",
    "F": "32-bit float grayscale",
}


def read_image(path: str | os.PathLike, notes: list[str] | None = None) -> Decoded:
    """Decode an image file keeping its kind (``Decoded``): grayscale stays grayscale, alpha
    is kept apart, 16-bit and 32-bit float grayscale keep their precision (float pixels), the ICC profile and
    EXIF are kept, the EXIF orientation is applied to the pixels once. Kinds that cannot
    come back (palette, CMYK, 16-bit colour that Pillow decodes to 8 bits) append a
    sentence to ``notes``. Raises ``ImageError`` like ``read_rgb``."""
    return _read(path, notes, _to_decoded)


def _samples(img: Image.Image) -> tuple[int, bool]:
    """``(bits, signed)`` of an opened, not yet loaded image: 16 when its tile descriptors
    unpack 16-bit samples (a 16-bit colour PNG or TIFF, which Pillow decodes to 8 bits per
    channel) else 8; ``signed`` when a TIFF says its samples are signed integers."""
    rawmodes = [str(t[3]) for t in getattr(img, "tile", []) or [] if len(t) > 3]
    bits = 16 if img.mode.startswith("I;16") or any(";16" in r for r in rawmodes) else 8
    try:
        fmt = getattr(img, "tag_v2", {}).get(339)  # SampleFormat: 1 unsigned, 2 signed, 3 float
    except Exception:  # noqa: BLE001 - a broken tag is not our error
        fmt = None
    signed = 2 in (fmt if isinstance(fmt, tuple) else (fmt,))
    return bits, signed


def _upright(img: Image.Image, note, said: str = "") -> Image.Image:
    """``img`` turned by its EXIF orientation (2..8) with a note; 1 or none: as it is; any other
    value is not an orientation and is ignored, with a note saying so (never "turned")."""
    orientation = _orientation(img)
    if orientation in (None, 1):
        return img
    if not (isinstance(orientation, int) and 2 <= orientation <= 8):
        note(f"EXIF orientation {orientation!r} is not a valid value (1-8): ignored, the pixels are used "
             "as stored")
        return img
    note(f"turned upright by its EXIF orientation {orientation}{said}")
    return ImageOps.exif_transpose(img)


def _gray_values(img: Image.Image) -> tuple[np.ndarray, float]:
    """A one-channel image of wide samples (modes I;16*, I, F) as ``(float64 values, peak)``:
    ``peak`` is the value of white (65535 for 16 bits, 255 for 8-bit values in an "I" image,
    1.0 for floats). ``_Refused`` for values with no such meaning: non-finite or outside [0, 1]
    floats, negative or above-16-bit integers."""
    a = np.asarray(img).astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if img.mode == "F":
        if not np.isfinite(a).all():
            raise _Refused("32-bit float image with non-finite values (NaN or infinity)")
        if lo < 0.0 or hi > 1.0:
            raise _Refused(f"32-bit float image with values in [{lo:.6g}, {hi:.6g}]: only [0, 1] is read "
                           "as black to white; convert it to 8 or 16 bits")
        return a, 1.0
    if lo < 0 or hi > 65535:
        raise _Refused(f"{img.mode} integer image with values in [{lo:.0f}, {hi:.0f}]: outside the 16-bit "
                       "range [0, 65535]; convert it to 8 or 16 bits")
    return a, 65535.0 if img.mode.startswith("I;16") or hi > 255 else 255.0


# TIFF tags that describe how a file's pixels are stored (size, samples, compression, strips,
# tiles, palette...): they belong to the file written, never carried over as metadata.
_TIFF_LAYOUT_TAGS = frozenset({254, 255, 256, 257, 258, 259, 262, 263, 264, 265, 266, 273, 277, 278, 279,
                               280, 281, 284, 290, 291, 317, 318, 319, 320, 321, 322, 323, 324, 325, 330,
                               338, 339, 340, 341, 347, 512, 513, 514, 515, 517, 518, 519, 520, 521,
                               529, 530, 531, 532})


def _to_decoded(img: Image.Image, note, bit_depth: int = 8) -> Decoded:
    fmt = img.format
    img = _upright(img, note, " (the output is upright, its EXIF orientation removed)")
    icc = img.info.get("icc_profile") or None
    try:
        exif_data = img.getexif()
        exif_data.pop(0x0112, None)
        if fmt == "TIFF":  # a TIFF's "EXIF" is its own image directory: drop how its pixels are laid out
            for tag in [t for t in exif_data if t in _TIFF_LAYOUT_TAGS]:
                del exif_data[tag]
        exif = exif_data.tobytes() if len(exif_data) else None
    except Exception:  # noqa: BLE001 - a broken EXIF block is dropped, not our error
        exif = None
    mode, alpha = img.mode, None
    wide = _gray_values(img) if mode.startswith("I") or mode == "F" else None
    if wide is not None and wide[1] != 255.0:
        a, peak = wide
        # the model's [0, 255] scale: 16-bit value / 257, float value x 255 (no 8-bit rounding)
        kind = "F" if mode == "F" else "L16"
        pixels = np.repeat((a * (255.0 / peak)).astype(np.float32)[..., None], 3, axis=2)
    elif mode in ("L", "1", "I", "LA", "La"):
        if mode == "1":
            note("1-bit image: written as 8-bit grayscale")
        if mode in ("LA", "La"):
            la = np.asarray(img.convert("LA"), dtype=np.uint8)
            gray, alpha, kind = la[..., 0], np.ascontiguousarray(la[..., 1]), "LA"
        else:
            gray, kind = np.asarray(img.convert("L"), dtype=np.uint8), "L"
        pixels = np.repeat(gray[..., None], 3, axis=2)
    else:
        has_alpha = mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in img.info)
        if mode in ("P", "PA"):
            note(f"palette image: written as {'RGBA' if has_alpha else 'RGB'} (upscaled colours do "
                 "not fit its palette)")
        elif mode not in ("RGB", "RGBA", "RGBa"):
            note(f"{mode} converted to RGB")
            if icc is not None and icc[16:20] != b"RGB ":
                note(f"its {icc[16:20].decode('ascii', 'replace').strip()} ICC profile dropped "
                     "(it does not describe RGB pixels)")
                icc = None
        if bit_depth == 16:
            note(f"16-bit {fmt} with colour or alpha: decoded to 8 bits per channel (Pillow), "
                 "written 8-bit")
        if has_alpha:
            rgba = _convert(img, "RGBA")
            pixels, alpha, kind = np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3]), "RGBA"
        else:
            pixels, kind = _convert(img, "RGB"), "RGB"
    if icc is not None and kind in ("L", "LA", "L16", "F") and icc[16:20] != b"GRAY":
        icc = None  # an RGB profile does not describe gray pixels
    return Decoded(pixels, alpha, kind, icc, exif)


# output format -> the kinds it can hold; write_kind falls back to the nearest one
_FORMAT_KINDS = {
    "PNG": {"RGB", "RGBA", "L", "LA", "L16"},
    "TIFF": {"RGB", "RGBA", "L", "LA", "L16", "F"},
    "JPEG": {"RGB", "L"},
    "WEBP": {"RGB", "RGBA"},
    "BMP": {"RGB", "L"},
    "PPM": {"RGB", "L", "L16"},
}
_FALLBACK = {"RGBA": "RGB", "LA": "L", "F": "L16", "L16": "L", "L": "RGB", "RGB": "RGB"}
QUALITY_FORMATS = ("JPEG", "WEBP")


def image_format(path: str | os.PathLike) -> str | None:
    """Pillow's format name for the file name's suffix (``"PNG"``, ``"JPEG"``...), or None."""
    return Image.registered_extensions().get(Path(path).suffix.lower())


def write_kind(path: str | os.PathLike, image: np.ndarray, kind: str, alpha: np.ndarray | None = None,
               *, icc_profile: bytes | None = None, exif: bytes | None = None,
               quality: int | None = None, overwrite: bool = False,
               notes: list[str] | None = None) -> Path:
    """Write an upscaled image as ``kind`` (``OUTPUT_KINDS``), or the nearest kind the
    format holds (JPEG: no alpha, no 16-bit; WebP: no grayscale; ...), saying so in ``notes``.

    ``image``: ``(H, W)`` uint8 for "L"/"LA", uint16 for "L16", float32 in [0, 1] for "F",
    ``(H, W, 3)`` uint8 for "RGB"/"RGBA"; ``alpha``: ``(H, W)`` uint8 for the alpha kinds. ``quality`` (1..100) for
    JPEG and WebP (default 95; lossless formats ignore it). ICC profile and EXIF are written
    where the format keeps them. Atomic like ``write_image``.
    """
    fmt = image_format(path)
    want = kind
    while kind not in _FORMAT_KINDS.get(fmt, {"RGB"}):
        kind = _FALLBACK[kind]
    if kind != want and notes is not None:
        notes.append(f"{path}: {fmt} holds no {OUTPUT_KINDS[want]}: written as {OUTPUT_KINDS[kind]}")
    if want == "F" and kind != "F":  # [0, 1] floats to the integer kind written
        peak, dtype = (65535.0, np.uint16) if kind == "L16" else (255.0, np.uint8)
        image = np.clip(np.floor(image.astype(np.float64) * peak + 0.5), 0, peak).astype(dtype)
    elif want == "L16" and kind != "L16":
        image = np.clip(np.floor(image.astype(np.float64) / 257.0 + 0.5), 0, 255).astype(np.uint8)
    if want in ("L", "LA", "L16", "F") and kind in ("RGB", "RGBA"):
        image = np.repeat(image[..., None], 3, axis=2)
    if kind in ("RGBA", "LA"):
        array = np.concatenate([image if image.ndim == 3 else image[..., None], alpha[..., None]], axis=2)
    else:
        array = image
    kw = {}
    if fmt in QUALITY_FORMATS:
        kw["quality"] = 95 if quality is None else int(quality)
    if icc_profile and fmt in ("PNG", "TIFF", "JPEG", "WEBP"):
        kw["icc_profile"] = icc_profile
    if exif and fmt in ("PNG", "TIFF", "JPEG", "WEBP"):
        kw["exif"] = exif
    return write_image(path, np.ascontiguousarray(array), overwrite=overwrite, **kw)


def _convert(img: Image.Image, mode: str) -> np.ndarray:
    """``img.convert(mode)`` as a uint8 array; ``_Refused`` naming the pixel mode when Pillow has
    no such conversion (said in one line, not a traceback)."""
    try:
        return np.asarray(img.convert(mode), dtype=np.uint8)
    except ValueError:
        raise _Refused(f"pixel mode {img.mode} cannot be converted to {mode}") from None


def _to_rgb(img: Image.Image, note, bits: int = 8) -> np.ndarray:
    fmt = img.format
    img = _upright(img, note)
    mode = img.mode
    if mode == "RGB":
        if bits == 16:
            note(f"16-bit {fmt} colour: decoded to 8 bits per channel")
        return np.asarray(img, dtype=np.uint8)
    if mode.startswith("I") or mode == "F":
        a, peak = _gray_values(img)
        a = np.clip(np.round(a * (255.0 / peak)), 0, 255).astype(np.uint8)
        what = "32-bit float [0, 1]" if mode == "F" else f"{'16' if peak > 255 else '8'}-bit"
        note(f"{mode} ({what}) grayscale scaled to 8-bit RGB")
        return np.repeat(a[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        note(f"{mode} image: alpha channel dropped")
    elif mode in ("L", "1"):
        note("grayscale converted to RGB")
    elif mode == "P":
        note("palette image converted to RGB")
    elif mode == "CMYK":
        note("CMYK converted to RGB")
    else:
        note(f"{mode} converted to RGB")
    return _convert(img, "RGB")


def file_header(path: str | os.PathLike) -> dict:
    """What a file's header says, without decoding its pixels.

    ``{"format": "PNG", "JPEG", ..., "mode": Pillow's mode, "bits": bits per sample (1, 8
    or 16; a 16-bit RGB PNG, which Pillow decodes to 8 bits silently, says 16),
    "quantization": a JPEG's tables ``{0: 64 ints natural order, 1: ...}`` or None}``.
    Raises ``ImageError`` naming the file when it is not a readable image.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: empty file (0 bytes)")
        with Image.open(path) as img:
            rawmodes = [str(t[3]) for t in getattr(img, "tile", []) or [] if len(t) > 3]
            if img.mode == "1":
                bits = 1
            elif img.mode.startswith("I;16") or img.mode == "I" or any(";16" in r for r in rawmodes):
                bits = 16
            else:
                bits = 8
            q = getattr(img, "quantization", None) if img.format == "JPEG" else None
            return {"format": img.format, "mode": img.mode, "bits": bits,
                    "quantization": {int(k): list(v) for k, v in q.items()} if q else None}
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except UnidentifiedImageError as e:
        raise ImageError(f"{path}: not a readable image ({e.__class__.__name__})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: broken or truncated image ({e})") from None


def _orientation(img: Image.Image):
    try:
        return img.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - a broken EXIF block is not our error
        return None


def write_image(path: str | os.PathLike, array: np.ndarray, overwrite: bool = False, **save_kw) -> Path:
    """Write ``(H, W, 3)`` or ``(H, W)`` uint8 to ``path`` (format from the suffix); also
    ``(H, W, 2)`` / ``(H, W, 4)`` uint8 (gray / colour + alpha), ``(H, W)`` uint16 and ``(H, W)``
    float32 (32-bit float grayscale, TIFF).

    The file appears atomically (``outputs.save_with``: a temporary name, then renamed), with
    the usual permissions. Raises ``FileExistsError`` when ``path`` exists and ``overwrite``
    is False (``outputs.TakenMeanwhile`` when another process created it while this one
    wrote); ``outputs.WriteError`` (one line naming ``path``) on a full disk.
    """
    from edsr_jax.io import outputs

    path = Path(path)
    if array.dtype != np.uint8 and not (array.dtype in (np.uint16, np.float32) and array.ndim == 2):
        raise TypeError(f"write_image expects uint8 (or (H, W) uint16 / float32), got {array.dtype} {array.shape}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists (pass --overwrite to replace it)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise outputs.write_error(path.parent, e) from None
    fmt = Image.registered_extensions().get(path.suffix.lower())
    return outputs.save_with(path, lambda tmp: Image.fromarray(array).save(tmp, format=fmt, **save_kw),
                             overwrite=overwrite)


def image_folder(folder: str | Path) -> list[Path]:
    """The image files of a folder given on the command line, sorted by name.

    Raises UsageError naming the folder when it does not exist, is not a folder, or
    holds no image files.
    """
    from edsr_jax.io.cli import UsageError

    try:
        return image_files(folder)
    except ImageError as e:
        raise UsageError(str(e)) from None
