"""List the trained models shipped inside the package (``edsr_jax.inference.pretrained``):

    python -m edsr_jax.pretrained                  # name, summary and Set5 PSNR of each, and auto
    python -m edsr_jax.pretrained --card NAME      # one model's whole card (JSON)

``upscale``, ``evaluate`` and ``export`` run them with ``--model NAME``.
"""

from __future__ import annotations

import json
import sys
from typing import Sequence

from edsr_jax.inference import pretrained
from edsr_jax.io import cli


def main(argv: Sequence[str] | None = None) -> int:
    """List the built-in models (name, summary, Set5 PSNR), or print one card; returns 0."""
    p = cli.ArgumentParser(prog="python -m edsr_jax.pretrained",
                           description="List the trained models shipped with edsr-jax "
                                       "(use them with --model NAME in upscale, evaluate, export).")
    p.add_argument("--card", metavar="NAME", help="print this model's whole card (JSON)")
    args = p.parse_args(argv)
    if args.card:
        try:
            print(json.dumps(pretrained.card(args.card), indent=1))
        except ValueError as e:
            raise cli.UsageError(f"--card {args.card}: {e}") from None
        return 0
    for name in pretrained.names():
        print(pretrained.describe(name) + (" (default)" if name == pretrained.DEFAULT else ""))
    if pretrained.DEFAULT == pretrained.AUTO:
        print(f"{pretrained.AUTO}: per image, the model above whose training damage is nearest the one "
              "diagnosed in it; where that is uncertain or the image looks drawn, the model or blend that "
              "scored best on calibration images diagnosed alike (default)")
    if len(pretrained.names()) > 1:
        print("A+B: a blend, the mean of the named models' outputs (e.g. photo-x2+general-x2; one scale)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
