"""Export a trained EDSR: serialized StableHLO, or the official PyTorch ``state_dict``;
and import official PyTorch weights as an ordinary checkpoint.

    python -m edsr_jax.export --checkpoint DIR --out MODEL.stablehlo      (--format from the suffix)
    python -m edsr_jax.export --checkpoint DIR --out MODEL.pt
    python -m edsr_jax.export --checkpoint DIR --out MODEL.onnx          (needs edsr-jax[onnx])
    python -m edsr_jax.export --model poster-x2 --out poster-x2.stablehlo   (a built-in model)
    python -m edsr_jax.export --from-torch edsr_baseline_x2.pt --out DIR  (scale, preset read from the weights)

MDSR (``edsr_jax.nets.mdsr``) too: ``--from-torch mdsr_baseline.pt`` imports the official MDSR
layout (every scale in one checkpoint); a StableHLO export holds one scale (``--scale N``
required, the artifact's ``name`` and ``scale`` say which); ``--format torch`` writes the
official MDSR key layout with every scale.

The StableHLO artifact runs with ``edsr_jax.inference.stablehlo_runner`` (JAX and NumPy only).
The ONNX model (``edsr_jax.inference.onnx_export``) is EDSR-PyTorch's contract: NCHW float32 in
[0, 255], batch/height/width dynamic; an MDSR's holds one scale (``--scale N``), as in StableHLO.
The checkpoint stays the lasting artifact: serialized exports are tied to a window of
JAX versions, so re-export when needed. PyTorch is optional (``pip install "edsr-jax[torch]"``).
The conversions are ``edsr_jax.inference.export``; this module is the command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from edsr_jax.inference import infer
from edsr_jax.inference.export import (PLATFORMS, import_torch, require_torch, stablehlo_artifact,
                                       torch_state_dict)
from edsr_jax.inference.onnx_export import onnx_bytes, require_onnx
from edsr_jax.io import cli
from edsr_jax.nets import mdsr
from edsr_jax.nets.edsr import PRESETS

# output suffix -> --format
FORMAT_SUFFIXES = {".stablehlo": "stablehlo", ".shlo": "stablehlo", ".pt": "torch", ".pth": "torch",
                   ".onnx": "onnx"}


def format_for(out: str | Path, given: str | None) -> str:
    """``--format`` as given, else read from ``out``'s suffix (``FORMAT_SUFFIXES``);
    UsageError naming the suffix when it says nothing."""
    if given is not None:
        return given
    fmt = FORMAT_SUFFIXES.get(Path(out).suffix.lower())
    if fmt is None:
        raise cli.UsageError(f"--out {out}: cannot tell the format from {Path(out).suffix or 'no suffix'!r} "
                             f"({', '.join(FORMAT_SUFFIXES)}); pass --format stablehlo, torch or onnx")
    return fmt


def write_bytes(path: Path, data: bytes, overwrite: bool) -> Path:
    """Write ``data`` to ``path`` atomically (``outputs.atomic_write``); refuse (UsageError) an
    existing file unless ``overwrite``, also one another process wrote while this one ran
    (``outputs.TakenMeanwhile``); a full disk is one ``WriteError`` line naming ``path``."""
    from edsr_jax.io import outputs

    if path.exists() and not overwrite:
        raise cli.UsageError(f"{path}: exists (pass --overwrite to replace it)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise outputs.write_error(path.parent, e) from None
    try:
        return outputs.atomic_write(path, data, overwrite=overwrite)
    except FileExistsError as e:
        raise cli.UsageError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    """The export command's options."""
    p = cli.ArgumentParser(
        prog="python -m edsr_jax.export",
        description="Export a checkpoint as StableHLO, a PyTorch state_dict or ONNX, or import PyTorch weights.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="training workdir or checkpoint folder to export")
    src.add_argument("--model", metavar="NAME",
                     help="a built-in trained model to export (python -m edsr_jax.pretrained lists them)")
    src.add_argument("--from-torch", metavar="FILE",
                     help="official-layout PyTorch EDSR weights (.pt) to import as a checkpoint")
    p.add_argument("--format", choices=("stablehlo", "torch", "onnx"),
                   help="export format (with --checkpoint or --model; default: from --out's suffix, "
                        ".stablehlo/.shlo, .pt/.pth or .onnx; onnx needs pip install \"edsr-jax[onnx]\")")
    p.add_argument("--out", required=True,
                   help="output file (export) or new checkpoint folder (--from-torch)")
    p.add_argument("--dtype", choices=sorted(infer.DTYPES), default="float32",
                   help="compute dtype baked into a StableHLO export (default float32)")
    p.add_argument("--platforms", default=",".join(PLATFORMS),
                   help="comma-separated platforms of a StableHLO export (default cpu,cuda)")
    p.add_argument("--scale", type=int, choices=(2, 3, 4),
                   help="upscaling factor of --from-torch EDSR weights (default: read from their "
                        "upsampler; given, it is checked against them); with --checkpoint, the "
                        "scale of an MDSR's StableHLO export (required there)")
    p.add_argument("--preset", choices=sorted(PRESETS) + sorted(mdsr.PRESETS),
                   help="architecture of --from-torch weights (checked against them; default: guessed)")
    p.add_argument("--res-scale", type=float,
                   help="residual scaling of --from-torch weights when they match no preset (default 1.0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The export CLI; returns 0 (UsageError: exit 2)."""
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if args.from_torch:
        if args.format is not None:
            raise cli.UsageError("--format is for --checkpoint exports; --from-torch writes a checkpoint")
        from edsr_jax.io import outputs

        outputs.check_not_input(out, [args.from_torch], option="--out")
        step = import_torch(args.from_torch, out, scale=args.scale, preset_name=args.preset,
                            res_scale=args.res_scale)
        print(f"wrote checkpoint {step}")
        return 0
    args.format = format_for(out, args.format)
    if out.exists() and not args.overwrite:
        raise cli.UsageError(f"{out}: exists (pass --overwrite to replace it)")
    if args.checkpoint:
        _check_out_not_in_checkpoint(out, Path(args.checkpoint))
    if args.format == "torch":
        torch = require_torch()  # fail before the (slow) restore when torch is missing
    if args.format == "onnx":
        require_onnx()
        if args.dtype != "float32":
            raise cli.UsageError(f"--dtype {args.dtype}: an ONNX export computes in float32")

    platforms = [s.strip() for s in args.platforms.split(",") if s.strip()]
    bad = [s for s in platforms if s not in ("cpu", "cuda", "rocm", "tpu")]
    if bad or not platforms:
        raise cli.UsageError(f"--platforms: unknown platform(s) {bad or platforms}; use cpu, cuda, rocm, tpu")
    config, params = _restore(args.checkpoint) if args.checkpoint else _builtin(args.model)
    if infer.is_mdsr(config) and args.format == "torch" and args.scale is not None:
        raise cli.UsageError(f"--scale {args.scale}: a torch export of an MDSR holds every scale "
                             f"({' '.join(map(str, config.scales))}); --scale is for --format stablehlo or onnx")
    mdsr_scale = None  # an MDSR's torch export holds every scale
    if args.format in ("stablehlo", "onnx") or not infer.is_mdsr(config):
        try:
            mdsr_scale = infer.resolve_scale(config, args.scale, option="--scale")
        except ValueError as e:
            raise cli.UsageError(str(e)) from None
    if args.format == "stablehlo":
        write_bytes(out, stablehlo_artifact(config, params, dtype=args.dtype, platforms=platforms,
                                            scale=mdsr_scale), args.overwrite)
    elif args.format == "onnx":
        write_bytes(out, onnx_bytes(config, params, scale=mdsr_scale), args.overwrite)
    else:
        import io

        buf = io.BytesIO()
        torch.save(torch_state_dict(config, params), buf)
        write_bytes(out, buf.getvalue(), args.overwrite)
    if infer.is_mdsr(config) and mdsr_scale is None:
        print(f"wrote {out} ({infer.model_name(config)}, scales {' '.join(map(str, config.scales))})")
    else:
        print(f"wrote {out} ({infer.model_name(config, mdsr_scale)}, x{infer.output_scale(config, mdsr_scale)})")
    return 0


def _check_out_not_in_checkpoint(out: Path, source: Path) -> None:
    """UsageError when ``--out`` is, or lies inside, the checkpoint being exported (even with
    ``--overwrite``: an input is never overwritten)."""
    if not source.exists():
        return
    src, target = source.resolve(), out.resolve()
    if target == src or src in target.parents:
        raise cli.UsageError(f"--out {out}: lies inside the checkpoint being exported ({source}); "
                             "write the export elsewhere")


def _builtin(name: str):
    from edsr_jax.inference import pretrained

    try:
        return pretrained.load(name)
    except ValueError as e:
        raise cli.UsageError(f"--model {name}: {e}") from None


def _restore(path):
    from edsr_jax.training.restore import restore_for_inference

    try:
        config, params = restore_for_inference(path)
    except (OSError, ValueError) as e:  # CheckpointNotFound, CheckpointMismatch
        raise cli.UsageError(f"--checkpoint {path}: {e}") from None
    return config, jax.tree_util.tree_map(np.asarray, params)


if __name__ == "__main__":
    sys.exit(cli.run(main))
