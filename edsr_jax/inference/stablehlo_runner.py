"""Run an exported EDSR StableHLO artifact with only JAX and NumPy (no Flax, no model code).

An artifact written by ``python -m edsr_jax.export --format stablehlo`` is one file:

    line 1: ``EDSRJAX-STABLEHLO 1``
    line 2: a JSON header (``name``, ``scale``, ``model``, ``input``, ``output``, ``platforms``, ...)
    rest:   ``jax.export`` serialized bytes of ``f(x: (b, h, w, 3) float32 in [0, 255])
            -> (b, h*s, w*s, 3) float32`` with the weights baked in as constants

Batch, height and width are symbolic: any size runs (each new shape is compiled once).
Serialized artifacts are tied to a window of JAX versions; re-export from the checkpoint
(the lasting artifact) when a newer JAX refuses one.

Usage: ``python -m edsr_jax.inference.stablehlo_runner MODEL.stablehlo INPUT.png OUTPUT.png``

This file also works copied alone next to an artifact, with JAX and NumPy only:
``python stablehlo_runner.py MODEL.stablehlo INPUT.npy OUTPUT.npy`` (``.npy``: an
``(H, W, 3)`` or ``(N, H, W, 3)`` array in [0, 255]; image files need Pillow). Inside the
package it uses the package's image reading, CLI conventions and XLA:CPU options; alone,
small stand-ins with the same behaviour and XLA's default options.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
from jax import export

try:  # inside the package
    from edsr_jax.io.cli import ArgumentParser, UsageError
    from edsr_jax.io.cli import run as _run_cli
    from edsr_jax.nets.xla_options import compiler_options as _compiler_options
    _PROG = "python -m edsr_jax.inference.stablehlo_runner"
except ImportError:  # copied alone: the same conventions, XLA's default compiler options
    _PROG = f"python {Path(__file__).name}"

    class UsageError(Exception):
        """A bad option, path or file: one ``error:`` line and exit 2."""

    class ArgumentParser(argparse.ArgumentParser):
        """argparse whose errors raise UsageError (one line) instead of printing usage."""

        def error(self, message):
            raise UsageError(message)

    def _run_cli(main, argv=None) -> int:
        try:
            return int(main(argv) or 0)
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else 0

    def _compiler_options():
        return None

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
        self._call = jax.jit(exported.call, compiler_options=_compiler_options())

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


def read_input(path: str | Path) -> np.ndarray:
    """``.npy``: the array as saved (``(H, W, 3)`` or ``(N, H, W, 3)``, [0, 255]); another
    file: ``(H, W, 3)`` uint8 through the package's ``images.read_rgb`` or, copied alone,
    Pillow. Raises UsageError naming the file."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        try:
            from edsr_jax.io.images import ImageError, read_rgb
        except ImportError:
            return np.asarray(_pillow(path).open(path).convert("RGB"), dtype=np.uint8)
        try:
            return read_rgb(path)
        except ImageError as e:
            raise UsageError(str(e)) from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: cannot read ({e})") from None


def write_output(path: str | Path, array: np.ndarray) -> None:
    """``.npy``: float32 as predicted; another file: rounded to uint8 RGB (atomically through
    the package's ``outputs`` / ``images.write_image``, or NumPy / Pillow into a file created
    exclusively when copied alone). An existing ``path`` is never replaced (UsageError), also
    one another process created while this one ran (``outputs.TakenMeanwhile`` in the
    package: a ``FileExistsError``)."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise UsageError(f"{path}: exists; choose another output name")
    try:
        from edsr_jax.io import outputs
        from edsr_jax.io.images import write_image
    except ImportError:
        outputs = write_image = None
    try:
        if path.suffix.lower() == ".npy":
            if outputs is None:
                _write_new(path, lambda f: np.save(f, array))
            else:
                outputs.atomic_write(path, lambda f: np.save(f, array), binary=True)
            return
        u8 = np.clip(np.round(array), 0, 255).astype(np.uint8)
        if write_image is None:
            image = _pillow(path)
            fmt = image.registered_extensions().get(path.suffix.lower())
            if fmt is None:
                raise UsageError(f"{path}: unknown image file suffix; use .png, .npy, ...")
            _write_new(path, lambda f: image.fromarray(u8).save(f, format=fmt))
        else:
            write_image(path, u8)
    except FileExistsError:
        raise UsageError(f"{path}: created by another process while this one was writing it; left as it "
                         "is (choose another output name)") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: cannot write ({e})") from None


def _write_new(path: Path, fill) -> None:
    """Copied alone: create ``path`` exclusively (FileExistsError when it exists, however late
    another process made it), ``fill(file)``; a failure removes the partial file."""
    with open(path, "xb") as f:
        try:
            fill(f)
        except BaseException:
            f.close()
            path.unlink()
            raise


def _pillow(path: Path):
    try:
        from PIL import Image
    except ImportError:
        raise UsageError(f"{path}: image files need Pillow (pip install pillow); or use .npy") from None
    return Image


def main(argv=None) -> int:
    """Upscale one image (or ``.npy`` array) with an artifact, saying so in one line on stderr
    (output, sizes, model, seconds): returns 0 (a bad option, an
    unreadable artifact or input: ``UsageError``, one ``error:`` line and exit 2 under
    ``run``)."""
    p = ArgumentParser(prog=_PROG,
                       description="Upscale an image with an exported StableHLO artifact "
                                   "(JAX and NumPy only; image files need Pillow, .npy does not).")
    p.add_argument("model", metavar="MODEL", help="artifact written by export --format stablehlo")
    p.add_argument("input", metavar="INPUT", help="image file, or .npy array (H, W, 3) / (N, H, W, 3)")
    p.add_argument("output", metavar="OUTPUT", help="image file (uint8) or .npy (float32) to write")
    args = p.parse_args(argv)
    try:
        model = load(args.model)
    except (OSError, ValueError) as e:
        raise UsageError(f"{args.model}: {e}") from None
    lr = read_input(args.input)
    start = time.perf_counter()
    try:
        sr = model.predict(lr)
    except ValueError as e:
        raise UsageError(f"{args.input}: {e}") from None
    seconds = time.perf_counter() - start
    write_output(args.output, sr)
    print(f"{args.output}: {_size(sr)} from {args.input} ({_size(lr)}), {model.name} x{model.scale}, "
          f"{seconds:.1f} s (compilation included)", file=sys.stderr)
    return 0


def _size(array: np.ndarray) -> str:
    """``"1020x678"`` (width x height) of an ``(H, W, 3)`` image, ``"4 x 1020x678"`` of a batch."""
    h, w = array.shape[-3:-1]
    return f"{array.shape[0]} x {w}x{h}" if array.ndim == 4 else f"{w}x{h}"


def run(argv=None) -> int:
    """``main`` under the CLI convention: 0, or 2 with one ``error:`` line."""
    return _run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(run())
