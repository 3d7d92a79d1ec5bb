"""Benchmark evaluation with the SR papers' protocol: ``python -m edsr_jax.evaluate``.

For every HR image: crop to a multiple of the scale, LR = MATLAB bicubic
``imresize(HR, 1/s)`` (uint8), SR = the method's upscaling of LR, then PSNR and
SSIM on the Y channel with ``scale`` pixels of border removed.

    python -m edsr_jax.evaluate --bicubic --scales 2 3 4 --json results.json DATASET_DIR...
    python -m edsr_jax.evaluate --checkpoint WORKDIR --bicubic DATASET_DIR...

``evaluate_folder`` is the same scoring as a function, for research code and the trainer.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edsr_jax import cli
from edsr_jax.images import ImageError, list_images, read_rgb, write_image
from edsr_jax.imresize import imresize
from edsr_jax.metrics import psnr, ssim

SCALES = (2, 3, 4)
PANEL_CROP = 192  # HR pixels (at most) of each side of a saved comparison crop
PANEL_GAP = 4

UpscaleFn = Callable[[np.ndarray, int], np.ndarray]


def modcrop(hr: np.ndarray, scale: int) -> np.ndarray:
    """``(H, W, C)`` -> ``(H - H % scale, W - W % scale, C)``, keeping the top-left corner."""
    h, w = hr.shape[:2]
    return hr[: h - h % scale, : w - w % scale]


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """The bicubic baseline: ``(h, w, 3) uint8`` -> ``(h*scale, w*scale, 3) uint8`` (MATLAB imresize)."""
    return imresize(lr, scale)


def score_image(hr: np.ndarray, scale: int, upscale_fn: UpscaleFn,
                lr: np.ndarray | None = None) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Score one HR image: ``hr (H, W, 3) uint8`` with H, W multiples of ``scale``.

    Returns ``(psnr_db, ssim, lr, sr)``: ``lr`` ``(H/s, W/s, 3) uint8`` is the given one or
    ``imresize(hr, 1/scale)`` (the papers' protocol), ``sr = upscale_fn(lr, scale)``
    ``(H, W, 3) uint8``; metrics on Y with a ``scale``-pixel border.
    """
    if lr is None:
        lr = imresize(hr, 1.0 / scale)
    sr = np.asarray(upscale_fn(lr, scale))
    if sr.shape != hr.shape:
        raise ValueError(f"upscaler returned shape {sr.shape} for LR {lr.shape} at x{scale}; expected {hr.shape}")
    return psnr(sr, hr, crop_border=scale), ssim(sr, hr, crop_border=scale), lr, sr


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "method"


def panel_path(save_dir: str | os.PathLike, dataset: str, scale: int, image: str, method: str) -> Path:
    """Where ``--save-images`` puts one comparison: ``DIR/dataset/xS/stem_method.png``."""
    return Path(save_dir) / _safe_name(dataset) / f"x{scale}" / f"{Path(image).stem}_{_safe_name(method)}.png"


