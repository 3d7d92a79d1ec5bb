"""Diagnose the damage: estimate how a folder of low-resolution images was degraded (JPEG
quality, nearest / bicubic / bilinear resampling, upscaled-back factor, blur, noise) and print
the degradation spec to train with.

    python -m edsr_jax.diagnose LR_DIR [--scale 2] [--json out.json] [--table]

The estimation is ``edsr_jax.evaluation.diagnosis`` (per image, the folder's proposal, the
report), ``jpeg_quality`` and ``estimators`` beside it. Exit codes: 0 done, 1 some files
skipped (named), 2 a usage error.

The analysis is many small array operations per image, for which BLAS / OpenMP thread pools
only spin: with one per core on a busy or many-core machine they oversubscribe it (24 images
on 2 cores beside two busy processes: 4.4-7.1 s with two threads, 2.6-2.9 s with one; idle:
1.9 s either way, half the CPU time with one). The
command therefore runs with one thread (``ONE_THREAD_VARS``, set before NumPy and SciPy load
their BLAS) unless the environment already names a count.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

ONE_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
if __name__ == "__main__":  # the command (not an import): before NumPy loads below
    for _var in ONE_THREAD_VARS:
        os.environ.setdefault(_var, "1")

from edsr_jax import SCALES  # noqa: E402
from edsr_jax.evaluation.diagnosis import Skipped, diagnose_folder, report  # noqa: E402
from edsr_jax.io import cli, images, outputs  # noqa: E402


def build_parser() -> cli.ArgumentParser:
    """The diagnose CLI's options."""
    p = cli.ArgumentParser(
        prog="python -m edsr_jax.diagnose",
        description="Estimate how a folder of low-resolution images was degraded (JPEG quality, "
                    "resampling, blur, noise) and print the degradation spec to train with.")
    p.add_argument("lr_dir", metavar="LR_DIR", help="folder of the low-resolution images")
    p.add_argument("--scale", type=int, choices=SCALES, default=None,
                   help="SR factor to propose the spec for (default: the factor the images were "
                        "upscaled back by, if any, else 2)")
    p.add_argument("--json", metavar="OUT", default=None,
                   help="also write the per-image diagnoses and the proposal to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--table", action="store_true",
                   help="print the per-image table even when the folder looks uniform")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 done, 1 some files skipped, 2 usage error)."""
    args = build_parser().parse_args(argv)
    paths = images.image_folder(args.lr_dir)
    out = None
    if args.json:
        out = Path(args.json)
        outputs.check_not_input(out, paths, option="--json")
        if out.exists() and not args.overwrite:
            raise cli.UsageError(f"--json {out}: exists (pass --overwrite to replace it)")
        if not out.parent.is_dir():
            raise cli.UsageError(f"--json {out}: folder {out.parent} does not exist")
    t0 = time.perf_counter()
    try:
        fd = diagnose_folder(args.lr_dir, args.scale)
    except Skipped as e:
        raise cli.UsageError(str(e)) from None
    wall = time.perf_counter() - t0
    print(report(fd, args.table))
    cpu = sum(d.seconds for d in fd.images)
    print(f"{len(fd.images)} images diagnosed in {wall:.1f} s ({cpu / max(len(fd.images), 1) * 1000:.0f} ms "
          f"of CPU each for the analysis)", file=sys.stderr)
    if out is not None:
        record = {"spec": fd.spec, "scale": fd.scale, "parts": [asdict(p) for p in fd.parts],
                  "mixed": fd.mixed, "skipped": fd.skipped, "images": [asdict(d) for d in fd.images]}
        try:
            outputs.atomic_write(out, outputs.json_text(record, indent=1) + "\n", overwrite=args.overwrite)
        except FileExistsError as e:  # outputs.TakenMeanwhile: another process wrote it meanwhile
            raise cli.UsageError(f"--json {e}") from None
    return 1 if fd.skipped else 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
