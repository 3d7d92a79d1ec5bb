"""How ``--model auto`` chooses on images of known damage (issue 29): the check behind the
weights of ``edsr_jax/inference/choice.py`` (``JPEG_OVER``, ``JPEG_UNDER``, ``NEAR``, ``MARGIN``).

  python experiments/auto_choice.py            # set, six evaluate runs (CPU: ~6 min), summary
  python experiments/auto_choice.py --grid     # also: the choice again under other JPEG weights

1. set: ``data/auto_choice/``: 11 HR images, 256 x 256 (the centres of the 8 built-in
   photographs, ``data.samples``; 3 generated posters, ``posters.render(7, i)``).
2. for each damage of ``DAMAGES``: ``python -m edsr_jax.evaluate data/auto_choice --bicubic
   --model photo-x2 poster-x2 auto --spec DAMAGE --json results/auto_choice/<n>.json`` (LR
   128 x 128, seeded per image name; ``auto`` records each image's choice).
3. summary: per damage, and over all 66 images (one folder of mixed damage), the mean PSNR of
   bicubic, photo-x2, poster-x2 and auto, how many images auto gave the better of the two
   models, how many choices were uncertain. ``--grid`` re-runs the choice from the recorded
   diagnoses (no model runs) for other JPEG weights.

The 66 images are few and small, and the weights were chosen on them: a check that the choice
does what the measurements say, not a held-out score (issue 29's item 4 is that).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "auto_choice"
DAMAGES = ("bicubic", "nearest > jpeg(30,60)", "nearest", "bilinear > jpeg(60,90)", "blur(1.5) > bicubic",
           "bicubic > noise(5)")
MODELS = ("photo-x2", "poster-x2", "general-x2")


def make_set(folder: Path) -> None:
    from edsr_jax.data import posters, samples
    from edsr_jax.io.images import read_rgb, write_image

    folder.mkdir(parents=True, exist_ok=True)
    paths = samples.builtin_images("train") + samples.builtin_images("val")
    photos = [read_rgb(p) for p in paths]
    for p, im in zip(paths, photos):
        h, w = im.shape[:2]
        top, left = max(0, (h - 256) // 2), max(0, (w - 256) // 2)
        write_image(folder / f"{p.stem}.png", im[top:top + 256, left:left + 256], overwrite=True)
    for i in range(3):
        write_image(folder / f"poster{i}.png", posters.render(7, i, (256, 256), photos=photos[:2]), overwrite=True)


def evaluate(folder: Path) -> list[Path]:
    files = []
    for n, spec in enumerate(DAMAGES, 1):
        target = OUT / f"{n}.json"
        OUT.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            cmd = [sys.executable, "-m", "edsr_jax.evaluate", str(folder), "--bicubic", "--model", *MODELS, "auto",
                   "--spec", spec, "--json", str(target)]
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT)
        files.append(target)
    return files


def load(files: list[Path]) -> list[tuple[str, dict, dict, dict]]:
    """``(damage, per-method PSNR, auto's choice record)`` per image."""
    rows = []
    for f in files:
        r = {x["method"]: x for x in json.loads(f.read_text())["results"]}
        for i, row in enumerate(r["auto"]["per_image"]):
            psnr = {m: r[m]["per_image"][i]["psnr"] for m in ("bicubic", *MODELS, "auto")}
            rows.append((r["auto"]["degradation"], row["image"], psnr, row["choice"]))
    return rows


def summary(rows) -> None:
    methods = ("bicubic", *MODELS, "auto")
    print(f"{'damage':<24} " + " ".join(f"{m:>10}" for m in methods) + "  best-of-models  uncertain")
    for damage in (*DAMAGES, "all"):
        mine = [r for r in rows if damage in (r[0], "all")]
        mean = {m: np.mean([p[m] for _, _, p, _ in mine]) for m in methods}
        right = sum(c["model"] == max(MODELS, key=p.get) for _, _, p, c in mine)
        print(f"{damage:<24} " + " ".join(f"{mean[m]:10.3f}" for m in methods)
              + f"  {right:>5} of {len(mine):<5}  {sum(c['uncertain'] for *_, c in mine):>5}")


def rechoose(rows, **constants) -> tuple[int, float]:
    """The choice again from the recorded diagnoses with ``choice``'s constants set as given (no
    model runs): how many images get the best of the models, and auto's mean PSNR."""
    from edsr_jax.inference import choice

    saved = {k: getattr(choice, k) for k in constants}
    for k, v in constants.items():
        setattr(choice, k, v)
    try:
        options = [c for c in choice.candidates(2) if c.name in MODELS]
        picks = [choice.choose(choice.Seen.of(SimpleNamespace(**c["diagnosis"])) if c["diagnosis"] else None,
                               options, 2).model for _, _, _, c in rows]
    finally:
        for k, v in saved.items():
            setattr(choice, k, v)
    right = sum(m == max(MODELS, key=p.get) for m, (_, _, p, _) in zip(picks, rows))
    return right, float(np.mean([p[m] for m, (_, _, p, _) in zip(picks, rows)]))


def grid(rows) -> None:
    print("JPEG_OVER JPEG_UNDER   NEAR MARGIN CONFIDENT  best-of-models  mean PSNR of the choice")
    for over, under, near, margin, confident in itertools.product(
            (1.0, 1.5), (1.0, 0.5), (0.3, 0.4, 0.6), (0.2, 0.3, 0.5), (0.3, 0.5, 0.7)):
        right, mean = rechoose(rows, JPEG_OVER=over, JPEG_UNDER=under, NEAR=near, MARGIN=margin,
                               CONFIDENT=confident)
        print(f"{over:9.2f} {under:10.2f} {near:6.2f} {margin:6.2f} {confident:9.2f}  {right:>5} of {len(rows):<5}  {mean:.3f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", action="store_true", help="also re-run the choice under other weights and thresholds")
    args = p.parse_args()
    make_set(ROOT / "data" / "auto_choice")
    rows = load(evaluate(ROOT / "data" / "auto_choice"))
    summary(rows)
    if args.grid:
        grid(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
