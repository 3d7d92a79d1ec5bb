"""Draw synthetic posters as PNG training images (``edsr_jax.data.posters``).

    python -m edsr_jax.posters --out DIR --count N --size 2048x1152 --seed S [--photos DIR]
        [--fonts A,B] [--words train|heldout] [--cjk-share F] [--overwrite]
    python -m edsr_jax.posters --list-fonts

writes ``poster-s<S>-<i>.png`` (RGB) and ``posters-s<S>.json`` (what was drawn with). The same
seed and the same installed fonts give bit-identical files; poster ``i`` of a seed does not
depend on ``--count``. Held-out sets: another seed, ``--words heldout`` (Latin words and Chinese
text disjoint from ``train``'s) and ``--fonts`` (a subset of ``--list-fonts``). A share of the
posters are Chinese (``--cjk-share``, default 0.5 when a CJK font is among the fonts, else 0:
said in the summary line, with the package to install).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from edsr_jax.data.fonts import CJK_PACKAGE, available_fonts, select_fonts
from edsr_jax.data.posters import generate, parse_size
from edsr_jax.io import cli
from edsr_jax.io.cli import UsageError


DEFAULT_CJK_SHARE = 0.5  # --cjk-share when a CJK font is among the fonts


def _size_arg(text: str) -> tuple[int, int]:
    """``--size``: ``parse_size``, its ValueError as argparse's error for the option."""
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _share_arg(text: str) -> float:
    """``--cjk-share``: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The CLI's ``cli.ArgumentParser``."""
    p = cli.ArgumentParser(prog="python -m edsr_jax.posters",
                           description="Draw synthetic posters (red, black and grey text, rules, boxes, "
                                       "arrows, a bar chart, a table, framed photographs on a light "
                                       "background) as PNG training images; deterministic per seed.")
    p.add_argument("--out", help="folder to write poster-s<SEED>-<i>.png and posters-s<SEED>.json into (created)")
    p.add_argument("--count", type=cli.whole_number(1), default=10, help="how many posters (default 10)")
    p.add_argument("--size", type=_size_arg, default=(2048, 1152), help="WIDTHxHEIGHT in pixels (default 2048x1152)")
    p.add_argument("--seed", type=cli.whole_number(0), default=0, help="random seed, 0 or more (default 0)")
    p.add_argument("--photos", default=None,
                   help="folder of photographs to place in frames (default: the built-in sample photographs)")
    p.add_argument("--fonts", default=None,
                   help="comma-separated font families to use (default: all of --list-fonts)")
    p.add_argument("--words", choices=("train", "heldout"), default="train",
                   help="word list: 'train' or the disjoint 'heldout' (for held-out test posters)")
    p.add_argument("--cjk-share", type=_share_arg, default=None,
                   help="share of Chinese posters, in [0, 1] (default 0.5 when a CJK font is among "
                        "the fonts, else 0); above 0 it needs a CJK font (see --list-fonts)")
    p.add_argument("--list-fonts", action="store_true", help="print the available font families and exit")
    p.add_argument("--overwrite", action="store_true", help="replace posters of the same name")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options, write the posters, print a one-line summary to stderr; returns 0, or 1
    when another process created some of the files meanwhile (each named in a ``not written:``
    line; its file is left as it is, the others are written)."""
    args = build_parser().parse_args(argv)
    if args.list_fonts:
        for f in available_fonts():
            print(f"{f.name}\t{f.regular or 'built into Pillow'}{'  (CJK)' if f.cjk else ''}")
        return 0
    if not args.out:
        raise UsageError("--out is required")
    faces = select_fonts(args.fonts)
    has_cjk = any(f.cjk for f in faces)
    share = args.cjk_share if args.cjk_share is not None else (DEFAULT_CJK_SHARE if has_cjk else 0.0)
    not_written: list[str] = []
    paths = generate(args.out, args.count, args.size, args.seed, photos_dir=args.photos, fonts=args.fonts,
                     words=args.words, cjk_share=share, overwrite=args.overwrite, progress=sys.stderr.isatty(),
                     not_written=not_written)
    for line in not_written:
        print(f"not written: {line}", file=sys.stderr)
    print(f"{args.out}: {len(paths)} posters {args.size[0]}x{args.size[1]} (seed {args.seed}, "
          f"fonts: {', '.join(f.name for f in faces)}; Chinese share {share:g}"
          f"{'' if has_cjk or args.fonts else f': no CJK font installed, install {CJK_PACKAGE}'})",
          file=sys.stderr)
    if not_written:
        print(f"{len(not_written)} file(s) not written: another process created them first (see above)",
              file=sys.stderr)
    return 1 if not_written else 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
