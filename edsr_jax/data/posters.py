"""Generated posters: high-resolution training images of text and line art.

The seed's scenario is 2K posters (red, black and dark-grey text and lines on a light
background, with some photographs) shrunk and JPEG-compressed in transit. This module draws
such posters with Pillow (``ImageDraw``), deterministically per seed:

- a light background (white, paper, light grey) and an ink palette: one red, one black or
  near-black, one dark grey;
- a header (title, subtitle; sometimes white on a red or black band) and a footer of small text;
- a grid of blocks: paragraphs and bullet lists at several sizes, photographs in frames with
  captions, a bar chart, a table, boxes joined by arrows, a call-out figure; rules between them.

Fonts come from installed files only (``edsr_jax.data.fonts``). A share of the posters
(``cjk_share``; each poster's lot is drawn from its seed and index alone, ``is_chinese``) are
Chinese: every line of text (title, subtitle, paragraphs, labels, cells, captions, footer) is
Chinese (``edsr_jax.data.poster_text``) in a CJK face whose glyphs were checked to be there
(``fonts.has_glyphs``), with the same red rules, black and grey ink. Chinese posters need a
CJK font among the fonts; the other posters are pixel for pixel the Latin posters drawn
without one.

The same seed and the same installed fonts give bit-identical PNG files; poster ``i`` of a
seed does not depend on the count. Held-out sets: another seed, ``words="heldout"`` (Latin
words and Chinese terms and sentences disjoint from ``train``'s) and a subset of the fonts.
``generate`` writes ``poster-s<S>-<i>.png`` (RGB) and ``posters-s<S>.json`` (what was drawn
with, which posters are Chinese); ``python -m edsr_jax.posters`` is its command line.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from edsr_jax.data.fonts import CJK_PACKAGE, FontFace, available_fonts, load_font, select_fonts
from edsr_jax.data.poster_text import TextSource, text_source
from edsr_jax.io.cli import UsageError

MIN_SIZE = 64
MAX_SIDE = 16384

BACKGROUNDS = ((255, 255, 255), (250, 248, 242), (246, 246, 246), (252, 250, 246),
               (244, 242, 236), (255, 253, 248))
REDS = ((200, 16, 46), (220, 32, 32), (178, 8, 24), (230, 46, 40), (190, 30, 45))
BLACKS = ((0, 0, 0), (20, 20, 20), (28, 24, 24), (12, 12, 20))
NO_LINE_START = "，。、；：！？）》」”"  # Chinese lines never start with these
GREYS = ((64, 64, 64), (80, 80, 80), (96, 92, 90), (56, 60, 66), (110, 110, 110))


class _Painter:
    """One poster being drawn: the canvas, its random generator, palette, fonts and words."""

    def __init__(self, rng: np.random.Generator, w: int, h: int, fonts: Sequence[FontFace],
                 text: TextSource, photos: Sequence[np.ndarray], cjk_face: FontFace | None = None):
        self.rng, self.w, self.h, self.photos = rng, w, h, photos
        self.words, self.sentences, self.sep = text
        self.drawn: list[str] = []  # every string drawn, in order
        self.u = min(w, h) / 1152.0  # one unit: a pixel of a 2048x1152 poster
        self.bg = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
        self.red = REDS[rng.integers(len(REDS))]
        self.black = BLACKS[rng.integers(len(BLACKS))]
        self.grey = GREYS[rng.integers(len(GREYS))]
        self.light = tuple(int(round(0.85 * c + 0.15 * g)) for c, g in zip(self.bg, self.grey))
        latin = [f for f in fonts if not f.cjk]
        self.title_face = latin[rng.integers(len(latin))]
        self.body_face = latin[rng.integers(len(latin))]
        if cjk_face is not None:  # a Chinese poster: all its text in the CJK face
            self.title_face = self.body_face = cjk_face
        self.image = Image.new("RGB", (w, h), self.bg)
        self.draw = ImageDraw.Draw(self.image)

    # -- primitives --------------------------------------------------------------------------
    def px(self, units: float) -> int:
        """``units`` of a 2048x1152 poster in this poster's pixels, at least 1."""
        return max(1, int(round(units * self.u)))

    def phrase(self, lo: int, hi: int, capital: bool = True) -> str:
        """``lo``..``hi`` random words (Chinese: terms) joined by spaces (Chinese: nothing)."""
        n = int(self.rng.integers(lo, hi + 1))
        s = self.sep.join(self.words[i] for i in self.rng.integers(len(self.words), size=n))
        return s[:1].upper() + s[1:] if capital else s

    def sentence(self) -> str:
        """A paragraph's sentence: 6-18 random words and a full stop, or a Chinese sentence."""
        if self.sentences:
            return self.sentences[int(self.rng.integers(len(self.sentences)))]
        return self.phrase(6, 18) + "."

    def ink(self) -> tuple[int, int, int]:
        """One of the three inks, red somewhat less often than black and grey."""
        return (self.red, self.black, self.grey)[self.rng.choice(3, p=(0.3, 0.4, 0.3))]

    def text(self, xy, s: str, size: float, fill, bold: bool = False, face: FontFace | None = None,
             anchor: str = "la", max_width: int | None = None) -> tuple[int, int, int, int]:
        """Draw ``s`` at ``xy`` (pixels) in ``size`` units, shortened (last words, then last
        letters dropped) to at most ``max_width`` pixels when given; returns its bounding box."""
        face = face or (self.title_face if bold else self.body_face)
        font = load_font(face, self.px(size), bold)
        if max_width is not None:
            while len(s) > 1 and font.getlength(s) > max_width:
                s = s.rsplit(" ", 1)[0] if " " in s else s[:-1]
        stroke = self.px(size) // 24 if bold and not face.bold else 0  # synthetic bold from 24 px
        self.drawn.append(s)
        self.draw.text(xy, s, font=font, fill=fill, anchor=anchor, stroke_width=stroke, stroke_fill=fill)
        return self.draw.textbbox(xy, s, font=font, anchor=anchor, stroke_width=stroke)

    def wrap(self, s: str, size: float, width: int, bold: bool = False) -> list[str]:
        """``s`` broken greedily into lines no wider than ``width`` pixels: between words, or
        (Chinese) between characters, never before a closing punctuation mark."""
        font = load_font(self.title_face if bold else self.body_face, self.px(size), bold)
        lines, line = [], ""
        if not self.sep:
            for ch in s:
                if line and font.getlength(line + ch) > width and ch not in NO_LINE_START:
                    lines.append(line)
                    line = ch
                else:
                    line += ch
            return lines + ([line] if line else [])
        for word in s.split():
            cand = f"{line} {word}".strip()
            if line and font.getlength(cand) > width:
                lines.append(line)
                line = word
            else:
                line = cand
        return lines + ([line] if line else [])

    def arrow(self, a, b, fill, width: int) -> None:
        """A straight arrow from ``a`` to ``b`` (pixels) with a filled triangular head."""
        (x0, y0), (x1, y1) = a, b
        ang = math.atan2(y1 - y0, x1 - x0)
        head = max(4, 4 * width)
        base = (x1 - head * math.cos(ang), y1 - head * math.sin(ang))
        self.draw.line([a, base], fill=fill, width=width)
        left = (base[0] + head * 0.5 * math.sin(ang), base[1] - head * 0.5 * math.cos(ang))
        right = (base[0] - head * 0.5 * math.sin(ang), base[1] + head * 0.5 * math.cos(ang))
        self.draw.polygon([(x1, y1), left, right], fill=fill)

    # -- blocks (each fills the box x0, y0, x1, y1) ------------------------------------------
    def paragraph(self, x0, y0, x1, y1) -> None:
        """A heading, then body text lines or a bullet list, until the box is full."""
        size = float(self.rng.uniform(20, 30))
        hb = self.text((x0, y0), self.phrase(2, 4), size * 1.35, self.ink(), bold=True, max_width=x1 - x0)
        y = hb[3] + self.px(size * 0.6)
        bullets = self.rng.random() < 0.4
        lead = self.px(size * 1.35)
        colour = self.black if self.rng.random() < 0.6 else self.grey
        while y + lead <= y1:
            indent = self.px(size * 1.2) if bullets else 0
            if bullets:
                r = self.px(size * 0.18)
                cy = y + self.px(size * 0.55)
                shape = self.draw.rectangle if self.rng.random() < 0.5 else self.draw.ellipse
                shape([x0 + r, cy - r, x0 + 3 * r, cy + r], fill=self.red)
            for line in self.wrap(self.sentence(), size, max(8, x1 - x0 - indent)):
                if y + lead > y1:
                    break
                self.text((x0 + indent, y), line, size, colour)
                y += lead
            y += self.px(size * 0.5)

    def photo(self, x0, y0, x1, y1) -> None:
        """A photograph cropped to the box's shape, in a frame, sometimes with a caption."""
        caption = self.rng.random() < 0.6
        cap = self.px(22) if caption else 0
        fw, fh = x1 - x0, y1 - y0 - (cap + self.px(10) if caption else 0)
        if fw < 4 or fh < 4:
            return
        src = self.photos[self.rng.integers(len(self.photos))]
        sh, sw = src.shape[:2]
        scale = max(fw / sw, fh / sh) * float(self.rng.uniform(1.0, 1.4))
        cw, ch = min(sw, max(1, round(fw / scale))), min(sh, max(1, round(fh / scale)))
        cx, cy = int(self.rng.integers(sw - cw + 1)), int(self.rng.integers(sh - ch + 1))
        crop = Image.fromarray(src[cy:cy + ch, cx:cx + cw]).resize((fw, fh), Image.Resampling.LANCZOS)
        if self.rng.random() < 0.4:
            off = self.px(8)
            self.draw.rectangle([x0 + off, y0 + off, x0 + fw + off, y0 + fh + off], fill=self.light)
        self.image.paste(crop, (x0, y0))
        border = self.px(float(self.rng.choice([1, 3, 6])))
        self.draw.rectangle([x0, y0, x0 + fw - 1, y0 + fh - 1], outline=self.ink(), width=border)
        if caption:
            self.text((x0, y0 + fh + self.px(8)), self.phrase(3, 7), 18, self.grey, max_width=fw)

    def chart(self, x0, y0, x1, y1) -> None:
        """A bar chart: title, axes, light grid, 4-8 bars in red and grey with value labels."""
        tb = self.text((x0, y0), self.phrase(2, 4), 24, self.black, bold=True, max_width=x1 - x0)
        n = int(self.rng.integers(4, 9))
        values = self.rng.integers(5, 100, size=n)
        lab = self.px(18)
        ax0, ay0, ax1, ay1 = x0 + self.px(44), tb[3] + self.px(28), x1 - self.px(8), y1 - lab - self.px(10)
        if ax1 - ax0 < 2 * n or ay1 - ay0 < 8:
            return
        for k in range(5):
            gy = ay1 - (ay1 - ay0) * k // 4
            self.draw.line([(ax0, gy), (ax1, gy)], fill=self.light, width=self.px(1))
            self.text((ax0 - self.px(6), gy), str(25 * k), 14, self.grey, anchor="rm")
        step = (ax1 - ax0) / n
        fills = (self.red, self.grey) if self.rng.random() < 0.5 else (self.red, self.black)
        for i, v in enumerate(values):
            bx0 = int(ax0 + step * (i + 0.2))
            bx1 = int(ax0 + step * (i + 0.8))
            by = int(ay1 - (ay1 - ay0) * v / 100)
            self.draw.rectangle([bx0, by, bx1, ay1], fill=fills[i % 2] if self.rng.random() < 0.7 else fills[0])
            self.text(((bx0 + bx1) // 2, by - self.px(4)), str(int(v)), 14, self.black, anchor="md")
            self.text(((bx0 + bx1) // 2, ay1 + self.px(6)), self.words[int(self.rng.integers(len(self.words)))],
                      14, self.grey, anchor="ma", max_width=int(step * 0.95))
        self.draw.line([(ax0, ay0), (ax0, ay1), (ax1, ay1)], fill=self.black, width=self.px(2))

    def table(self, x0, y0, x1, y1) -> None:
        """A table: a filled header row, words and numbers, rules, sometimes banded rows."""
        rows, cols = int(self.rng.integers(4, 9)), int(self.rng.integers(3, 6))
        rh = min(self.px(44), (y1 - y0) // (rows + 1))
        if rh < 3:
            return
        size = rh / self.u * 0.5
        cw = (x1 - x0) / cols
        head = self.red if self.rng.random() < 0.5 else self.black
        banded, vlines = self.rng.random() < 0.5, self.rng.random() < 0.4
        self.draw.rectangle([x0, y0, x1, y0 + rh], fill=head)
        for c in range(cols):
            self.text((int(x0 + cw * c + self.px(8)), y0 + rh // 2), self.phrase(1, 1), size, self.bg,
                      bold=True, anchor="lm", max_width=int(cw) - 2 * self.px(8))
        for r in range(1, rows + 1):
            ry = y0 + r * rh
            if banded and r % 2 == 0:
                self.draw.rectangle([x0, ry, x1, ry + rh], fill=self.light)
            for c in range(cols):
                cell = (f"{self.rng.uniform(0, 1000):.1f}" if c else self.phrase(1, 2))
                self.text((int(x0 + cw * c + self.px(8)), ry + rh // 2), cell, size,
                          self.black if c else self.grey, anchor="lm", max_width=int(cw) - 2 * self.px(8))
            self.draw.line([(x0, ry + rh), (x1, ry + rh)], fill=self.grey, width=self.px(1))
        if vlines:
            for c in range(1, cols):
                vx = int(x0 + cw * c)
                self.draw.line([(vx, y0), (vx, y0 + (rows + 1) * rh)], fill=self.grey, width=self.px(1))
        self.draw.rectangle([x0, y0, x1, y0 + (rows + 1) * rh], outline=self.black, width=self.px(2))

    def diagram(self, x0, y0, x1, y1) -> None:
        """3-4 labelled boxes (square or rounded) in a row or column, joined by arrows."""
        n = int(self.rng.integers(3, 5))
        across = (x1 - x0) >= (y1 - y0)
        gap = self.px(40)
        length = (x1 - x0 if across else y1 - y0) - gap * (n - 1)
        if length < n * 4:
            return
        side = length // n
        thick = self.px(float(self.rng.choice([2, 3, 5])))
        rounded = self.rng.random() < 0.5
        centres = []
        for i in range(n):
            if across:
                bh = min(y1 - y0, self.px(160))
                box = [x0 + i * (side + gap), (y0 + y1 - bh) // 2, x0 + i * (side + gap) + side, (y0 + y1 + bh) // 2]
            else:
                bw = min(x1 - x0, self.px(360))
                box = [(x0 + x1 - bw) // 2, y0 + i * (side + gap), (x0 + x1 + bw) // 2, y0 + i * (side + gap) + side]
            filled = self.rng.random() < 0.3
            colour = self.ink()
            if rounded:
                self.draw.rounded_rectangle(box, radius=self.px(18), outline=colour, width=thick,
                                            fill=colour if filled else None)
            else:
                self.draw.rectangle(box, outline=colour, width=thick, fill=colour if filled else None)
            centre = ((box[0] + box[2]) // 2, (box[1] + box[3]) // 2)
            size = min(22.0, (box[2] - box[0]) / self.u / 8)
            self.text(centre, self.phrase(1, 2), size, self.bg if filled else self.black, anchor="mm",
                      max_width=box[2] - box[0] - 2 * thick - self.px(6))
            centres.append(box)
        colour = self.red if self.rng.random() < 0.6 else self.black
        for a, b in zip(centres, centres[1:]):
            if across:
                my = (a[1] + a[3]) // 2
                self.arrow((a[2] + self.px(4), my), (b[0] - self.px(4), my), colour, thick)
            else:
                mx = (a[0] + a[2]) // 2
                self.arrow((mx, a[3] + self.px(4)), (mx, b[1] - self.px(4)), colour, thick)

    def callout(self, x0, y0, x1, y1) -> None:
        """A large figure (``87%``, ``2,450``) in red with a caption, in a box or a circle."""
        value = (f"{int(self.rng.integers(10, 100))}%" if self.rng.random() < 0.5
                 else f"{int(self.rng.integers(1, 10))},{int(self.rng.integers(0, 1000)):03d}")
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        size = min(120.0, (y1 - y0) / self.u * 0.35, (x1 - x0) / self.u * 0.25)
        while size > 8 and load_font(self.title_face, self.px(size), True).getlength(value) > 0.7 * min(x1 - x0, y1 - y0):
            size *= 0.9
        if self.rng.random() < 0.5:
            r = min(x1 - x0, y1 - y0) // 2 - self.px(4)
            self.draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=self.red, width=self.px(4))
        else:
            self.draw.rectangle([x0, y0, x1, y1], outline=self.black, width=self.px(3))
        self.text((cx, cy), value, size, self.red, bold=True, anchor="mm")
        self.text((cx, cy + self.px(size * 0.6)), self.phrase(2, 4), max(12.0, size * 0.2), self.grey,
                  anchor="ma", max_width=x1 - x0)

    # -- the page ------------------------------------------------------------------------------
    def header(self, m: int) -> int:
        """Title and subtitle (plain, or white on a red/black band); returns the body's top."""
        title = self.phrase(2, 4)
        sub = self.sentence() if self.sentences else self.phrase(4, 9)  # Chinese: a sentence
        tsize, ssize = float(self.rng.uniform(80, 120)), float(self.rng.uniform(34, 48))
        while tsize > 30 and load_font(self.title_face, self.px(tsize), True).getlength(title) > self.w - 2 * m:
            tsize *= 0.9
        banded = self.rng.random() < 0.4
        band = self.red if self.rng.random() < 0.6 else self.black
        top = m
        if banded:
            bh = self.px(tsize * 1.5)
            self.draw.rectangle([0, 0, self.w, m + bh], fill=band)
            self.text((m, m + bh // 2), title, tsize, self.bg, bold=True, anchor="lm")
            top = m + bh + self.px(24)
        else:
            tb = self.text((m, top), title, tsize, self.red if self.rng.random() < 0.5 else self.black, bold=True)
            top = tb[3] + self.px(24)
        sb = self.text((m, top), sub, ssize, self.grey if self.rng.random() < 0.6 else self.black,
                       max_width=self.w - 2 * m)
        top = sb[3] + self.px(12)
        rule = self.px(float(self.rng.choice([2, 4, 8])))
        self.draw.rectangle([m, top + self.px(8), self.w - m, top + self.px(8) + rule],
                            fill=self.red if not banded or band != self.red else self.black)
        return top + self.px(8) + rule + self.px(28)

    def footer(self, m: int) -> int:
        """A rule and a line of small text at the bottom; returns the footer's top."""
        size = float(self.rng.uniform(14, 18))
        y = self.h - m - self.px(size * 1.2)
        self.draw.line([(m, y - self.px(10)), (self.w - m, y - self.px(10))], fill=self.grey, width=self.px(2))
        self.text((m, y), self.phrase(6, 12) + f" · {int(self.rng.integers(1, 31))}.{int(self.rng.integers(1, 13))}",
                  size, self.grey, max_width=int((self.w - 2 * m) * 0.7))
        self.text((self.w - m, y), self.phrase(2, 3), size, self.red, bold=True, anchor="ra")
        return y - self.px(30)

    def paint(self) -> np.ndarray:
        """Draw the whole poster; returns ``(H, W, 3) uint8``."""
        m = self.px(float(self.rng.uniform(40, 70)))
        top = self.header(m)
        bottom = self.footer(m)
        cols = int(self.rng.integers(2, 5 if self.w >= self.h else 3))
        rows = int(np.clip((bottom - top) // self.px(350), 1, 3))
        kinds = ["photo", "chart", "table", "diagram"] + (["paragraph"] if self.sentences else [])
        cols = max(cols, math.ceil(len(kinds) / rows))  # room for each of these kinds
        extra = ["paragraph", "paragraph", "photo", "callout", "paragraph", "diagram"]
        while len(kinds) < rows * cols:
            kinds.append(extra[int(self.rng.integers(len(extra)))])
        order = self.rng.permutation(len(kinds))
        gutter = self.px(40)
        cw = (self.w - 2 * m - gutter * (cols - 1)) / cols
        rh = (bottom - top - gutter * (rows - 1)) / rows
        for k, idx in enumerate(order):
            r, c = divmod(k, cols)
            x0, y0 = int(m + c * (cw + gutter)), int(top + r * (rh + gutter))
            x1, y1 = int(x0 + cw), int(y0 + rh)
            if x1 - x0 < 8 or y1 - y0 < 8:
                continue
            getattr(self, kinds[idx])(x0, y0, x1, y1)
            if c and self.rng.random() < 0.3:  # a vertical rule in the gutter
                vx = x0 - gutter // 2
                self.draw.line([(vx, y0), (vx, y1)], fill=self.light if self.rng.random() < 0.5 else self.red,
                               width=self.px(2))
        return np.asarray(self.image, dtype=np.uint8).copy()


def _lot(seed: int, index: int) -> np.random.Generator:
    """The random stream that decides whether poster ``index`` of ``seed`` is Chinese and in
    which CJK face: apart from the drawing's, so that Latin posters do not depend on it."""
    return np.random.default_rng([int(seed), int(index), 0xC7C])


def is_chinese(seed: int, index: int, cjk_share: float) -> bool:
    """Whether poster ``index`` of ``seed`` is Chinese at ``cjk_share`` (in [0, 1]): a draw
    from the seed and index alone, so raising the share only turns more posters Chinese."""
    if not 0.0 <= cjk_share <= 1.0:
        raise ValueError(f"cjk_share must be in [0, 1], got {cjk_share}")
    return bool(_lot(seed, index).random() < cjk_share)


def render(seed: int, index: int, size: tuple[int, int], *, photos: Sequence[np.ndarray],
           fonts: Sequence[FontFace] | None = None, words: str = "train", cjk_share: float = 0.0,
           texts: list[str] | None = None) -> np.ndarray:
    """Poster ``index`` of ``seed``: ``(H, W, 3) uint8`` with ``size = (W, H)``.

    ``photos``: at least one ``(h, w, 3) uint8`` image to place in frames; ``fonts``: the
    families to draw with (default ``available_fonts()``); ``words``: ``"train"`` or
    ``"heldout"``; ``cjk_share``: the chance (in [0, 1]) that the poster is Chinese
    (``is_chinese``), drawn in one of the CJK faces of ``fonts`` (ValueError when it is above
    0 and there is none). ``texts``: when given, every string drawn is appended to it.
    Pure function of its arguments (and the font files).
    """
    w, h = size
    if not photos:
        raise ValueError("render needs at least one photo")
    fonts = list(fonts or available_fonts())
    cjk = [f for f in fonts if f.cjk]
    if cjk_share > 0 and not cjk:
        raise ValueError(f"cjk_share {cjk_share} needs a CJK font among the fonts; install {CJK_PACKAGE}")
    chinese, face = is_chinese(seed, index, cjk_share), None
    if chinese:  # the face: the lot's second draw (its first decided the language)
        lot = _lot(seed, index)
        lot.random()
        face = cjk[int(lot.integers(len(cjk)))]
    rng = np.random.default_rng([int(seed), int(index), 0x9057E5])
    painter = _Painter(rng, w, h, fonts, text_source(words, chinese), photos, cjk_face=face)
    image = painter.paint()
    if texts is not None:
        texts.extend(painter.drawn)
    return image


def load_photos(folder: str | os.PathLike | None, size: tuple[int, int]) -> list[np.ndarray]:
    """The photographs to frame, each ``(h, w, 3) uint8`` no larger than half the poster's
    long side: read from ``folder`` (``images.read_rgb``; UsageError naming a bad folder or
    file) or, when None, scikit-image's built-in photographs (``data.samples``)."""
    from edsr_jax.data import samples
    from edsr_jax.io.images import ImageError, image_folder, read_rgb

    paths = (image_folder(folder) if folder is not None
             else samples.builtin_images("train") + samples.builtin_images("val"))
    limit = max(32, max(size) // 2)
    photos = []
    for p in paths:
        try:
            img = Image.fromarray(read_rgb(p))
        except ImageError as e:
            raise UsageError(f"--photos: {e}") from None
        img.thumbnail((limit, limit), Image.Resampling.LANCZOS)
        photos.append(np.asarray(img, dtype=np.uint8))
    return photos


def parse_size(text: str) -> tuple[int, int]:
    """``"2048x1152"`` -> ``(2048, 1152)`` (width, height), each in [64, 16384]; ValueError else."""
    m = re.fullmatch(r"\s*(\d{1,6})\s*[xX]\s*(\d{1,6})\s*", text)
    if not m:
        raise ValueError(f"expected WIDTHxHEIGHT like 2048x1152, got {text!r}")
    w, h = int(m.group(1)), int(m.group(2))
    if not (MIN_SIZE <= w <= MAX_SIDE and MIN_SIZE <= h <= MAX_SIDE):
        raise ValueError(f"{text!r}: width and height must be in [{MIN_SIZE}, {MAX_SIDE}]")
    return w, h


def poster_name(seed: int, index: int, count: int) -> str:
    """``poster-s<seed>-<index>.png``, the index zero-padded to at least 4 digits."""
    return f"poster-s{seed}-{index:0{max(4, len(str(count - 1)))}d}.png"


def generate(out: str | os.PathLike, count: int, size: tuple[int, int], seed: int, *,
             photos_dir: str | os.PathLike | None = None, fonts: str | None = None,
             words: str = "train", cjk_share: float = 0.0, overwrite: bool = False, progress: bool = False,
             not_written: list[str] | None = None) -> list[Path]:
    """Write ``count`` posters of ``size = (W, H)`` into ``out`` (created) and the record
    ``posters-s<seed>.json``; returns the poster paths written. ``cjk_share`` (in [0, 1]): the
    share of Chinese posters (``render``); above 0 it needs a CJK font among ``fonts``
    (UsageError naming ``--cjk-share`` and the package to install).

    Every target is checked first: an existing one is a UsageError unless ``overwrite``, a
    photograph of ``photos_dir`` is never a target; files appear atomically (``outputs``).
    A file another process creates under a target's name after that check is left as it is
    (``outputs.TakenMeanwhile``): with a ``not_written`` list its message goes there and the
    other posters are still written (the record lists only the posters written); without
    one, the TakenMeanwhile is raised.
    """
    from edsr_jax.io import outputs
    from edsr_jax.io.images import write_image

    faces = select_fonts(fonts)
    if not 0.0 <= cjk_share <= 1.0:
        raise UsageError(f"--cjk-share {cjk_share}: must be in [0, 1]")
    if cjk_share > 0 and not any(f.cjk for f in faces):
        raise UsageError(f"--cjk-share {cjk_share}: no CJK font among the fonts "
                         f"({', '.join(f.name for f in faces)}); install {CJK_PACKAGE}")
    photos = load_photos(photos_dir, size)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    names = [poster_name(seed, i, count) for i in range(count)] + [f"posters-s{seed}.json"]
    targets = [outputs.inside(out, n, option="--out") for n in names]
    inputs = [] if photos_dir is None else list(Path(photos_dir).iterdir())
    for t in targets:
        outputs.check_not_input(t, inputs, option="--out")
        if (t.exists() or t.is_symlink()) and not overwrite:
            raise UsageError(f"{t}: exists (pass --overwrite to replace it)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise outputs.write_error(out, e) from None

    def publish(write: Callable[[], Path]) -> Path | None:
        try:
            return write()
        except outputs.TakenMeanwhile as e:
            if not_written is None:
                raise
            not_written.append(str(e))
            return None

    written = []
    for i, t in enumerate(targets[:-1]):
        arr = render(seed, i, size, photos=photos, fonts=faces, words=words, cjk_share=cjk_share)
        if publish(lambda: write_image(t, arr, overwrite=overwrite, compress_level=6)) is not None:
            written.append(t)
        if progress:
            print(f"\r{i + 1}/{count} posters", end="", file=sys.stderr, flush=True)
    if progress and count:
        print(file=sys.stderr)
    record = {"seed": seed, "count": count, "size": list(size), "words": words, "cjk_share": cjk_share,
              "chinese": [t.name for i, t in enumerate(targets[:-1])
                          if t in written and is_chinese(seed, i, cjk_share)],
              "photos": str(photos_dir) if photos_dir is not None else "builtin",
              "fonts": [{"name": f.name, "regular": f.regular, "bold": f.bold, "cjk": f.cjk} for f in faces],
              "files": [p.name for p in written]}
    publish(lambda: outputs.atomic_write(targets[-1], json.dumps(record, indent=1) + "\n", overwrite=overwrite))
    return written
