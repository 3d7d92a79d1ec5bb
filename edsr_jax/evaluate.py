"""Benchmark evaluation with the SR papers' protocol: ``python -m edsr_jax.evaluate``.

For every HR image: crop to a multiple of the scale, LR = MATLAB bicubic
``imresize(HR, 1/s)`` (uint8), SR = the method's upscaling of LR, then PSNR and
SSIM on the Y channel with ``scale`` pixels of border removed.

    python -m edsr_jax.evaluate --bicubic --scales 2 3 4 --json results.json DATASET_DIR...
    python -m edsr_jax.evaluate --checkpoint WORKDIR --bicubic DATASET_DIR...

The protocol itself (pairs, scoring, panels) is ``edsr_jax.evaluator``, which the trainer
uses too; ``evaluator.evaluate_folder`` is this CLI's scoring as a function, for research code.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from edsr_jax import SCALES, cli
from edsr_jax.evaluator import UpscaleFn, bicubic_upscale, evaluate_folder, panel_path


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m edsr_jax.evaluate",
        description="Score super-resolution on benchmark folders of HR images (PSNR/SSIM on Y, "
                    "border = scale, LR by MATLAB bicubic downscaling).")
    p.add_argument("datasets", nargs="*", metavar="DATASET_DIR", help="folders of HR images (e.g. Set5)")
    p.add_argument("--bicubic", action="store_true", help="score the bicubic upscaling baseline")
    p.add_argument("--checkpoint", metavar="DIR", help="score a trained model (a workdir or checkpoint dir)")
    p.add_argument("--scales", nargs="+", metavar="S",
                   help="scales to score, from 2 3 4 (default: all three for --bicubic alone; "
                        "the model's scale with --checkpoint)")
    p.add_argument("--spec", metavar="SPEC",
                   help="make LR with this degradation instead of MATLAB bicubic, e.g. "
                        "'nearest > jpeg(30,60)' (resize factor filled per scale; seeded per image)")
    p.add_argument("--ensemble", action="store_true", help="x8 self-ensemble for the model (slower)")
    p.add_argument("--tile", type=_positive_int, metavar="N", help="run the model on N x N LR tiles")
    p.add_argument("--conv-backend", default="auto", metavar="{auto,xla,onednn}",
                   help="the model's convolutions: auto (oneDNN's on CPU where built, XLA's "
                        "elsewhere; default), xla, or onednn")
    p.add_argument("--max-images", type=_positive_int, metavar="N", help="score only the first N images of each folder")
    p.add_argument("--save-images", metavar="DIR", help="write LR/bicubic/SR/HR comparison crops here (PNG)")
    p.add_argument("--json", metavar="FILE", help="write all scores, per image too, to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace existing --json and --save-images files")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; a bad option or value raises ``cli.UsageError`` naming it."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # "--scales 2 4 Set5" : argparse gives the folder to --scales; hand it back.
    scales, extra = [], []
    for i, token in enumerate(args.scales or []):
        if not re.fullmatch(r"[+-]?\d+", token):
            if i == 0:
                parser.error(f"argument --scales: expected scales from 2 3 4, got {token!r}")
            extra = list(args.scales[i:])
            break
        scales.append(int(token))
    for s in scales:
        if s not in SCALES:
            parser.error(f"argument --scales: invalid choice: {s} (choose from "
                         f"{', '.join(map(str, SCALES))})")
    args.scales = scales or None
    args.datasets = list(args.datasets) + extra
    if not args.datasets:
        parser.error("the following arguments are required: DATASET_DIR")
    return args


def _check_datasets(folders: Sequence[str], max_images: int | None) -> list[tuple[Path, list[Path]]]:
    out = []
    for folder in folders:
        folder = Path(folder)
        paths = cli.image_folder(folder)
        out.append((folder, paths[:max_images] if max_images else paths))
    return out


def _load_upscaler(args):
    from edsr_jax.infer import Upscaler  # lazily: only --checkpoint needs JAX and the model

    path = Path(args.checkpoint)
    if not path.exists():
        raise cli.UsageError(f"{path}: no such checkpoint folder")
    try:
        return Upscaler.from_checkpoint(path, ensemble=args.ensemble, tile=args.tile,
                                        conv_backend=args.conv_backend)
    except (OSError, ValueError) as e:
        raise cli.UsageError(f"--checkpoint {path}: {e}") from None


def _fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else f"{value:.{digits}f}"


def format_table(results: list[dict]) -> str:
    """The results as a text table, one row per (dataset, scale, method), with the gain of a
    model over bicubic on the same dataset and scale when both were scored."""
    rows = [("dataset", "scale", "method", "PSNR (dB)", "SSIM", "images")]
    for r in results:
        rows.append((r["dataset"], f"x{r['scale']}", r["method"], _fmt(r["psnr"], 3),
                     _fmt(r["ssim"], 4), str(r["images"])))
        base = next((b for b in results if b["method"] == "bicubic" and b["dataset"] == r["dataset"]
                     and b["scale"] == r["scale"]), None)
        if (r["method"] != "bicubic" and base is not None and None not in (r["psnr"], base["psnr"])):
            rows.append(("", "", "gain over bicubic", f"{r['psnr'] - base['psnr']:+.3f}",
                         f"{r['ssim'] - base['ssim']:+.4f}", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _write_json(path: Path, data: dict) -> None:
    """``--json``: written atomically (``outputs.atomic_write``); a full disk is one line."""
    from edsr_jax import outputs

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise outputs.write_error(path.parent, e) from None
    outputs.atomic_write(path, json.dumps(data, indent=2) + "\n", overwrite=True)


def main(argv: Sequence[str] | None = None) -> int:
    """The evaluate CLI; returns 0, or 1 when some image could not be scored."""
    args = parse_args(argv)
    if not args.bicubic and not args.checkpoint:
        raise cli.UsageError("nothing to evaluate: pass --bicubic, --checkpoint DIR, or both")
    if not args.checkpoint:
        for flag, given in (("--ensemble", args.ensemble), ("--tile", args.tile is not None),
                            ("--conv-backend", args.conv_backend != "auto")):
            if given:
                raise cli.UsageError(f"{flag} applies to a model: give --checkpoint DIR too")
    else:
        from edsr_jax import infer

        try:
            infer.conv_backend_for(args.conv_backend, option="--conv-backend")
        except ValueError as e:
            raise cli.UsageError(str(e)) from None
    if args.spec:
        from edsr_jax import degrade

        for s in args.scales or list(SCALES):
            try:
                degrade.parse(args.spec, scale=s)
            except degrade.SpecError as e:
                raise cli.UsageError(f"--spec: {e}") from None
    datasets = _check_datasets(args.datasets, args.max_images)
    json_path = Path(args.json) if args.json else None
    if json_path is not None:
        from edsr_jax import outputs

        outputs.check_not_input(json_path, [p for _, paths in datasets for p in paths], option="--json")
        if json_path.exists() and not args.overwrite:
            raise cli.UsageError(f"{json_path}: exists (pass --overwrite to replace it)")

    methods: list[tuple[str, UpscaleFn, list[int]]] = []
    scales = list(dict.fromkeys(args.scales or []))
    if args.checkpoint:
        upscaler = _load_upscaler(args)
        model_scale = int(upscaler.scale)
        if scales and model_scale not in scales:
            raise cli.UsageError(f"the checkpoint is a x{model_scale} model but --scales asks for "
                                 f"{' '.join(map(str, scales))}")
        scales = scales or [model_scale]

        def model_fn(lr: np.ndarray, scale: int) -> np.ndarray:
            return upscaler(lr)

        methods.append((str(upscaler.name), model_fn, [model_scale]))
    scales = scales or list(SCALES)
    if args.bicubic:
        methods.insert(0, ("bicubic", bicubic_upscale, scales))

    if args.save_images:
        from edsr_jax import outputs

        inputs = [p for _, paths in datasets for p in paths]
        for folder, paths in datasets:
            for method, _, method_scales in methods:
                for s in method_scales:
                    for p in paths:
                        target = panel_path(args.save_images, folder.name, s, p.name, method)
                        outputs.inside(args.save_images, str(target.relative_to(args.save_images)),
                                       option="--save-images")
                        outputs.check_not_input(target, inputs, option="--save-images")
                        if target.exists() and not args.overwrite:
                            raise cli.UsageError(f"{target}: exists (pass --overwrite to replace it)")

    results, failed = [], {}
    for folder, _ in datasets:
        first = True
        for s in scales:
            for method, fn, method_scales in methods:
                if s not in method_scales:
                    continue
                r = evaluate_folder(folder, s, fn, method, max_images=args.max_images,
                                    save_dir=args.save_images, overwrite=args.overwrite, warn=first,
                                    spec=args.spec)
                first = False
                for f in r.pop("failed"):
                    failed.setdefault(f["image"], f)
                results.append(r)

    print(format_table(results))
    if failed:
        print(f"{len(failed)} image(s) could not be scored; see the messages above", file=sys.stderr)
    if json_path is not None:
        _write_json(json_path, {"results": results, "failed": list(failed.values())})
        print(f"wrote {json_path}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
