"""Benchmark evaluation with the SR papers' protocol: ``python -m edsr_jax.evaluate``.

For every HR image: crop to a multiple of the scale, LR = MATLAB bicubic
``imresize(HR, 1/s)`` (uint8) or the pre-made LR file of a benchmark as distributed
(``Set5/HR`` + ``Set5/LR_bicubic/X2``, ``--lr-dir`` for DIV2K's separate folders), SR = the
method's upscaling of LR, then PSNR and SSIM on the Y channel (``--rgb``: on RGB) with
``scale`` pixels of border removed.

    python -m edsr_jax.evaluate --baselines nearest bilinear bicubic --scales 2 3 4 --json r.json DATASET_DIR...
    python -m edsr_jax.evaluate --checkpoint WORKDIR --bicubic DATASET_DIR...
    python -m edsr_jax.evaluate --checkpoint MDSR_DIR --scales 2 3 4 DATASET_DIR...   (one MDSR, each scale)
    python -m edsr_jax.evaluate --bicubic --model photo-x2 poster-x2 auto --spec 'nearest > jpeg(30,60)' DIR

``--model auto`` is a row of its own: per image the built-in model chosen from the damage
diagnosed in its LR (``inference/choice.py``), named in the JSON's per-image rows (``model``,
``choice``), with the count per model on stderr and in the row (``models``).

The protocol itself (pairs, scoring, panels) is ``edsr_jax.evaluation.evaluator``, which the trainer
uses too; ``evaluator.evaluate_folder`` is this CLI's scoring as a function, for research code.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from edsr_jax import SCALES
from edsr_jax.io import cli
from edsr_jax.evaluation.evaluator import (BASELINES, UpscaleFn, benchmark_layout, evaluate_folder, lr_folder,
                                panel_path, sr_path)
from edsr_jax.io.images import ImageError, image_folder

LAYOUTS = """\
test-set folders (DATASET_DIR):
  Set5/                  HR images only: LR made by MATLAB bicubic imresize(HR, 1/s)
                         (or by --spec)
  Set5/HR/ + Set5/LR_bicubic/X2/babyx2.png
                         a benchmark as distributed (EDSR-PyTorch, BasicSR; prepare's
                         output too): the pre-made LR files are scored (--make-lr: made
                         from HR instead)
  Set5/GTmod12/ + Set5/LRbicx2/baby.png
                         BasicSR's layout: the same
  DIV2K_valid_HR/ --lr-dir DIV2K_valid_LR_bicubic
                         HR and LR in separate folders (LR in X2/0801x2.png ..., or
                         --lr-dir 'LRbicx{s}' for one folder per scale); one --lr-dir
                         per DATASET_DIR, in order

