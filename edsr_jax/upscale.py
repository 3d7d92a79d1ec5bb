"""Upscale image files with a trained EDSR checkpoint or a built-in model.

    python -m edsr_jax.upscale photo.png          # a built-in model chosen for it -> upscaled/photo.png
    python -m edsr_jax.upscale poster.png --model poster-x2
    python -m edsr_jax.upscale photos/ extra/*.jpg --checkpoint runs/x2 --out upscaled/

Without ``--checkpoint`` the built-in model ``--model NAME`` runs (``python -m
edsr_jax.pretrained`` lists them). ``--model auto``, the default with neither option (announced
on stderr), diagnoses each input and runs the built-in model trained on the nearest damage at
``--scale`` (default 2), the general model where the diagnosis is uncertain
(``inference/choice.py``), with one line per input saying which and why; a video is diagnosed
from a few frames and gets one model. ``--json FILE`` records each input's output and model
(and with auto the choice: reason, confidence, diagnosis). Outputs go to ``--out`` (default
``upscaled`` in the current folder).

Inputs are files, folders (their image files, not recursive) or glob patterns. Each
output keeps its input's name (``<stem><suffix>.png`` by default; ``--ext same``: the input's
own file type) in ``--out``. Nothing is
written over an input, and no existing output is replaced without ``--overwrite``, not even
one another process (a second ``upscale`` into the same ``--out``) wrote while this one ran:
that output is reported ``not written`` and the exit code is 1. An
input that cannot be read is reported and skipped; the rest are still done and the exit
code is 1. Bad options, a missing checkpoint or no inputs: ``error: ...`` and exit 2.

Videos (mp4, mkv, mov, webm, avi; needs PyAV: ``pip install 'edsr-jax[video]'``) and animated
GIF / WebP / PNG files are upscaled frame by frame into the same kind of file, named like the
input (``inference/video.py``; ``--codec``, ``--crf``).

An MDSR checkpoint (e.g. ``export --from-torch mdsr_baseline.pt``) serves several scales:
``--scale N`` chooses one (required there; with an EDSR it may only repeat the model's scale).

Each output keeps its input's kind (``upscale_decoded``; the README's table): grayscale
stays grayscale (the model's three output channels averaged), an alpha channel is upscaled
with MATLAB bicubic and re-attached, 16-bit grayscale stays 16-bit and 32-bit float grayscale
(values in [0, 1]) stays float (the model runs on the float values, no 8-bit rounding), the ICC profile and EXIF are kept (the EXIF orientation
applied once, to the pixels). Where the output format cannot hold the kind (JPEG: no
alpha), the nearest it can is written and a note says so.
"""

from __future__ import annotations

import argparse
import glob
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from edsr_jax.io import cli
from edsr_jax.io.video_files import ENCODERS
from edsr_jax.io.images import (QUALITY_FORMATS, Decoded, ImageError, image_folder, image_format, is_image_file,
                                read_image,
                                write_kind)

GLOB_CHARS = "*?["


