"""Animated GIF, WebP and PNG (APNG) files through Pillow: frames out, frames in.

``is_animation`` tells an animated file from a still one (a ``.gif`` is always taken as an
animation, even of one frame: ``upscale`` writes it back as a GIF). ``AnimationReader``
yields each frame composited on its canvas (as a viewer shows it) as ``video_files.Frame``
objects: RGB pixels, the alpha channel when any pixel is not opaque, the frame's duration in
milliseconds. ``AnimationWriter`` writes the upscaled frames as the same kind of file with the
same durations and loop count: GIF (a 256-colour palette per frame, alpha as on/off
transparency), WebP (``quality``, default 95), APNG (lossless).

Pillow writes an animation in one call, so the writer holds its frames until ``finish``
(animations are short; long footage is video, which streams).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edsr_jax.io.video_files import Frame, VideoError

FORMATS = {".gif": "GIF", ".png": "PNG", ".apng": "PNG", ".webp": "WEBP"}


def is_animation(path: str | os.PathLike) -> bool:
    """True for a ``.gif`` file, or a ``.png`` / ``.apng`` / ``.webp`` file of more than one
    frame (read from its header; False when it cannot be opened: the image path reports it)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        return True
    if suffix not in FORMATS:
        return False
    try:
        with Image.open(path) as img:
            return getattr(img, "n_frames", 1) > 1
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return False


class AnimationReader:
    """The frames of an animated image (``items``); ``expected`` frames, ``loop`` (None: play
    once; 0: forever; N), ``format`` (Pillow's name). VideoError naming the file when it cannot
    be opened, or names the frame that cannot be decoded."""

    def __init__(self, path: str | os.PathLike, notes: list[str] | None = None):
        self.path = Path(path)
        try:
            self.image = Image.open(self.path)
            self.image.load()
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            raise VideoError(f"{self.path}: not a readable animation ({e})", 0) from None
        self.format = self.image.format
        self.expected = getattr(self.image, "n_frames", 1)
        self.loop = self.image.info.get("loop")
        self.width, self.height = self.image.size
        self.deep = False
        self.copied = []

    def items(self):
        """Yield one ``Frame`` per frame (``pts`` and ``duration`` in milliseconds); closes the
        file at the end."""
        pts = 0
        try:
            for i in range(self.expected):
                try:
                    self.image.seek(i)
                    rgba = np.asarray(self.image.convert("RGBA"))
                except (OSError, ValueError, EOFError, SyntaxError) as e:
                    raise VideoError(f"{self.path}: decoding failed at frame {i + 1} of {self.expected} ({e})",
                                     i) from None
                duration = int(round(self.image.info.get("duration") or 0))
                alpha = rgba[..., 3] if (rgba[..., 3] < 255).any() else None
                yield Frame(i, np.ascontiguousarray(rgba[..., :3]), pts, duration, alpha)
                pts += duration
        finally:
            self.image.close()

    def close(self) -> None:
        """Close the file (``items`` closes it at its end)."""
        self.image.close()


class AnimationWriter:
    """Collects upscaled frames (``frame``) and writes them to ``path`` (a temporary name) as a
    ``fmt`` animation ("GIF", "WEBP", "PNG") at ``finish``; ``quality`` for WebP."""

    def __init__(self, path: str | os.PathLike, fmt: str, loop: int | None, quality: int | None = None):
        self.path, self.fmt, self.loop, self.quality = Path(path), fmt, loop, quality
        self.frames: list[Image.Image] = []
        self.durations: list[int] = []
        self.any_alpha = False

    def frame(self, pixels: np.ndarray, source: Frame, alpha: np.ndarray | None = None) -> None:
        """Add ``pixels`` ``(H, W, 3)`` uint8 with ``alpha`` ``(H, W)`` uint8 or None, shown
        for ``source.duration`` ms."""
        if alpha is not None:
            if self.fmt == "GIF":  # one transparent palette entry: on or off
                alpha = np.where(alpha >= 128, 255, 0).astype(np.uint8)
                pixels = pixels * (alpha[..., None] > 0)
            self.any_alpha = True
            image = Image.fromarray(np.dstack([pixels, alpha]).astype(np.uint8), "RGBA")
        else:
            image = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
        self.frames.append(image)
        self.durations.append(max(0, int(source.duration)))

    def packet(self, packet) -> None:
        """Animations have no other streams."""

    def finish(self) -> None:
        """Write the file (all frames in one RGBA or RGB mode)."""
        frames = [f.convert("RGBA") for f in self.frames] if self.any_alpha else self.frames
        kw = {"save_all": True, "append_images": frames[1:], "duration": self.durations}
        if self.loop is not None:
            kw["loop"] = self.loop
        if self.fmt == "GIF":
            kw["disposal"] = 2 if self.any_alpha else 1
        elif self.fmt == "WEBP":
            kw["quality"] = 95 if self.quality is None else int(self.quality)
        elif self.fmt == "PNG":
            kw.update(blend=0, disposal=0)  # each frame replaces the canvas whole (source blending)
        frames[0].save(self.path, format=self.fmt, **kw)

    def close(self) -> None:
        """Drop the frames."""
        self.frames.clear()
