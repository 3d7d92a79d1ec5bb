"""Prepare a training set in the DIV2K layout from a folder of HR images.

    python -m edsr_jax.prepare HR_DIR --out DIR [--scales 2 3 4] [--spec "bicubic"]
        [--name NAME] [--tiles RxC | --tile-size N [--overlap K]] [--seed 0]
        [--workers K] [--overwrite]

writes, for image number ``i`` (1-based, in name order of ``HR_DIR``) and scale ``s``::

    OUT/HR/0001.png                      HR, cropped to a multiple of lcm(scales)
    OUT/LR_<name>/X<s>/0001x<s>.png      its degraded LR
    OUT/manifest.json                    settings and, per output, source, tile box,
                                         spec, sampled parameters, seed and paths

The preparation itself (tiling, seeds, resuming) is ``edsr_jax.data.prepare`` and the
manifest ``edsr_jax.data.manifest``; this module is the command line.

With tiling each tile is its own pair, ``0001_01.png``, ``0001_02.png`` ... (row-major):
``--tiles 2x2`` cuts every image into a 2 x 2 grid (a poster cut in four), and
``--tile-size N --overlap K`` cuts N x N tiles every N - K pixels, the last row and
column of tiles flush with the image's edges. Every HR tile is cropped (bottom and right)
to a multiple of every requested scale.

The spec (see ``edsr_jax.degradation.degrade``) is written once for all scales with its resize
factor left open, ``"blur(0.5,1.5) > bicubic > jpeg(30,90)"`` (or ``bicubic(S)``); each
scale fills it in. ``--name`` defaults to the operator names joined by ``_``
(``bicubic``, ``blur_bicubic_jpeg``). Random parameters use a generator seeded from
``(seed, image number, tile number, scale)``: outputs do not depend on ``--workers``.

A second LR variant (another ``--spec`` / ``--name``, or other scales) is added to an existing
OUT by running again with another ``--name`` and the same tiling: the HR files are shared,
not written again, and the variant's LR folder and records are kept in the manifest under
``variants`` (its scales must divide the HR crop: a multiple of the first variant's scales).

Re-running resumes: finished outputs (file present and recorded in the manifest) are
skipped; a file present but not recorded (an interrupted run) is kept when it holds
exactly what would be written and reported as a conflict otherwise. Nothing is
overwritten without ``--overwrite``, and an OUT made with other settings is refused.
Unreadable images are listed at the end and make the exit code 1.

Ctrl-C or SIGTERM: the running images finish, the manifest is saved, one line says how to
resume (exit 130 / 143); ``kill -9`` leaves no worker running (they die with the command).
One ``prepare`` per OUT at a time: a second one is one ``error:`` line (exit 2).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Sequence

from edsr_jax.data.manifest import MANIFEST
from edsr_jax.data.prepare import Summary, prepare
from edsr_jax.io import cli


def parse_tiles(text: str) -> tuple[int, int]:
    """``"RxC"`` (e.g. ``"2x2"``, ``"3x4"``) -> ``(rows, cols)``; raises ValueError."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(f"--tiles {text!r}: expected ROWSxCOLS with positive numbers, e.g. 2x2")
    if max(len(m.group(1)), len(m.group(2))) > 4 or max(int(m.group(1)), int(m.group(2))) > 1024:
        raise ValueError(f"--tiles {text[:40]!r}: at most 1024 rows and columns")
    return int(m.group(1)), int(m.group(2))


def report(summary: Summary, out: Path) -> None:
    """Print the end-of-run summary to stdout (problems to stderr)."""
    print(f"{summary.written} written, {summary.done + summary.adopted} already present "
          f"({summary.adopted} recovered from an interrupted run), "
          f"{summary.skipped_done} of {summary.images} images already finished; "
          f"manifest: {out / MANIFEST}")
    if summary.notes:
        print(f"{len(summary.notes)} image(s) converted to RGB (see notes above)")
    for title, items in (("too small, skipped", summary.small),
                         ("unreadable, skipped", summary.unreadable),
                         ("conflicts, not written", summary.conflicts)):
        if items:
            print(f"{len(items)} {title}:", file=sys.stderr)
            for item in items:
                print(f"  {item}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    """The prepare command's options (a ``cli.ArgumentParser``: errors raise UsageError)."""
    from edsr_jax.degradation.degrade import SPEC_HELP

    p = cli.ArgumentParser(prog="python -m edsr_jax.prepare",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Write a DIV2K-layout training set (HR, LR_<name>/X<s>, "
                                       "manifest.json) from a folder of HR images.",
                           epilog=SPEC_HELP)
    p.add_argument("hr_dir", metavar="HR_DIR", help="folder of HR images")
    p.add_argument("--out", required=True, help="output folder (created when missing)")
    p.add_argument("--scales", type=int, nargs="+", default=[2, 3, 4],
                   help="downscale factors among 2 3 4 (default: 2 3 4)")
    p.add_argument("--spec", default="bicubic",
                   help="degradation spec with the resize factor left open, e.g. "
                        "'blur(0.5,1.5) > bicubic > jpeg(30,90)' (default: bicubic; grammar below)")
    p.add_argument("--name", default=None,
                   help="LR folder name LR_<name> (default: the spec's operator names joined by _)")
    p.add_argument("--tiles", default=None, metavar="RxC",
                   help="cut every image into a grid of R rows and C columns, e.g. 2x2")
    p.add_argument("--tile-size", type=int, default=None, metavar="N",
                   help="cut N x N tiles (N a multiple of every scale)")
    p.add_argument("--overlap", type=int, default=None, metavar="K",
                   help="overlap of --tile-size tiles in pixels (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled degradations (default 0)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="worker processes (default: CPU count, at most 8)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs and a manifest made with other settings")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The prepare CLI; returns ``summary.exit_code`` (0, or 1 when some image was skipped;
    usage errors: ``cli.UsageError``, exit 2)."""
    args = build_parser().parse_args(argv)
    tiling = None
    if args.tiles is not None:
        if args.tile_size is not None:
            raise cli.UsageError("--tiles and --tile-size exclude each other; give one")
        try:
            tiling = {"grid": list(parse_tiles(args.tiles))}
        except ValueError as e:
            raise cli.UsageError(str(e)) from None
    elif args.tile_size is not None:
        tiling = {"size": args.tile_size, "overlap": args.overlap or 0}
    elif args.overlap is not None:
        raise cli.UsageError("--overlap applies to --tile-size tiles; give --tile-size N too")
    try:
        summary = prepare(args.hr_dir, args.out, spec=args.spec, scales=args.scales, name=args.name,
                          tiling=tiling, seed=args.seed, workers=args.workers,
                          overwrite=args.overwrite, progress=not args.no_progress)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (cli.Terminated): the manifest is saved
        e.hint = (f"prepare stopped; what was written is recorded in {Path(args.out) / MANIFEST}: "
                  "re-run the same command to resume")
        raise
    report(summary, Path(args.out))
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(cli.run(main))
