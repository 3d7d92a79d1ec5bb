"""Reading and writing image files as RGB uint8 arrays, with clear errors.

Every program of the project reads images through ``read_rgb`` so that odd files
(grayscale, palette, RGBA, 16-bit, CMYK, EXIF-rotated) are converted the same way
everywhere, and broken ones (empty, truncated, not an image, decompression bombs)
raise ``ImageError`` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

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
    """Image files directly inside ``folder``, sorted by name.

    Raises ``ImageError`` when the folder does not exist or is not a folder.
    """
    folder = Path(folder)
    if not folder.exists():
        raise ImageError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise ImageError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


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
            arr = _to_rgb(img, note)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"{path}: {too_big}") from None
    except UnidentifiedImageError as e:
        raise ImageError(f"{path}: not a readable image ({e.__class__.__name__})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: broken or truncated image ({e})") from None
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"{path}: image has no pixels")
    return arr


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
    """Write ``(H, W, 3)`` or ``(H, W)`` uint8 to ``path`` (format from the suffix).

    The file appears atomically (``outputs.save_with``: a temporary name, then renamed), with
    the usual permissions. Raises ``FileExistsError`` when ``path`` exists and ``overwrite``
    is False; ``outputs.WriteError`` (one line naming ``path``) on a full disk.
    """
    from edsr_jax import outputs

    path = Path(path)
    if array.dtype != np.uint8:
        raise TypeError(f"write_image expects uint8, got {array.dtype}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists (pass --overwrite to replace it)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise outputs.write_error(path.parent, e) from None
    fmt = Image.registered_extensions().get(path.suffix.lower())
    return outputs.save_with(path, lambda tmp: Image.fromarray(array).save(tmp, format=fmt, **save_kw),
                             overwrite=overwrite)
