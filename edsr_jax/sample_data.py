"""Built-in default data: colour photographs that scikit-image ships in its wheel.

They let the main job run on a fresh machine with no dataset and no download.
The images and their licences are listed in scikit-image's ``skimage/data/README.txt``
(public domain or CC-licensed photographs). Training and validation images are disjoint.

``python -m edsr_jax.sample_data OUT`` copies them to ``OUT/train`` and ``OUT/val`` as
ordinary files, so every CLI example (prepare, evaluate, upscale) runs on a fresh clone.
The list and the paths are ``edsr_jax.data.samples``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from edsr_jax.data.samples import TRAIN, VAL, builtin_images


def main(argv: Sequence[str] | None = None) -> int:
    """Copy the built-in photographs to ``OUT/train`` and ``OUT/val``; returns 0.

    A file already there with the same bytes is left as it is (running twice is fine); a
    different one is a UsageError unless ``--overwrite``."""
    from edsr_jax.io import cli
    from edsr_jax.io import outputs

    p = cli.ArgumentParser(prog="python -m edsr_jax.sample_data",
                           description="Copy the built-in sample photographs (scikit-image's) to "
                                       "OUT/train (6 images) and OUT/val (2 images).")
    p.add_argument("out", metavar="OUT", help="folder to write train/ and val/ into (created)")
    p.add_argument("--overwrite", action="store_true", help="replace files of the same name that differ")
    args = p.parse_args(argv)
    out = Path(args.out)
    plan = [(src, out / split / src.name) for split in ("train", "val") for src in builtin_images(split)]
    for src, dst in plan:
        if dst.exists() and not args.overwrite and dst.read_bytes() != src.read_bytes():
            raise cli.UsageError(f"{dst}: exists and differs (pass --overwrite to replace it)")
    written = 0
    for src, dst in plan:
        if dst.exists() and dst.read_bytes() == src.read_bytes():
            continue
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise outputs.write_error(dst.parent, e) from None
        outputs.atomic_write(dst, src.read_bytes(), overwrite=True)
        written += 1
    print(f"{out}/train: {len(TRAIN)} images, {out}/val: {len(VAL)} images ({written} written)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    from edsr_jax.io import cli as _cli

    sys.exit(_cli.run(main))