scores: PSNR and SSIM on Y (MATLAB rgb2ycbcr luma, as EDSR, RCAN and most SR papers;
--rgb: on R, G and B), scale pixels of border removed, HR cut to a multiple of the scale.
"""


def build_parser() -> argparse.ArgumentParser:
    from edsr_jax.degradation.degrade import SPEC_HELP

    p = cli.ArgumentParser(
        prog="python -m edsr_jax.evaluate",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score super-resolution on benchmark test sets (PSNR/SSIM on Y by default, "
                    "border = scale, LR by MATLAB bicubic downscaling or as distributed).",
        epilog=LAYOUTS + "\n" + SPEC_HELP)
    p.add_argument("datasets", nargs="*", metavar="DATASET_DIR",
                   help="test-set folders: HR images, or HR/ and LR_bicubic/X<s>/ (below)")
    p.add_argument("--baselines", nargs="+", metavar="NAME",
                   help=f"score rule-based upsamplers side by side, from {' '.join(BASELINES)} "
                        "(bilinear and bicubic are MATLAB's imresize; nearest repeats pixels)")
    p.add_argument("--bicubic", action="store_true", help="shorthand for --baselines bicubic")
    p.add_argument("--rgb", action="store_true",
                   help="score on RGB instead of the Y channel (default: Y, as EDSR, RCAN and most "
                        "SR papers; some report RGB PSNR)")
    p.add_argument("--lr-dir", action="append", metavar="DIR",
                   help="pre-made LR images of a DATASET_DIR (DIR/X<s>/<name>x<s>.png, DIV2K's layout; "
                        "{s} in DIR stands for the scale); give one per DATASET_DIR, in order")
    p.add_argument("--make-lr", action="store_true",
                   help="make LR from HR (MATLAB bicubic, or --spec) even where the test set has "
                        "pre-made LR files")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", metavar="DIR", help="score a trained model (a workdir or checkpoint dir)")
    model.add_argument("--model", nargs="+", metavar="NAME",
                       help="score built-in trained models (python -m edsr_jax.pretrained lists them), "
                            "each a row; A+B: the mean of their outputs; auto: per image the one trained on "
                            "the damage diagnosed in its LR")
    p.add_argument("--scales", nargs="+", metavar="S",
                   help="scales to score, from 2 3 4 (default: all three for --bicubic alone; "
                        "the model's scale with --checkpoint, every scale of an MDSR)")
    p.add_argument("--spec", metavar="SPEC",
                   help="make LR with this degradation instead of MATLAB bicubic, e.g. "
                        "'nearest > jpeg(30,60)' (resize factor filled per scale; seeded per image; "
                        "grammar below)")
    p.add_argument("--ensemble", action="store_true", help="x8 self-ensemble for the model (slower)")
    p.add_argument("--tile", type=cli.whole_number(1), metavar="N", help="run the model on N x N LR tiles")
    p.add_argument("--conv-backend", default="auto", metavar="{auto,xla,onednn}",
                   help="the model's convolutions: auto (oneDNN's on CPU where built, XLA's "
                        "elsewhere; default), xla, or onednn")
    p.add_argument("--max-images", type=cli.whole_number(1), metavar="N", help="score only the first N images of each folder")
    p.add_argument("--save-images", metavar="DIR",
                   help="write every full SR output here: DIR/<set>/x<s>/<image>_<method>[_step<N>].png")
    p.add_argument("--save-panels", metavar="DIR",
                   help="write LR/bicubic/SR/HR comparison crops here: DIR/<set>/x<s>/<image>_<method>.png")
    p.add_argument("--json", metavar="FILE", help="write all scores, per image too, to this JSON file")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing --json, --save-images and --save-panels files")
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
    # "--baselines nearest bicubic Set5" : the same for the baseline names.
    baselines = []
    for i, token in enumerate(args.baselines or []):
        if token not in BASELINES:
            if i == 0:
                parser.error(f"argument --baselines: invalid choice: {token!r} (choose from "
                             f"{', '.join(BASELINES)})")
            extra = list(args.baselines[i:]) + extra
            break
        baselines.append(token)
    if args.bicubic and "bicubic" not in baselines:
        baselines.append("bicubic")
    args.baselines = list(dict.fromkeys(baselines))
    # "--model photo-x2 auto Set5" : the same for the built-in model names.
    if args.model:
        from edsr_jax.inference import pretrained
        from edsr_jax.inference.blend import SEP

        known = {*pretrained.names(), pretrained.AUTO}
        is_model = lambda t: t in known or (SEP in t and set(t.split(SEP)) <= known)  # noqa: E731
        cut = next((i for i, t in enumerate(args.model) if i and not is_model(t)), len(args.model))
        extra = list(args.model[cut:]) + extra
        args.model = list(dict.fromkeys(args.model[:cut]))
    args.datasets = list(args.datasets) + extra
    if not args.datasets:
        parser.error("the following arguments are required: DATASET_DIR")
    return args


class TestSet(NamedTuple):
    """One DATASET_DIR resolved: its ``name``, HR folder and images, and the pre-made LR
    folder per scale (``{}`` when LR is made from HR)."""

    name: str
    hr_dir: Path
    paths: list[Path]
    lr_dirs: dict[int, Path]


def _check_datasets(args, scales: Sequence[int]) -> list[TestSet]:
    """Resolve every DATASET_DIR (``benchmark_layout``) and its LR folders before anything is
    scored; a missing folder or an LR folder without the asked scale is a UsageError."""
    lr_dirs = args.lr_dir or []
    if lr_dirs and (args.make_lr or args.spec):
        raise cli.UsageError(f"--lr-dir gives pre-made LR images; {'--make-lr' if args.make_lr else '--spec'} "
                             "makes them from HR: choose one")
    if lr_dirs and len(lr_dirs) != len(args.datasets):
        raise cli.UsageError(f"--lr-dir given {len(lr_dirs)} time(s) for {len(args.datasets)} DATASET_DIR(s): "
                             "give one per DATASET_DIR, in the same order")
    out = []
    for k, folder in enumerate(args.datasets):
        folder = Path(folder)
        if not folder.exists():
            raise cli.UsageError(f"{folder}: no such folder")
        name, hr_dir, roots = benchmark_layout(folder)
        if lr_dirs:
            root = Path(lr_dirs[k])
        elif roots and not (args.make_lr or args.spec):
            if len(roots) > 1 and roots[0].name != "LR_bicubic":
                raise cli.UsageError(f"{folder}: several LR folders ({', '.join(r.name for r in roots)}); "
                                     "choose one with --lr-dir, or --make-lr")
            root = roots[0]
        else:
            root = None
        paths = image_folder(hr_dir)
        by_scale = {}
        if root is not None:
            for s in scales:
                try:
                    by_scale[s] = lr_folder(root, s)
                except ImageError as e:
                    raise cli.UsageError(f"{'--lr-dir ' if lr_dirs else ''}{e}; choose --scales, or "
                                         "--make-lr to make LR from HR") from None
        out.append(TestSet(name, hr_dir, paths[:args.max_images] if args.max_images else paths, by_scale))
    return out


def _load_builtin(args, name: str):
    """The ``infer.Upscaler`` of built-in model ``name`` (a ``blend.Blend`` for ``A+B``); an
    unknown name is a UsageError."""
    from edsr_jax.inference import blend  # lazily: only a model needs JAX

    try:
        return blend.from_pretrained(name, ensemble=args.ensemble, tile=args.tile, conv_backend=args.conv_backend)
    except ValueError as e:
        raise cli.UsageError(f"--model {name}: {e}") from None


def _load_upscaler(args):
    """The ``infer.Upscaler`` of ``--checkpoint`` (an MDSR at its first scale: the caller
    takes the others with ``at_scale``); a bad checkpoint is a UsageError naming it."""
    from edsr_jax.inference.infer import Upscaler  # lazily: only a model needs JAX

    path = Path(args.checkpoint)
    if not path.exists():
        raise cli.UsageError(f"{path}: no such checkpoint folder")
    try:
        return Upscaler.from_checkpoint(path, ensemble=args.ensemble, tile=args.tile,
                                        conv_backend=args.conv_backend, any_scale=True)
    except (OSError, ValueError) as e:
        raise cli.UsageError(f"--checkpoint {path}: {e}") from None


class _AutoMethod:
    """``--model auto`` as an evaluation method: ``(lr, scale) -> sr`` through the model chosen
    for each LR (one ``choice.AutoUpscaler`` per scale), the choices kept in order until
    ``annotate`` adds them to a result's per-image rows."""

    name = "auto"

    def __init__(self, by_scale: dict):
        self.by_scale = by_scale
        self.choices: list = []

    def __call__(self, lr: np.ndarray, scale: int) -> np.ndarray:
        auto = self.by_scale[scale]
        choice = auto.choose(lr)
        self.choices.append(choice)
        return auto.upscaler(choice.model)(lr)

    def annotate(self, result: dict) -> None:
        """Per image of ``result`` (``evaluate_folder``'s, whose images were upscaled by this
        method in order): ``model`` and ``choice`` (``Choice.record()``); ``models``: how many
        images each model upscaled. Says the counts on stderr."""
        rows, choices = result["per_image"], self.choices
        self.choices = []
        if len(choices) != len(rows):  # evaluate_folder calls the method once per image it scores
            raise RuntimeError(f"auto: {len(choices)} choices for {len(rows)} scored images")
        counts: dict[str, int] = {}
        for row, choice in zip(rows, choices):
            row["model"], row["choice"] = choice.model, choice.record()
            counts[choice.model] = counts.get(choice.model, 0) + 1
        result["models"] = counts
        uncertain = sum(c.uncertain for c in choices)
        print(f"note: {result['dataset']} x{result['scale']} auto: "
              + ", ".join(f"{m} for {n} image(s)" for m, n in sorted(counts.items()))
              + (f" ({uncertain} uncertain)" if uncertain else ""), file=sys.stderr)


