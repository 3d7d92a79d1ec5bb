"""Export a trained EDSR: serialized StableHLO, or the official PyTorch ``state_dict``;
and import official PyTorch weights as an ordinary checkpoint.

    python -m edsr_jax.export --checkpoint DIR --out MODEL.stablehlo      (--format from the suffix)
    python -m edsr_jax.export --checkpoint DIR --out MODEL.pt
    python -m edsr_jax.export --model poster-x2 --out poster-x2.stablehlo   (a built-in model)
    python -m edsr_jax.export --from-torch edsr_baseline_x2.pt --out DIR  (scale, preset read from the weights)

MDSR (``edsr_jax.nets.mdsr``) too: ``--from-torch mdsr_baseline.pt`` imports the official MDSR
layout (every scale in one checkpoint); a StableHLO export holds one scale (``--scale N``
required, the artifact's ``name`` and ``scale`` say which); ``--format torch`` writes the
official MDSR key layout with every scale.

The StableHLO artifact runs with ``edsr_jax.inference.stablehlo_runner`` (JAX and NumPy only).
The checkpoint stays the lasting artifact: serialized exports are tied to a window of
JAX versions, so re-export when needed. PyTorch is optional (``pip install "edsr-jax[torch]"``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from edsr_jax.io import cli
from edsr_jax.inference import infer
from edsr_jax.nets import mdsr
from edsr_jax.inference import stablehlo_runner
from edsr_jax.inference import torch_convert
from edsr_jax.nets.edsr import PRESETS, ModelConfig, preset

TORCH_HINT = 'PyTorch is not installed; install it with: pip install "edsr-jax[torch]"'
PLATFORMS = ("cpu", "cuda")
# output suffix -> --format
FORMAT_SUFFIXES = {".stablehlo": "stablehlo", ".shlo": "stablehlo", ".pt": "torch", ".pth": "torch"}


def format_for(out: str | Path, given: str | None) -> str:
    """``--format`` as given, else read from ``out``'s suffix (``FORMAT_SUFFIXES``);
    UsageError naming the suffix when it says nothing."""
    if given is not None:
        return given
    fmt = FORMAT_SUFFIXES.get(Path(out).suffix.lower())
    if fmt is None:
        raise cli.UsageError(f"--out {out}: cannot tell the format from {Path(out).suffix or 'no suffix'!r} "
                             f"({', '.join(FORMAT_SUFFIXES)}); pass --format stablehlo or --format torch")
    return fmt


def stablehlo_artifact(config: ModelConfig, params, *, dtype: str = "float32",
                       platforms: Sequence[str] = PLATFORMS, name: str | None = None,
                       scale: int | None = None) -> bytes:
    """Bytes of a StableHLO artifact (see ``stablehlo_runner``): ``(b, h, w, 3)`` float32 in
    [0, 255] -> ``(b, h*s, w*s, 3)`` float32, batch/height/width symbolic, weights baked in.
    An ``mdsr.MDSRConfig`` needs ``scale`` (one of its scales): the artifact runs that scale
    only (its branches' weights alone are baked in), and its header's ``scale`` and ``name``
    (``mdsr_baseline_x3``) say so, ``model`` holds ``"arch": "mdsr"``. EDSR: ``scale`` None or
    its own (``infer.resolve_scale``; ValueError otherwise)."""
    from edsr_jax.training import checkpoint

    mdsr_scale = infer.resolve_scale(config, scale)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), infer._inner(params))
    fn = jax.jit(lambda x: infer.apply(params, x, config, infer.DTYPES[infer._dtype_name(dtype)],
                                       mdsr_scale))
    b, h, w = jax_export.symbolic_shape("b, h, w")
    exported = jax_export.export(fn, platforms=list(platforms))(
        jax.ShapeDtypeStruct((b, h, w, 3), jnp.float32))
    s = infer.output_scale(config, mdsr_scale)
    header = {
        "format": "edsr-jax-stablehlo", "version": 1,
        "name": name or infer.model_name(config, mdsr_scale), "scale": s,
        "model": checkpoint.model_config_to_dict(config),
        "compute_dtype": infer._dtype_name(dtype), "platforms": list(platforms),
        "input": {"shape": ["b", "h", "w", 3], "dtype": "float32", "range": [0, 255], "layout": "NHWC"},
        "output": {"shape": ["b", f"{s}*h", f"{s}*w", 3], "dtype": "float32",
                   "range": "about [0, 255], not clipped", "layout": "NHWC"},
        "jax_version": jax.__version__,
    }
    return stablehlo_runner.pack(header, exported.serialize())


def torch_state_dict(config: ModelConfig, params):
    """Our params -> official EDSR ``state_dict`` of torch tensors (needs torch); an
    ``mdsr.MDSRConfig`` gives the official MDSR layout (every scale's branches)."""
    torch = _torch()
    if infer.is_mdsr(config):
        sd = torch_convert.mdsr_to_state_dict(infer._inner(params), config)
    else:
        sd = torch_convert.to_state_dict(params, config)
    return {k: torch.from_numpy(v) for k, v in sd.items()}


def load_torch_state_dict(path: str | Path) -> dict:
    """Read a ``.pt`` file holding a plain ``state_dict`` or ``{"state_dict": ...}`` (or
    ``{"model": ...}``); tensors only (``weights_only``), nothing is executed."""
    torch = _torch()
    path = Path(path)
    if not path.is_file():
        raise cli.UsageError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise cli.UsageError(f"{path}: not a PyTorch weights file ({e.__class__.__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise cli.UsageError(f"{path}: holds a {type(obj).__name__}, not a state_dict")
    return obj


def import_torch(path: str | Path, out: str | Path, *, scale: int | None = None,
                 preset_name: str | None = None, res_scale: float | None = None) -> Path:
    """Convert an official-layout PyTorch ``.pt`` to a params-only checkpoint in ``out``
    (usable by train fine-tuning, upscale, evaluate). ``scale`` None: read from the
    upsampler's shapes; ``preset_name`` None: the preset whose blocks and features match.
    An MDSR state_dict (``pre_process.*`` keys) is imported whole, every scale
    (``import_torch_mdsr``). Returns the checkpoint step folder."""
    from edsr_jax.training import checkpoint

    sd = load_torch_state_dict(path)
    if any(str(k).removeprefix("module.").startswith("pre_process.") for k in sd):
        return import_torch_mdsr(path, out, sd, scale=scale, preset_name=preset_name,
                                 res_scale=res_scale)
    if preset_name is not None and preset_name not in PRESETS:
        raise cli.UsageError(f"--preset {preset_name}: {Path(path).name} holds EDSR weights; "
                             f"choose from {', '.join(sorted(PRESETS))}")
    try:
        if scale is None:
            scale = torch_convert.infer_config(sd).scale
        if preset_name is None:
            guess = torch_convert.infer_config(sd)
            preset_name = next((n for n, (b, f, _) in PRESETS.items()
                                if (b, f) == (guess.num_blocks, guess.num_features)), None)
        if res_scale is not None:
            config, params = torch_convert.from_state_dict(sd, scale, res_scale=res_scale)
            if preset_name is not None:
                _check_preset(config, preset_name)
        else:
            config, params = torch_convert.from_state_dict(
                sd, scale, preset_name=preset_name, res_scale=1.0)
    except torch_convert.ConversionError as e:
        raise cli.UsageError(f"{path}: {e}") from None
    try:
        return checkpoint.save_params_checkpoint(
            out, config, {"params": params}, note=f"imported from PyTorch weights {Path(path).name}")
    except FileExistsError as e:
        raise cli.UsageError(str(e)) from None


def import_torch_mdsr(path: str | Path, out: str | Path, sd: dict, *, scale: int | None = None,
                      preset_name: str | None = None, res_scale: float | None = None) -> Path:
    """Write the official-layout MDSR ``state_dict`` ``sd`` (read from ``path``) as a
    params-only checkpoint in ``out`` whose config says MDSR and its scales. ``preset_name``
    (an ``mdsr.PRESETS`` name) is checked against the weights; ``scale`` and ``res_scale``
    do not apply (UsageError naming the option). Returns the checkpoint step folder."""
    from edsr_jax.training import checkpoint

    if scale is not None:
        raise cli.UsageError(f"--scale {scale}: {Path(path).name} holds MDSR weights, which serve "
                             "every scale; the checkpoint keeps them all (choose the scale when "
                             "upscaling, evaluating or exporting StableHLO)")
    if res_scale is not None:
        raise cli.UsageError("--res-scale applies to EDSR weights; MDSR has no residual scaling")
    if preset_name is not None and preset_name not in mdsr.PRESETS:
        raise cli.UsageError(f"--preset {preset_name}: {Path(path).name} holds MDSR weights; "
                             f"choose from {', '.join(sorted(mdsr.PRESETS))}")
    try:
        config, params = torch_convert.mdsr_from_state_dict(sd, preset_name=preset_name)
    except torch_convert.ConversionError as e:
        raise cli.UsageError(f"{path}: {e}") from None
    try:
        return checkpoint.save_params_checkpoint(
            out, config, {"params": params}, note=f"imported from PyTorch MDSR weights {Path(path).name}")
    except FileExistsError as e:
        raise cli.UsageError(str(e)) from None


def _check_preset(config: ModelConfig, preset_name: str) -> None:
    want = preset(preset_name, config.scale)
    diffs = [f"{f}: state_dict={getattr(config, f)!r}, preset {preset_name!r}={getattr(want, f)!r}"
             for f in ("num_blocks", "num_features") if getattr(config, f) != getattr(want, f)]
    if diffs:
        raise torch_convert.ConversionError("the weights do not match the preset:\n  " + "\n  ".join(diffs))


def write_bytes(path: Path, data: bytes, overwrite: bool) -> Path:
    """Write ``data`` to ``path`` atomically (``outputs.atomic_write``); refuse (UsageError) an
    existing file unless ``overwrite``; a full disk is one ``WriteError`` line naming ``path``."""
    from edsr_jax.io import outputs

    if path.exists() and not overwrite:
        raise cli.UsageError(f"{path}: exists (pass --overwrite to replace it)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise outputs.write_error(path.parent, e) from None
    return outputs.atomic_write(path, data, overwrite=True)


def _torch():
    try:
        import torch
    except ImportError:
        raise cli.UsageError(TORCH_HINT) from None
    return torch


def build_parser() -> argparse.ArgumentParser:
    """The export command's options."""
    p = cli.ArgumentParser(
        prog="python -m edsr_jax.export",
        description="Export a checkpoint as StableHLO or a PyTorch state_dict, or import PyTorch weights.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="training workdir or checkpoint folder to export")
    src.add_argument("--model", metavar="NAME",
                     help="a built-in trained model to export (python -m edsr_jax.pretrained lists them)")
    src.add_argument("--from-torch", metavar="FILE",
                     help="official-layout PyTorch EDSR weights (.pt) to import as a checkpoint")
    p.add_argument("--format", choices=("stablehlo", "torch"),
                   help="export format (with --checkpoint; default: from --out's suffix, "
                        ".stablehlo/.shlo or .pt/.pth)")
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
        torch = _torch()  # fail before the (slow) restore when torch is missing

    platforms = [s.strip() for s in args.platforms.split(",") if s.strip()]
    bad = [s for s in platforms if s not in ("cpu", "cuda", "rocm", "tpu")]
    if bad or not platforms:
        raise cli.UsageError(f"--platforms: unknown platform(s) {bad or platforms}; use cpu, cuda, rocm, tpu")
    config, params = _restore(args.checkpoint) if args.checkpoint else _builtin(args.model)
    if infer.is_mdsr(config) and args.format == "torch" and args.scale is not None:
        raise cli.UsageError(f"--scale {args.scale}: a torch export of an MDSR holds every scale "
                             f"({' '.join(map(str, config.scales))}); --scale is for --format stablehlo")
    mdsr_scale = None  # an MDSR's torch export holds every scale
    if args.format == "stablehlo" or not infer.is_mdsr(config):
        try:
            mdsr_scale = infer.resolve_scale(config, args.scale, option="--scale")
        except ValueError as e:
            raise cli.UsageError(str(e)) from None
    if args.format == "stablehlo":
        write_bytes(out, stablehlo_artifact(config, params, dtype=args.dtype, platforms=platforms,
                                            scale=mdsr_scale), args.overwrite)
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
    from edsr_jax.training import checkpoint

    try:
        config, params = checkpoint.restore_for_inference(path)
    except (OSError, ValueError) as e:  # CheckpointNotFound, CheckpointMismatch
        raise cli.UsageError(f"--checkpoint {path}: {e}") from None
    return config, jax.tree_util.tree_map(np.asarray, params)


if __name__ == "__main__":
    sys.exit(cli.run(main))