def collect_inputs(items: Sequence[str]) -> list[Path]:
    """Image files named by ``items`` (files, folders, glob patterns), in order, each once.

    Raises UsageError for a path that does not exist, a pattern or folder without images,
    or a file whose suffix is not an image suffix.
    """
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files = image_folder(path)
        elif path.exists():
            if not is_image_file(path):
                raise cli.UsageError(f"{path}: not an image file name (expected a suffix like .png, .jpg)")
            files = [path]
        elif any(c in item for c in GLOB_CHARS):
            files = sorted(Path(p) for p in glob.glob(item) if is_image_file(p) and Path(p).is_file())
            if not files:
                raise cli.UsageError(f"{item}: pattern matches no image files")
        else:
            raise cli.UsageError(f"{path}: no such file or folder")
        found += files
    seen: set[Path] = set()
    unique = []
    for f in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def plan_outputs(inputs: Sequence[Path], out_dir: Path, *, suffix: str = "", ext: str | None = ".png",
                 overwrite: bool = False) -> list[Path]:
    """Output path for each input: ``out_dir / (stem + suffix + ext)`` (``ext=None``: the
    input's own suffix, its file type kept).

    Raises UsageError when ``out_dir`` is an input's folder, an output name (``--suffix``,
    ``--ext``) would leave ``out_dir`` or is too long for the file system, two inputs map to
    one output, an output would replace an input (even through a link), ``out_dir`` holds an
    image of an output's name in another file type (an earlier run's, at another scale or of
    another model: ``comic.jpg`` beside ``comic.png``), or outputs exist and ``overwrite`` is
    False.
    """
    from edsr_jax.io import outputs as out_files

    out_dir = Path(out_dir)
    resolved_out = out_dir.resolve()
    input_dirs = {p.resolve().parent for p in inputs}
    if resolved_out in input_dirs:
        raise cli.UsageError(f"--out {out_dir} is a folder of the inputs; choose another folder "
                             "so no input can be overwritten")
    for text, option in ((suffix, "--suffix"), (ext or "", "--ext")):
        if "/" in text or "\\" in text or "\x00" in text:
            raise cli.UsageError(f"{option} {text!r}: must not contain a path separator")
    outputs = [out_files.inside(out_dir, f"{p.stem}{suffix}{ext or p.suffix}", option="--suffix/--ext")
               for p in inputs]
    by_output: dict[Path, Path] = {}
    for src, dst in zip(inputs, outputs):
        if dst in by_output:
            raise cli.UsageError(f"{by_output[dst]} and {src} would both be written to {dst} "
                                 "(same name); upscale them in separate runs or use --suffix")
        by_output[dst] = src
    for dst in outputs:
        out_files.check_not_input(dst, inputs, option="output")
        _check_no_sibling(dst)
    if not overwrite:
        existing = [d for d in outputs if d.exists()]
        if existing:
            raise cli.UsageError(f"{len(existing)} output(s) exist already (first: {existing[0]}); "
                                 "pass --overwrite to replace them, or --suffix / another --out to keep them")
    return outputs


def _check_no_sibling(dst: Path) -> None:
    """UsageError when ``--out`` holds another image of ``dst``'s name in another file type
    (``comic.jpg`` beside a new ``comic.png``): an earlier run's output, perhaps at another scale
    or of another model, which the new one could be mistaken for (or for which it is)."""
    try:
        siblings = sorted(p for p in dst.parent.glob(glob.escape(dst.stem) + ".*")
                          if p.suffix.lower() != dst.suffix.lower() and p.stem == dst.stem and is_image_file(p))
    except OSError:
        return
    if siblings:
        raise cli.UsageError(f"{siblings[0]} exists beside the output {dst.name} (the same name in another file "
                             "type: an earlier run, perhaps at another scale or of another model); use --suffix "
                             "(e.g. --suffix _x2) or another --out")