def comparison_panel(lr: np.ndarray, sr: np.ndarray, hr: np.ndarray, scale: int,
                     method: str) -> np.ndarray:
    """Side-by-side centre crops ``LR (nearest) | bicubic | SR | HR`` as ``(h, w, 3) uint8``.

    The SR panel is left out when ``method`` is "bicubic" (it would repeat the bicubic one).
    """
    h, w = hr.shape[:2]
    ch, cw = min(h, PANEL_CROP) // scale * scale, min(w, PANEL_CROP) // scale * scale
    top, left = (h - ch) // 2 // scale * scale, (w - cw) // 2 // scale * scale
    hr_box = (slice(top, top + ch), slice(left, left + cw))
    lr_crop = lr[top // scale:(top + ch) // scale, left // scale:(left + cw) // scale]
    nearest = np.repeat(np.repeat(lr_crop, scale, axis=0), scale, axis=1)
    bicubic = bicubic_upscale(lr, scale)[hr_box]
    panels = [nearest, bicubic] + ([] if method == "bicubic" else [sr[hr_box]]) + [hr[hr_box]]
    gap = np.full((ch, PANEL_GAP, 3), 255, np.uint8)
    row = []
    for p in panels:
        row += [p, gap]
    return np.concatenate(row[:-1], axis=1)


def evaluate_folder(folder: str | os.PathLike, scale: int, upscale_fn: UpscaleFn, method: str, *,
                    max_images: int | None = None, save_dir: str | os.PathLike | None = None,
                    overwrite: bool = False, progress: bool = True, warn: bool = True,
                    spec: str | None = None) -> dict:
    """Score every image of ``folder`` (HR images) at ``scale`` with ``upscale_fn``.

    ``upscale_fn(lr (h, w, 3) uint8, scale) -> sr (h*scale, w*scale, 3) uint8``.
    Returns ``{"dataset", "scale", "method", "psnr", "ssim", "images", "per_image": [{"image",
    "psnr", "ssim"}], "failed": [{"image", "error"}]}``; ``psnr``/``ssim`` are the means over
    scored images (None when none was). Unreadable images are reported on stderr and listed
    in ``failed`` (``warn=False``: listed only); the rest are still scored. Conversions
    (grayscale, CMYK, EXIF rotation...) are noted on stderr too (``warn=False``: not).
    ``save_dir`` writes comparison crops (PNG). ``spec``: LR made by this degradation
    (``degrade.parse(spec, scale)``, seeded per image name) instead of MATLAB bicubic.
    Raises ``ImageError`` when the folder does not exist.
    """
    from tqdm import tqdm

    degrade_fn = None
    if spec:
        from edsr_jax import degrade

        pipe = degrade.parse(spec, scale=scale)
        degrade_fn = lambda hr, name: pipe(hr, degrade.image_rng(name))  # noqa: E731

    folder = Path(folder)
    paths = list_images(folder)
    if max_images is not None:
        paths = paths[:max_images]
    per_image, failed = [], []
    bar = tqdm(paths, desc=f"{folder.name} x{scale} {method}", unit="img", file=sys.stderr,
               disable=None if progress else True, leave=False)
    for path in bar:
        notes: list[str] = []
        try:
            hr = modcrop(read_rgb(path, notes), scale)
            if min(hr.shape[:2]) < 2 * scale + 11:
                raise ImageError(f"{path}: {hr.shape[1]}x{hr.shape[0]} pixels is too small "
                                 f"to score at x{scale}")
        except ImageError as e:
            if warn:
                tqdm.write(f"skipped: {e}", file=sys.stderr)
            failed.append({"image": str(path), "error": str(e)})
            continue
        if warn:
            for note in notes:
                tqdm.write(f"note: {note}", file=sys.stderr)
        lr = degrade_fn(hr, path.name) if degrade_fn else None
        p, s, lr, sr = score_image(hr, scale, upscale_fn, lr)
        per_image.append({"image": path.name, "psnr": p, "ssim": s})
        if save_dir is not None:
            write_image(panel_path(save_dir, folder.name, scale, path.name, method),
                        comparison_panel(lr, sr, hr, scale, method), overwrite=overwrite)
    bar.close()
    return {
        "dataset": folder.name,
        "scale": int(scale),
        "method": method,
        "degradation": spec or f"bicubic({scale})",
        "psnr": float(np.mean([r["psnr"] for r in per_image])) if per_image else None,
        "ssim": float(np.mean([r["ssim"] for r in per_image])) if per_image else None,
        "images": len(per_image),
        "per_image": per_image,
        "failed": failed,
    }


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
        return Upscaler.from_checkpoint(path, ensemble=args.ensemble, tile=args.tile)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(argv: Sequence[str] | None = None) -> int:
    """The evaluate CLI; returns 0, or 1 when some image could not be scored."""
    args = parse_args(argv)
    if not args.bicubic and not args.checkpoint:
        raise cli.UsageError("nothing to evaluate: pass --bicubic, --checkpoint DIR, or both")
    if not args.checkpoint:
        for flag, given in (("--ensemble", args.ensemble), ("--tile", args.tile is not None)):
            if given:
                raise cli.UsageError(f"{flag} applies to a model: give --checkpoint DIR too")
    if args.spec:
        from edsr_jax import degrade

        for s in args.scales or list(SCALES):
            try:
                degrade.parse(args.spec, scale=s)
            except degrade.SpecError as e:
                raise cli.UsageError(f"--spec: {e}") from None
    datasets = _check_datasets(args.datasets, args.max_images)
    json_path = Path(args.json) if args.json else None
    if json_path is not None and json_path.exists() and not args.overwrite:
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

    if args.save_images and not args.overwrite:
        for folder, paths in datasets:
            for method, _, method_scales in methods:
                for s in method_scales:
                    for p in paths:
                        target = panel_path(args.save_images, folder.name, s, p.name, method)
                        if target.exists():
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