def _auto(args, scales: Sequence[int]) -> _AutoMethod | None:
    """``--model auto`` at every scale of ``scales``, or None when not asked; a scale without a
    built-in model is a UsageError."""
    from edsr_jax.inference import pretrained

    if pretrained.AUTO not in (args.model or []):
        return None
    from edsr_jax.inference.choice import AutoUpscaler

    by_scale = {}
    for s in scales:
        try:
            by_scale[s] = AutoUpscaler(s, ensemble=args.ensemble, tile=args.tile, conv_backend=args.conv_backend)
        except ValueError as e:
            raise cli.UsageError(f"--model {pretrained.AUTO} at x{s}: {e}") from None
    return _AutoMethod(by_scale)


def _fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else f"{value:.{digits}f}"


def format_table(results: list[dict]) -> str:
    """The results as a text table, one row per (dataset, scale, method), with the gain of a
    model over bicubic on the same dataset and scale when both were scored; the PSNR/SSIM
    headers say the channel (Y or RGB) and the LR column where the LR came from."""
    channel = results[0].get("protocol", {}).get("channel", "Y") if results else "Y"
    rows = [("dataset", "scale", "method", f"PSNR {channel} (dB)", f"SSIM {channel}", "images")]
    for r in results:
        rows.append((r["dataset"], f"x{r['scale']}", r["method"], _fmt(r["psnr"], 3),
                     _fmt(r["ssim"], 4), str(r["images"])))
        base = next((b for b in results if b["method"] == "bicubic" and b["dataset"] == r["dataset"]
                     and b["scale"] == r["scale"]), None)
        if (r["method"] not in BASELINES and base is not None and None not in (r["psnr"], base["psnr"])):
            rows.append(("", "", "gain over bicubic", f"{r['psnr'] - base['psnr']:+.3f}",
                         f"{r['ssim'] - base['ssim']:+.4f}", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _write_json(path: Path, data: dict, overwrite: bool) -> None:
    """``--json``: strict JSON (``outputs.json_text``: the infinite PSNR of an image equal to its
    reference is the string "inf"), written atomically and, without ``overwrite``, exclusively
    (``outputs.atomic_write``: ``outputs.TakenMeanwhile`` when another process wrote it since
    the check); a full disk is one line."""
    from edsr_jax.io import outputs

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise outputs.write_error(path.parent, e) from None
    outputs.atomic_write(path, outputs.json_text(data, indent=2) + "\n", overwrite=overwrite)


def _lr_sources(datasets: Sequence[TestSet], args) -> list[str]:
    """One line per test set saying where its LR comes from."""
    lines = []
    for t in datasets:
        if t.lr_dirs:
            where = ", ".join(f"x{s}: {d}" for s, d in t.lr_dirs.items())
            lines.append(f"note: {t.name}: LR images as distributed ({where})")
        elif args.spec:
            lines.append(f"note: {t.name}: LR made from HR by --spec {args.spec!r}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """The evaluate CLI; returns 0, or 1 when some image could not be scored."""
    args = parse_args(argv)
    has_model = bool(args.checkpoint or args.model)
    if not args.baselines and not has_model:
        raise cli.UsageError("nothing to evaluate: pass --baselines NAME..., --bicubic, --checkpoint DIR "
                             "or --model NAME, or both")
    if not has_model:
        for flag, given in (("--ensemble", args.ensemble), ("--tile", args.tile is not None),
                            ("--conv-backend", args.conv_backend != "auto")):
            if given:
                raise cli.UsageError(f"{flag} applies to a model: give --checkpoint DIR or --model NAME too")
    else:
        from edsr_jax.inference import infer

        try:
            infer.conv_backend_for(args.conv_backend, option="--conv-backend")
        except ValueError as e:
            raise cli.UsageError(str(e)) from None
    if args.spec:
        from edsr_jax.degradation import degrade

        for s in args.scales or list(SCALES):
            try:
                degrade.parse(args.spec, scale=s)
            except degrade.SpecError as e:
                raise cli.UsageError(f"--spec: {e}") from None
    for option in ("json", "save_images", "save_panels"):
        value = getattr(args, option)
        if value is not None and not value.strip():
            raise cli.UsageError(f"--{option.replace('_', '-')}: empty path")

    upscaler = None
    scales = list(dict.fromkeys(args.scales or []))
    model_scales: list[int] = []
    builtins: list = []  # (name, Upscaler) of --model, auto's at each scale below
    if args.model:
        from edsr_jax.inference import pretrained

        builtins = [(name, _load_builtin(args, name)) for name in args.model if name != pretrained.AUTO]
        for name, up in builtins:
            if scales and up.scale not in scales:
                raise cli.UsageError(f"--model {name}: the model is a x{up.scale} model but --scales asks for "
                                     f"{' '.join(map(str, scales))}")
        scales = scales or sorted({up.scale for _, up in builtins}) or [2]
    elif has_model:
        upscaler = _load_upscaler(args)
        if upscaler.mdsr_scale is not None:  # an MDSR: every scale asked, from the one checkpoint
            served = list(upscaler.config.scales)
            if any(s not in served for s in scales):
                raise cli.UsageError(f"--scales {' '.join(map(str, scales))}: the checkpoint is an MDSR "
                                     f"for scales {' '.join(map(str, served))}")
            scales = scales or served
            model_scales = list(scales)
        else:
            model_scale = int(upscaler.scale)
            if scales and model_scale not in scales:
                raise cli.UsageError(f"the {'checkpoint' if args.checkpoint else 'model'} is a x{model_scale} "
                                     f"model but --scales asks for "
                                     f"{' '.join(map(str, scales))}")
            scales = scales or [model_scale]
            model_scales = [model_scale]
    scales = scales or list(SCALES)
    datasets = _check_datasets(args, scales)
    inputs = [p for t in datasets for p in t.paths] + [
        p for t in datasets for d in t.lr_dirs.values() for p in (d.iterdir() if d.is_dir() else [])]
    json_path = Path(args.json) if args.json else None
    if json_path is not None:
        from edsr_jax.io import outputs

        outputs.check_not_input(json_path, inputs, option="--json")
        if json_path.exists() and not args.overwrite:
            raise cli.UsageError(f"{json_path}: exists (pass --overwrite to replace it)")

    # (method, upscale_fn, scales, checkpoint step or None); baselines first, in the order given
    methods: list[tuple[str, UpscaleFn, list[int], int | None]] = [
        (name, BASELINES[name], scales, None) for name in args.baselines]
    methods += [(name, (lambda up: lambda lr, scale: up(lr))(up), [up.scale], None) for name, up in builtins]
    auto = _auto(args, scales)
    if auto is not None:
        methods.append((auto.name, auto, scales, None))
    if upscaler is not None:
        from edsr_jax.inference import infer

        # MDSR: one Upscaler per scale on the shared weights; EDSR: the one
        by_scale = ({s: upscaler.at_scale(s) for s in model_scales} if upscaler.mdsr_scale is not None
                    else {model_scales[0]: upscaler})

        def model_fn(lr: np.ndarray, scale: int) -> np.ndarray:
            return by_scale[scale](lr)

        # EDSR: its name (edsr_baseline_x2); MDSR: one method over its scales (mdsr_baseline)
        name = infer.model_name(upscaler.config) if upscaler.mdsr_scale is not None else upscaler.name
        methods.append((str(name), model_fn, model_scales, getattr(upscaler, "step", None)))

    for option, folder, path_of in (("--save-images", args.save_images, sr_path),
                                    ("--save-panels", args.save_panels, panel_path)):
        if not folder:
            continue
        from edsr_jax.io import outputs

        for t in datasets:
            for method, _, method_scales, step in methods:
                for s in method_scales:
                    for p in t.paths:
                        target = (sr_path(folder, t.name, s, p.name, method, step) if path_of is sr_path
                                  else panel_path(folder, t.name, s, p.name, method))
                        outputs.inside(folder, str(target.relative_to(folder)), option=option)
                        outputs.check_not_input(target, inputs, option=option)
                        if target.exists() and not args.overwrite:
                            raise cli.UsageError(f"{target}: exists (pass --overwrite to replace it)")

    for line in _lr_sources(datasets, args):
        print(line, file=sys.stderr)
    results, failed, not_written = [], {}, []
    for t in datasets:
        first = True
        for s in scales:
            first = first or bool(t.lr_dirs)  # pre-made LR: each scale has its own files
            for method, fn, method_scales, step in methods:
                if s not in method_scales:
                    continue
                r = evaluate_folder(t.hr_dir, s, fn, method, max_images=args.max_images,
                                    save_dir=args.save_panels, overwrite=args.overwrite, warn=first,
                                    spec=None if t.lr_dirs else args.spec, lr_dir=t.lr_dirs.get(s),
                                    y_channel=not args.rgb, dataset=t.name,
                                    save_sr_dir=args.save_images, step=step)
                first = False
                if auto is not None and method == auto.name:
                    auto.annotate(r)
                for f in r.pop("failed"):
                    failed.setdefault(f["image"], f)
                not_written += r.pop("not_written")
                results.append(r)

    print(format_table(results))
    if failed:
        print(f"{len(failed)} image(s) could not be scored; see the messages above", file=sys.stderr)
    if not_written:
        print(f"{len(not_written)} image file(s) not written: another process wrote them first (see above)",
              file=sys.stderr)
    if json_path is not None:
        try:
            _write_json(json_path, {"results": results, "failed": list(failed.values())}, args.overwrite)
        except FileExistsError as e:  # outputs.TakenMeanwhile
            print(f"not written: {e}", file=sys.stderr)
            return 1
        print(f"wrote {json_path}", file=sys.stderr)
    return 1 if failed or not_written else 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
