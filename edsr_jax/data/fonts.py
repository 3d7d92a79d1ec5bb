"""Fonts for the generated posters (``edsr_jax.data.posters``): installed files only.

``available_fonts`` finds Pillow's built-in scalable font (Aileron, always there with
Pillow >= 10.1), matplotlib's DejaVu fonts when matplotlib is installed
(``edsr-jax[experiments]``), and DejaVu / Liberation / FreeFont / Noto files in the system font
folders (Debian ``fonts-dejavu-core`` and the like). Nothing is downloaded. Fonts load with
Pillow's basic layout (no libraqm), so the same fonts give the same pixels. A CJK family (Debian
``fonts-wqy-microhei``, ``fonts-noto-cjk``; ``CJK_PACKAGE`` says what to install) counts only
when its glyphs for every character the Chinese posters draw (``poster_text.cjk_characters``)
are really there.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from edsr_jax.data.poster_text import cjk_characters
from edsr_jax.io.cli import UsageError

PILLOW_DEFAULT = "pillow-default"

# (family name, regular file, bold file or None); looked for in matplotlib's font folder and
# the system font folders, first match by file name wins.
FONT_FILES = (
    ("DejaVuSans", "DejaVuSans.ttf", "DejaVuSans-Bold.ttf"),
    ("DejaVuSansCondensed", "DejaVuSansCondensed.ttf", "DejaVuSansCondensed-Bold.ttf"),
    ("DejaVuSansMono", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf"),
    ("DejaVuSerif", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf"),
    ("FreeSans", "FreeSans.ttf", "FreeSansBold.ttf"),
    ("FreeSerif", "FreeSerif.ttf", "FreeSerifBold.ttf"),
    ("LiberationMono", "LiberationMono-Regular.ttf", "LiberationMono-Bold.ttf"),
    ("LiberationSans", "LiberationSans-Regular.ttf", "LiberationSans-Bold.ttf"),
    ("LiberationSerif", "LiberationSerif-Regular.ttf", "LiberationSerif-Bold.ttf"),
    ("NotoSans", "NotoSans-Regular.ttf", "NotoSans-Bold.ttf"),
    ("NotoSerif", "NotoSerif-Regular.ttf", "NotoSerif-Bold.ttf"),
)
# Fonts that may carry CJK glyphs (Debian fonts-noto-cjk, fonts-wqy-*, fonts-droid-fallback);
# used only when the glyphs are really there (``has_glyphs``).
CJK_FONT_FILES = ("NotoSansCJK-Regular.ttc", "NotoSerifCJK-Regular.ttc", "wqy-microhei.ttc",
                  "wqy-zenhei.ttc", "DroidSansFallbackFull.ttf")
SYSTEM_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts")
# What to install for Chinese posters (the smallest of the fonts above; .ci/run installs it).
CJK_PACKAGE = "Debian fonts-wqy-microhei (apt-get install fonts-wqy-microhei)"


@dataclass(frozen=True)
class FontFace:
    """An installed font family: ``regular``/``bold`` are file paths, or None for Pillow's
    built-in font (bold then drawn with a stroke)."""

    name: str
    regular: str | None
    bold: str | None
    cjk: bool = False


def _font_dirs() -> list[Path]:
    """matplotlib's TrueType folder (found without importing matplotlib), then system folders."""
    dirs = []
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin:
        dirs.append(Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf")
    dirs += [Path(d) for d in SYSTEM_FONT_DIRS]
    return [d for d in dirs if d.is_dir()]


@lru_cache(maxsize=None)
def _font_index() -> dict[str, str]:
    """File name -> first path found for it in ``_font_dirs()`` (walked in sorted order)."""
    index: dict[str, str] = {}
    for d in _font_dirs():
        for root, subdirs, names in os.walk(d):
            subdirs.sort()
            for n in sorted(names):
                index.setdefault(n, os.path.join(root, n))
    return index


def has_glyphs(font: ImageFont.FreeTypeFont, text: str) -> bool:
    """True when every character of ``text`` has its own glyph in ``font`` (its mask differs
    from the missing-glyph box drawn for an unassigned code point)."""
    def glyph(ch: str) -> tuple:
        box = font.getbbox(ch)
        im = Image.new("L", (max(1, box[2] - box[0]), max(1, box[3] - box[1])))
        ImageDraw.Draw(im).text((-box[0], -box[1]), ch, font=font, fill=255)
        return box, im.tobytes()

    missing = glyph("\U0010fffd")
    return all(ch.isspace() or glyph(ch) != missing for ch in text)


@lru_cache(maxsize=None)
def available_fonts() -> tuple[FontFace, ...]:
    """The font families this machine has, sorted by name; always includes Pillow's built-in
    font (``pillow-default``). CJK families are included only when their glyphs are present."""
    index = _font_index()
    faces = [FontFace(PILLOW_DEFAULT, None, None)]
    for name, regular, bold in FONT_FILES:
        if regular in index:
            faces.append(FontFace(name, index[regular], index.get(bold) if bold else None))
    for fname in CJK_FONT_FILES:
        if fname in index:
            try:
                font = ImageFont.truetype(index[fname], 32, layout_engine=ImageFont.Layout.BASIC)
            except OSError:
                continue
            if has_glyphs(font, cjk_characters()):
                faces.append(FontFace(Path(fname).stem, index[fname], None, cjk=True))
    return tuple(sorted(faces, key=lambda f: f.name))


@lru_cache(maxsize=512)
def load_font(face: FontFace, size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    """``face`` at ``size`` pixels (at least 4), bold file when asked and available."""
    size = max(4, int(size))
    if face.regular is None:
        return ImageFont.load_default(size=size).font_variant(layout_engine=ImageFont.Layout.BASIC)
    path = face.bold if bold and face.bold else face.regular
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)


def select_fonts(names: str | None) -> list[FontFace]:
    """``available_fonts()``, or the comma-separated family names of ``names`` among them
    (UsageError naming an unknown one and listing those available)."""
    faces = list(available_fonts())
    if not names:
        return faces
    by_name = {f.name: f for f in faces}
    chosen = []
    for n in (s.strip() for s in names.split(",")):
        if n not in by_name:
            raise UsageError(f"--fonts: {n!r} is not an available font; available: {', '.join(by_name)}")
        if by_name[n] not in chosen:
            chosen.append(by_name[n])
    if not any(not f.cjk for f in chosen):
        raise UsageError("--fonts: choose at least one Latin font")
    return chosen
