"""Run an exported EDSR StableHLO artifact with only JAX and NumPy (no Flax, no model code).

An artifact written by ``python -m edsr_jax.export --format stablehlo`` is one file:

    line 1: ``EDSRJAX-STABLEHLO 1``
    line 2: a JSON header (``name``, ``scale``, ``model``, ``input``, ``output``, ``platforms``, ...)
    rest:   ``jax.export`` serialized bytes of ``f(x: (b, h, w, 3) float32 in [0, 255])
            -> (b, h*s, w*s, 3) float32`` with the weights baked in as constants

Batch, height and width are symbolic: any size runs (each new shape is compiled once).
Serialized artifacts are tied to a window of JAX versions; re-export from the checkpoint
(the lasting artifact) when a newer JAX refuses one.

Usage: ``python -m edsr_jax.stablehlo_runner MODEL.stablehlo INPUT.png OUTPUT.png``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
from jax import export

from edsr_jax import cli, xla_options

MAGIC = b"EDSRJAX-STABLEHLO 1\n"


def pack(header: dict, blob: bytes) -> bytes:
    """The artifact file's bytes: magic line, one-line JSON header, serialized export."""
    return MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + bytes(blob)


def unpack(data: bytes) -> tuple[dict, bytes]:
    """Split an artifact's bytes into ``(header dict, serialized export)``; ValueError when
    the bytes are not an artifact of this format."""
    if not data.startswith(MAGIC):
        raise ValueError("not an edsr-jax StableHLO artifact (missing the 'EDSRJAX-STABLEHLO 1' line)")
    end = data.index(b"\n", len(MAGIC))
    return json.loads(data[len(MAGIC):end]), data[end + 1:]


class StableHLOModel:
    """A loaded artifact: ``model(lr uint8) -> uint8``, ``model.predict(lr) -> float32``."""

    def __init__(self, header: dict, exported):
        self.header = header
        self.exported = exported
        self.scale = int(header["scale"])
        self.name = str(header.get("name", "edsr"))
        self._call = jax.jit(exported.call, compiler_options=xla_options.compiler_options())

    def predict(self, lr) -> np.ndarray:
        """``(H, W, 3)`` or ``(N, H, W, 3)`` uint8 or float in [0, 255] -> float32
        ``(..., H*s, W*s, 3)``, not clipped."""
        lr = np.asarray(lr)
        if lr.ndim not in (3, 4) or lr.shape[-1] != 3:
            raise ValueError(f"expected an (H, W, 3) or (N, H, W, 3) image, got shape {lr.shape}")
        batch = lr if lr.ndim == 4 else lr[None]
        out = np.asarray(self._call(batch.astype(np.float32)))
        return out if lr.ndim == 4 else out[0]

    def __call__(self, lr) -> np.ndarray:
        """Like ``predict``, rounded and clipped to uint8."""
        return np.clip(np.round(self.predict(lr)), 0, 255).astype(np.uint8)


def load(path: str | Path) -> StableHLOModel:
    """Read an artifact file (see the module docstring)."""
    header, blob = unpack(Path(path).read_bytes())
    return StableHLOModel(header, export.deserialize(bytearray(blob)))


def main(argv=None) -> int:
    """Upscale one image file with an artifact: returns 0 (usage errors, an unreadable artifact
    or image: ``cli.UsageError``, one ``error:`` line and exit 2 under ``cli.run``)."""
    from edsr_jax.images import ImageError, read_rgb, write_image

    p = cli.ArgumentParser(prog="python -m edsr_jax.stablehlo_runner",
                           description="Upscale an image with an exported StableHLO artifact "
                                       "(JAX and NumPy only).")
    p.add_argument("model", metavar="MODEL", help="artifact written by export --format stablehlo")
    p.add_argument("input", metavar="INPUT", help="image file to upscale")
    p.add_argument("output", metavar="OUTPUT", help="image file to write")
    args = p.parse_args(argv)
    try:
        model = load(args.model)
        write_image(args.output, model(read_rgb(args.input)))
    except (OSError, ValueError, ImageError) as e:
        raise cli.UsageError(str(e)) from None
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