def build_parser() -> argparse.ArgumentParser:
    """The upscale command's options."""
    p = cli.ArgumentParser(prog="python -m edsr_jax.upscale", blank_ok=("suffix",),
                           description="Upscale images with a trained EDSR checkpoint or a built-in model.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="training workdir or checkpoint folder")
    source.add_argument("--model", metavar="NAME",
                        help="a built-in trained model (python -m edsr_jax.pretrained lists them: "
                             "photo-x2, poster-x2, general-x2, photo-x3, photo-x4), or auto: per image the one "
                             "trained on the damage diagnosed in it (the default with neither option); "
                             "A+B: the mean of both models' outputs")
    p.add_argument("--out", default="upscaled", help="output folder (created when missing; default upscaled)")
    p.add_argument("--scale", type=int, choices=(2, 3, 4),
                   help="upscaling factor of an MDSR checkpoint (required there; an EDSR's is fixed), "
                        "or of --model auto (default 2)")
    p.add_argument("--tile", type=int, default=None,
                   help="tile side in LR pixels (default: chosen from --memory-budget-mb)")
    p.add_argument("--memory-budget-mb", type=float, default=None,
                   help="activation memory per tile used to choose the tile size (default: 1024 on "
                        "CPU, a quarter of the device's memory on a GPU or TPU)")
    p.add_argument("--ensemble", action="store_true", help="x8 geometric self-ensemble (EDSR+), 8x slower")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="compute dtype (default float32)")
    p.add_argument("--conv-backend", default="auto", metavar="{auto,xla,onednn}",
                   help="convolutions: auto (oneDNN's on CPU in float32 where built, XLA's "
                        "elsewhere; default), xla, or onednn")
    p.add_argument("--suffix", default="", help="added to each output's stem, e.g. _x2 (default none)")
    p.add_argument("--ext", default=".png",
                   help="output file type, e.g. .png .jpg .webp .tif, or 'same': each input's own "
                        "(default .png, lossless)")
    p.add_argument("--quality", type=int, metavar="Q",
                   help="JPEG / WebP quality 1..100 for --ext .jpg/.webp (default 95)")
    p.add_argument("--codec", choices=tuple(ENCODERS),
                   help="video inputs: the encoder (default h264, vp9 for .webm)")
    p.add_argument("--crf", type=int, metavar="N",
                   help="video inputs: constant rate factor, lower is better (default 18 for h264, "
                        "20 for h265, 24 for vp9 and av1)")
    p.add_argument("--json", metavar="FILE",
                   help="also write a record of each input: its output, the model, and with "
                        "--model auto the choice (reason, confidence, diagnosis)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (and --json)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The upscale CLI; returns 0, or 1 when some input was skipped (UsageError: exit 2)."""
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    ext = None if args.ext == "same" else args.ext if args.ext.startswith(".") else "." + args.ext
    if ext is not None and not is_image_file(f"x{ext}"):
        raise cli.UsageError(f"--ext {args.ext}: not an image type this program writes")
    if args.tile is not None and args.tile < 8:
        raise cli.UsageError(f"--tile {args.tile}: must be at least 8 LR pixels")
    if args.memory_budget_mb is not None and not (args.memory_budget_mb > 0 and math.isfinite(args.memory_budget_mb)):
        raise cli.UsageError(f"--memory-budget-mb {args.memory_budget_mb}: must be a finite number > 0")
    if args.quality is not None:
        if not 1 <= args.quality <= 100:
            raise cli.UsageError(f"--quality {args.quality}: must be 1..100")
        if ext is not None and image_format(f"x{ext}") not in QUALITY_FORMATS:
            raise cli.UsageError(f"--quality applies to JPEG and WebP outputs, not --ext {ext}")
    _check_conv_backend(args.conv_backend, args.dtype)
    from edsr_jax.inference import video  # videos and animations: inference/video.py

    items, moving = video.split_items(args.inputs)
    inputs, animated = video.split_animated(collect_inputs(items) if items else [])
    moving += animated
    video.check_options(moving, codec=args.codec, crf=args.crf)
    outputs = plan_outputs(inputs, Path(args.out), suffix=args.suffix, ext=ext, overwrite=args.overwrite)
    moving_outputs = plan_outputs(moving, Path(args.out), suffix=args.suffix, ext=None, overwrite=args.overwrite)
    video.check_clash(outputs, moving_outputs)
    json_path = _check_json(args, [*inputs, *moving], [*outputs, *moving_outputs])
    upscaler = _load(args)
    from edsr_jax.inference.choice import AutoUpscaler

    auto = upscaler if isinstance(upscaler, AutoUpscaler) else None
    records = [{"input": str(src), "output": str(dst), "model": None if auto else upscaler.name}
               for src, dst in zip(moving, moving_outputs)]
    moving_failed = 0
    if moving:
        from edsr_jax.degradation.imresize import imresize

        pick = None
        if auto is not None:
            def pick(src: Path):
                choice = auto.choose_frames(video.sample_frames(src), src.name)
                tqdm.write(choice.line(src.name), file=sys.stderr)
                records[moving.index(src)].update(model=choice.model, choice=choice.record())
                return auto.upscaler(choice.model)

        moving_failed = video.upscale_files(None if auto else upscaler, moving, moving_outputs, codec=args.codec,
                                            crf=args.crf, quality=args.quality, overwrite=args.overwrite,
                                            resize_alpha=imresize, pick=pick)
        if not inputs:
            _write_json(json_path, args, upscaler.scale, records)
            return 1 if moving_failed else 0

    failed = not_written = 0
    start = time.perf_counter()
    megapixels = 0.0
    used: dict[str, int] = {}
    bar = tqdm(list(zip(inputs, outputs)), desc=f"{upscaler.name}", unit="img", file=sys.stderr)
    for src, dst in bar:
        bar.set_postfix_str(src.name)
        record: dict = {"input": str(src), "output": str(dst), "model": None}
        records.append(record)
        notes: list[str] = []
        try:
            decoded = read_image(src, notes)
        except ImageError as e:
            tqdm.write(f"skipped: {e}", file=sys.stderr)
            record.update(output=None, error=str(e))
            failed += 1
            continue
        model = upscaler
        if auto is not None:
            choice = auto.choose(src)
            tqdm.write(choice.line(src.name), file=sys.stderr)
            model = auto.upscaler(choice.model)
            record.update(model=model.name, choice=choice.record())
        record["model"] = model.name
        inner = _image_bar(model, decoded, src.name)
        try:
            image, alpha = upscale_decoded(model, decoded,
                                           progress=inner and (lambda done, _: inner.update(done - inner.n)))
        finally:
            if inner is not None:
                inner.close()
        try:
            write_kind(dst, image, decoded.kind, alpha, icc_profile=decoded.icc_profile,
                       exif=decoded.exif, quality=args.quality, overwrite=args.overwrite, notes=notes)
        except FileExistsError as e:  # outputs.TakenMeanwhile: another process wrote it since the check
            tqdm.write(f"not written: {e}", file=sys.stderr)
            record.update(output=None, error=f"not written: {e}")
            not_written += 1
            continue
        finally:
            for note in notes:
                tqdm.write(f"note: {note}", file=sys.stderr)
        megapixels += image.shape[0] * image.shape[1] / 1e6
        used[model.name] = used.get(model.name, 0) + 1
    bar.close()
    seconds = time.perf_counter() - start
    done = len(inputs) - failed - not_written
    by = f" by {', '.join(f'{m} ({n})' for m, n in sorted(used.items()))}" if auto is not None and used else ""
    print(f"{done} of {len(inputs)} image(s) upscaled x{upscaler.scale}{by} into {args.out} "
          f"({megapixels:.2f} output megapixels in {seconds:.1f} s)", file=sys.stderr)
    if failed:
        print(f"{failed} input(s) skipped (see above)", file=sys.stderr)
    if not_written:
        print(f"{not_written} output(s) not written: another process wrote them first (see above)",
              file=sys.stderr)
    _write_json(json_path, args, upscaler.scale, records)
    return 1 if failed or not_written or moving_failed else 0


def _check_json(args, inputs: Sequence[Path], outputs: Sequence[Path]) -> Path | None:
    """``--json FILE`` checked before anything runs: not an input or an output, its folder
    existing, not an existing file without ``--overwrite`` (UsageError naming it)."""
    if args.json is None:
        return None
    from edsr_jax.io import outputs as out_files

    path = Path(args.json)
    out_files.check_not_input(path, [*inputs, *outputs], option="--json")
    if path.is_dir():
        raise cli.UsageError(f"--json {path}: is a folder; give a file name, e.g. {path / 'upscale.json'}")
    if not path.parent.is_dir():
        raise cli.UsageError(f"--json {path}: folder {path.parent} does not exist")
    if path.exists() and not args.overwrite:
        raise cli.UsageError(f"--json {path}: exists (pass --overwrite to replace it)")
    return path


def _write_json(path: Path | None, args, scale: int, records: list[dict]) -> None:
    """Write the ``--json`` record: ``{"model", "scale", "inputs": [{"input", "output", "model",
    "choice"?, "error"?}]}`` (``choice``: ``choice.Choice.record()`` with ``--model auto``)."""
    if path is None:
        return
    from edsr_jax.inference import pretrained
    from edsr_jax.io import outputs as out_files

    model = args.model or (None if args.checkpoint else pretrained.DEFAULT)
    record = {"model": model, "checkpoint": args.checkpoint, "scale": int(scale), "inputs": records}
    try:
        out_files.atomic_write(path, out_files.json_text(record, indent=1) + "\n", overwrite=args.overwrite)
    except FileExistsError as e:  # outputs.TakenMeanwhile: another process wrote it since the check
        print(f"not written: {e}", file=sys.stderr)
        return
    print(f"wrote {path}", file=sys.stderr)


def _image_bar(upscaler, decoded: Decoded, name: str):
    """A second progress bar (tiles and ensemble passes within one image) for an image that
    takes at least ``INNER_BAR_PASSES`` forward passes, else None."""
    from tqdm import tqdm

    h, w = decoded.pixels.shape[:2]
    total = upscaler.passes(h, w)
    if total < INNER_BAR_PASSES:
        return None
    what = "tiles x 8 ensemble passes" if upscaler.ensemble else "tiles"
    return tqdm(total=total, desc=f"  {name} ({what})", unit="pass", leave=False, position=1,
                file=sys.stderr)


INNER_BAR_PASSES = 4  # an image needing this many forward passes gets its own progress bar


def upscale_decoded(upscaler, decoded: Decoded, progress=None) -> tuple[np.ndarray, np.ndarray | None]:
    """``(image, alpha)`` upscaled by ``upscaler`` (``infer.Upscaler``) in the input's kind.

    RGB / RGBA: the model's uint8 output ``(H*s, W*s, 3)``. L / LA: ``(H*s, W*s)`` uint8, the
    mean of the model's three float output channels, rounded (a gray input gives nearly
    equal channels; averaging removes the tint of their small differences). L16:
    ``(H*s, W*s)`` uint16 from the model run on the float values (value / 257), times 257.
    F (32-bit float grayscale in [0, 1]): ``(H*s, W*s)`` float32, the mean / 255, in [0, 1].
    ``alpha``: ``(H*s, W*s)`` uint8, MATLAB bicubic ``imresize(alpha, s)`` (the model is
    trained on colour, not on alpha masks), or None. ``progress(done, total)``: after each
    forward pass (``Upscaler.__call__``).
    """
    from edsr_jax.degradation.imresize import imresize

    s = upscaler.scale
    if decoded.kind in ("RGB", "RGBA"):
        image = upscaler(decoded.pixels, progress)
    else:
        gray = np.mean(np.asarray(upscaler.predict(decoded.pixels, progress), np.float64), axis=-1)
        if decoded.kind == "L16":
            image = np.clip(np.floor(gray * 257.0 + 0.5), 0, 65535).astype(np.uint16)
        elif decoded.kind == "F":
            image = np.clip(gray / 255.0, 0.0, 1.0).astype(np.float32)
        else:
            image = np.clip(np.floor(gray + 0.5), 0, 255).astype(np.uint8)
    alpha = None if decoded.alpha is None else imresize(decoded.alpha, s)
    return image, alpha


def _check_conv_backend(conv_backend: str, dtype: str) -> None:
    """Raise UsageError when ``--conv-backend`` is unknown or cannot run here (with ``--dtype``)."""
    from edsr_jax.inference import infer

    try:
        infer.conv_backend_for(conv_backend, dtype, option="--conv-backend", dtype_option="--dtype")
    except ValueError as e:
        raise cli.UsageError(str(e)) from None


def _load(args):
    from edsr_jax.inference import pretrained
    from edsr_jax.inference import blend
    from edsr_jax.inference.infer import Upscaler

    options = dict(tile=args.tile, ensemble=args.ensemble, dtype=args.dtype,
                   memory_budget_mb=args.memory_budget_mb, conv_backend=args.conv_backend)
    if args.checkpoint is None:
        name = args.model or pretrained.DEFAULT
        if name == pretrained.AUTO:
            from edsr_jax.inference.choice import AutoUpscaler

            scale = args.scale or 2
            try:
                auto = AutoUpscaler(scale, **options)
            except ValueError as e:
                raise cli.UsageError(f"--model {pretrained.AUTO} at x{scale}: {e}") from None
            if args.model is None:
                print(f"note: no --checkpoint or --model: --model {pretrained.AUTO}, a built-in model chosen "
                      f"per image from the damage diagnosed in it (x{scale}: {', '.join(auto.models)})",
                      file=sys.stderr)
            return auto
        if args.model is None:
            print(f"note: no --checkpoint or --model: using the built-in model {pretrained.describe(name)}",
                  file=sys.stderr)
        try:
            upscaler = blend.from_pretrained(name, **options)
        except ValueError as e:
            raise cli.UsageError(f"--model {name}: {e}") from None
        if args.scale is not None and args.scale != upscaler.scale:
            raise cli.UsageError(f"--scale {args.scale}: the built-in model {name} upscales x{upscaler.scale}")
        return upscaler
    try:
        return Upscaler.from_checkpoint(args.checkpoint, scale=args.scale, scale_option="--scale",
                                        **options)
    except (OSError, ValueError) as e:  # CheckpointNotFound, CheckpointMismatch, bad --tile or --scale
        raise cli.UsageError(f"--checkpoint {args.checkpoint}: {e}") from None


if __name__ == "__main__":
    sys.exit(cli.run(main))
