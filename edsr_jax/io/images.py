"""Reading and writing image files as RGB uint8 arrays, with clear errors.

Every program of the project reads images through ``read_rgb`` so that odd files
(grayscale, palette, RGBA, 16-bit, CMYK, EXIF-rotated) are converted the same way
everywhere, and broken ones (empty, truncated, not an image, decompression bombs)
raise ``ImageError`` naming the file.

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

    Conversions (grayscale, palette, alpha dropped, 16-bit scaled to 8, CMYK,
    EXIF orientation applied) append a sentence to ``notes`` when given.
    Raises ``ImageError`` for anything that is not a readable image.
    """
    return _read(path, notes, _to_rgb)


def _read(path: str | os.PathLike, notes: list[str] | None, convert):
    """Open, check and decode ``path``, then ``convert(img, note)``; ImageError naming the file."""
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
            img.load()
            out = convert(img, note)
    except ImageError:
        raise
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
    for a 16-bit source; ``alpha``: ``(H, W)`` uint8 or None; ``kind``: what the output
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
}


def read_image(path: str | os.PathLike, notes: list[str] | None = None) -> Decoded:
    """Decode an image file keeping its kind (``Decoded``): grayscale stays grayscale, alpha
    is kept apart, 16-bit grayscale keeps its precision (float pixels), the ICC profile and
    EXIF are kept, the EXIF orientation is applied to the pixels once. Kinds that cannot
    come back (palette, CMYK, 16-bit colour that Pillow decodes to 8 bits) append a
    sentence to ``notes``. Raises ``ImageError`` like ``read_rgb``."""
    return _read(path, notes, _to_decoded)


def _png_bit_depth(img: Image.Image) -> int:
    """The bit depth in a PNG's header (8 for other formats or when unknown)."""
    if img.format != "PNG" or not getattr(img, "filename", ""):
        return 8
    try:
        with open(img.filename, "rb") as f:
            head = f.read(26)
        return head[24] if head[12:16] == b"IHDR" else 8
    except (OSError, IndexError):
        return 8


def _to_decoded(img: Image.Image, note) -> Decoded:
    bit_depth = _png_bit_depth(img)
    orientation = _orientation(img)
    if orientation not in (None, 1):
        img = ImageOps.exif_transpose(img)
        note(f"turned upright by its EXIF orientation {orientation} (the output is upright, "
             "its EXIF orientation removed)")
    icc = img.info.get("icc_profile") or None
    try:
        exif_data = img.getexif()
        exif_data.pop(0x0112, None)
        exif = exif_data.tobytes() if len(exif_data) else None
    except Exception:  # noqa: BLE001 - a broken EXIF block is dropped, not our error
        exif = None
    mode, alpha = img.mode, None
    if mode in ("I;16", "I;16B", "I;16L", "I") and (mode != "I" or np.asarray(img).max(initial=0) > 255):
        a = np.clip(np.asarray(img).astype(np.float32), 0, 65535) / np.float32(257.0)
        kind, pixels = "L16", np.repeat(a[..., None], 3, axis=2)
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
            note("16-bit PNG with colour or alpha: decoded to 8 bits per channel (Pillow), "
                 "written 8-bit")
        if has_alpha:
            rgba = np.asarray(img.convert("RGBA"), dtype=np.uint8)
            pixels, alpha, kind = np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3]), "RGBA"
        else:
            pixels, kind = np.asarray(img.convert("RGB"), dtype=np.uint8), "RGB"
    if icc is not None and kind in ("L", "LA", "L16") and icc[16:20] != b"GRAY":
        icc = None  # an RGB profile does not describe gray pixels
    return Decoded(pixels, alpha, kind, icc, exif)


# output format -> the kinds it can hold; write_kind falls back to the nearest one
_FORMAT_KINDS = {
    "PNG": {"RGB", "RGBA", "L", "LA", "L16"},
    "TIFF": {"RGB", "RGBA", "L", "LA", "L16"},
    "JPEG": {"RGB", "L"},
    "WEBP": {"RGB", "RGBA"},
    "BMP": {"RGB", "L"},
    "PPM": {"RGB", "L", "L16"},
}
_FALLBACK = {"RGBA": "RGB", "LA": "L", "L16": "L", "L": "RGB", "RGB": "RGB"}
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

    ``image``: ``(H, W)`` uint8 for "L"/"LA", uint16 for "L16", ``(H, W, 3)`` uint8 for
    "RGB"/"RGBA"; ``alpha``: ``(H, W)`` uint8 for the alpha kinds. ``quality`` (1..100) for
    JPEG and WebP (default 95; lossless formats ignore it). ICC profile and EXIF are written
    where the format keeps them. Atomic like ``write_image``.
    """
    fmt = image_format(path)
    want = kind
    while kind not in _FORMAT_KINDS.get(fmt, {"RGB"}):
        kind = _FALLBACK[kind]
    if kind != want and notes is not None:
        notes.append(f"{path}: {fmt} holds no {OUTPUT_KINDS[want]}: written as {OUTPUT_KINDS[kind]}")
    if want == "L16" and kind != "L16":
        image = np.clip(np.floor(image.astype(np.float64) / 257.0 + 0.5), 0, 255).astype(np.uint8)
    if want in ("L", "LA", "L16") and kind in ("RGB", "RGBA"):
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


def _to_rgb(img: Image.Image, note) -> np.ndarray:
    orientation = _orientation(img)
    if orientation not in (None, 1):
        img = ImageOps.exif_transpose(img)
        note(f"turned upright by its EXIF orientation {orientation}")
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img).astype(np.float64)
        peak = 65535.0 if a.max(initial=0) > 255 or mode.startswith("I;16") else 255.0
        a = np.clip(np.round(a * (255.0 / peak)), 0, 255).astype(np.uint8)
        note(f"{mode} ({'16' if peak > 255 else '8'}-bit) grayscale scaled to 8-bit RGB")
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
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def file_header(path: str | os.PathLike) -> dict:
    """What a file's header says, without decoding its pixels.

    ``{"format": "PNG", "JPEG", ..., "mode": Pillow's mode, "bits": bits per sample (1, 8
    or 16; a 16-bit RGB PNG, which Pillow decodes to 8 bits silently, says 16),
    "quantization": a JPEG's tables ``{0: 64 ints natural order, 1: ...}`` or None}``.
    Raises ``ImageError`` naming the file when it is not a readable image.
    """
    path = Path(path)
    try:
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
    ``(H, W, 2)`` / ``(H, W, 4)`` uint8 (gray / colour + alpha) and ``(H, W)`` uint16.

    The file appears atomically (``outputs.save_with``: a temporary name, then renamed), with
    the usual permissions. Raises ``FileExistsError`` when ``path`` exists and ``overwrite``
    is False (``outputs.TakenMeanwhile`` when another process created it while this one
    wrote); ``outputs.WriteError`` (one line naming ``path``) on a full disk.
    """
    from edsr_jax.io import outputs

    path = Path(path)
    if array.dtype != np.uint8 and not (array.dtype == np.uint16 and array.ndim == 2):
        raise TypeError(f"write_image expects uint8 (or (H, W) uint16), got {array.dtype} {array.shape}")
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
