"""Which built-in model for which damage, and does ``--model auto`` choose well? (issue 29)

  python experiments/prescribe.py                  # held-out data, every model on every damage, the table
  python experiments/prescribe.py --rescore-auto   # auto again (after a change of the choice alone)
  python experiments/prescribe.py --scale 4        # the same at x4: photo-x4, general-x4, auto

For each damage below, held-out images are degraded (seeded per image) and scored x2 (PSNR/SSIM
on Y, border 2) with bicubic upscaling, every built-in x2 model, and ``--model auto`` (each
image diagnosed, the model chosen per image). Photographs: Set14 and BSD68 (not in any model's
training data). Posters: 6 held-out Latin posters (seed 1001, the held-out word list, fonts
DejaVuSerif and DejaVuSansCondensed, Set14's photographs) and 6 held-out Chinese posters,
each cut into 2x2 tiles of 1024x576. The mixed folder holds BSD68 and both poster sets, each
image degraded by one of the five damages (a mixture spec, one chain per image by its name).

At x4 (``--scale 4``) the same images and damages, the blur doubled (``blur(3) > bicubic``: a
sigma in HR pixels before the downscale), the x4 models (``photo-x4``, ``general-x4``) and
``auto`` (no calibration at x4: the distance rule, the general model when uncertain).

Writes ``results/prescribe/eval_<damage>.json`` (x4: ``eval_x4_<damage>.json``) and
``results/prescribe/table.md`` (``table_x4.md``; the README's tables), with the goals checked:
``auto`` within 0.1 dB of the best single built-in on each damage and above every single model
on the mixed folder; the general model above bicubic on every damage.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
PY = sys.executable
DATA = ROOT / "data" / "prescribe"
OUT = ROOT / "results" / "prescribe"
POSTER = "nearest > jpeg(30,60)"
FIVE = ["bicubic", POSTER, "bilinear > jpeg(60,90)", "blur(1.5) > bicubic", "bicubic > noise(5)"]
BLUR = {2: FIVE[3], 4: "blur(3) > bicubic"}  # the blur in HR pixels: doubled at x4
PHOTOS = [DATASETS / "Set14", DATASETS / "BSD68"]
LATIN, CJK, MIXED = DATA / "PostersHeldout", DATA / "PostersHeldoutCJK", DATA / "Mixed"


def damages(scale: int) -> dict[str, tuple[str, str, list[Path]]]:
    """damage key -> (row label, spec, test folders) at ``scale`` (2 or 4)."""
    five = [BLUR[scale] if d == FIVE[3] else d for d in FIVE]
    return {
        "bicubic": ("bicubic LR, photographs (Set14, BSD68)", "bicubic", PHOTOS),
        "poster_latin": (f"`{POSTER}`, Latin posters", POSTER, [LATIN]),
        "poster_cjk": (f"`{POSTER}`, Chinese posters", POSTER, [CJK]),
        "bilinear_jpeg": ("`bilinear > jpeg(60,90)`, photographs", FIVE[2], PHOTOS),
        "blur_bicubic": (f"`{BLUR[scale]}`, photographs", BLUR[scale], PHOTOS),
        "bicubic_noise": ("`bicubic > noise(5)`, photographs", FIVE[4], PHOTOS),
        "mixed": ("mixed folder (BSD68 and both poster sets, one of the five per image)",
                  " | ".join(five), [MIXED]),
    }


MODELS = {2: ["photo-x2", "poster-x2", "general-x2", "auto"], 4: ["photo-x4", "general-x4", "auto"]}


def result(key: str, scale: int) -> Path:
    return OUT / (f"eval_{key}.json" if scale == 2 else f"eval_x{scale}_{key}.json")


# the held-out posters: the posters command's arguments and the folder of HR tiles they become
HELDOUT_DRAWS = {
    LATIN: ["--count", "6", "--seed", "1001", "--words", "heldout", "--fonts",
            "DejaVuSerif,DejaVuSansCondensed", "--photos", str(DATASETS / "Set14")],
    CJK: ["--count", "6", "--seed", "1002", "--words", "heldout", "--fonts",
          "DejaVuSerif,DejaVuSansCondensed,wqy-microhei", "--photos", str(DATASETS / "Set14"),
          "--cjk-share", "1"],
}


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def make_data() -> None:
    """The held-out poster tiles (drawn, then cut 2x2 by prepare) and the mixed folder (links)."""
    for folder, args in HELDOUT_DRAWS.items():
        if folder.exists():
            continue
        drawn, tiled = folder.with_name(folder.name + "_drawn"), folder.with_name(folder.name + "_tiled")
        if not drawn.exists():
            run([PY, "-m", "edsr_jax.posters", "--out", str(drawn), *args])
        if not tiled.exists():
            run([PY, "-m", "edsr_jax.prepare", str(drawn), "--out", str(tiled), "--scales", "2",
                 "--tiles", "2x2", "--no-progress"])
        shutil.copytree(tiled / "HR", folder)  # the HR tiles alone: evaluate makes each damage
    if not MIXED.exists():
        MIXED.mkdir(parents=True)
        for src, prefix in ((DATASETS / "BSD68", "bsd68_"), (LATIN, "latin_"), (CJK, "cjk_")):
            for f in sorted(src.iterdir()):
                if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"):
                    (MIXED / (prefix + f.name)).symlink_to(f.resolve())


def score(scale: int) -> None:
    """evaluate: per damage one call, bicubic upscaling and every model side by side (the LR made
    once, each model loaded once)."""
    for key, (_, spec, sets) in damages(scale).items():
        target = result(key, scale)
        if not target.exists():
            run([PY, "-m", "edsr_jax.evaluate", "--scales", str(scale), "--bicubic", "--model", *MODELS[scale],
                 "--spec", spec, *map(str, sets), "--json", str(target)])


def rescore_auto(scale: int) -> None:
    """``auto`` again on every damage (the single models' rows kept): after a change of the
    choice alone (``edsr_jax/inference/choice.py``), the same LR, one model run per image."""
    for key, (_, spec, sets) in damages(scale).items():
        target = result(key, scale)
        fresh = target.with_suffix(".auto.json")
        fresh.unlink(missing_ok=True)
        run([PY, "-m", "edsr_jax.evaluate", "--scales", str(scale), "--model", "auto", "--spec", spec,
             *map(str, sets), "--json", str(fresh)])
        old = json.loads(target.read_text())
        new = json.loads(fresh.read_text())["results"]
        old["results"] = [r for r in old["results"] if r["method"] != "auto"] + new
        target.write_text(json.dumps(old, indent=2))
        fresh.unlink()


def load(scale: int) -> dict:
    """{(method, damage): (psnr, ssim, images)}: image-weighted means over a damage's folders."""
    sums: dict = {}
    for key in damages(scale):
        path = result(key, scale)
        if not path.exists():
            continue
        for r in json.loads(path.read_text())["results"]:
            s = sums.setdefault((r["method"], key), [0.0, 0.0, 0])
            s[0] += r["psnr"] * r["images"]
            s[1] += r["ssim"] * r["images"]
            s[2] += r["images"]
    return {k: (p / n, q / n, n) for k, (p, q, n) in sums.items()}


def choices(key: str, scale: int) -> dict[str, int]:
    """How often ``auto`` chose each model on damage ``key`` (from its JSON's per-image records)."""
    path = result(key, scale)
    counts: dict[str, int] = {}
    if path.exists():
        for r in json.loads(path.read_text())["results"]:
            if r["method"] != "auto":
                continue
            for im in r.get("per_image", []):
                name = im.get("model")
                if name:
                    counts[name] = counts.get(name, 0) + 1
    return counts


def table(scale: int) -> str:
    scores = load(scale)
    models = MODELS[scale]
    general = f"general-x{scale}"
    methods = ["bicubic", *models]
    head = ["damage (test images)", *methods, "auto chose"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    checks = []
    for key, (label, _, _) in damages(scale).items():
        cells = []
        for m in methods:
            v = scores.get((m, key))
            cells.append("—" if v is None else f"{v[0]:.2f} / {v[1]:.4f}")
        chose = ", ".join(f"{n} {c}" for n, c in sorted(choices(key, scale).items(), key=lambda t: -t[1]))
        n = next((scores[(m, key)][2] for m in methods if (m, key) in scores), 0)
        lines.append(f"| {label} ({n}) | " + " | ".join(cells) + f" | {chose or '—'} |")
        singles = {m: scores[(m, key)][0] for m in models[:-1] if (m, key) in scores}
        if ("auto", key) in scores and singles:
            best = max(singles, key=singles.get)
            gap = scores[("auto", key)][0] - singles[best]
            goal = gap > 0 if key == "mixed" else gap >= -0.1
            checks.append(f"{key}: auto - best single ({best}) = {gap:+.2f} dB "
                          f"({'met' if goal else 'missed'}: {'> 0' if key == 'mixed' else '>= -0.1'})")
        if (general, key) in scores and ("bicubic", key) in scores:
            d = scores[(general, key)][0] - scores[("bicubic", key)][0]
            checks.append(f"{key}: {general} - bicubic = {d:+.2f} dB ({'met' if d > 0 else 'missed'}: > 0)")
    text = (f"PSNR (dB) / SSIM on Y, x{scale}, border 2; LR made from held-out HR by each damage, seeded per "
            "image; image-weighted means over the folders; in brackets the number of images.\n\n"
            + "\n".join(lines) + "\n\nGoals:\n" + "\n".join(f"- {c}" for c in checks) + "\n")
    (OUT / ("table.md" if scale == 2 else f"table_x{scale}.md")).write_text(text)
    print(text)
    return text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=int, choices=(2, 4), default=2)
    p.add_argument("--rescore-auto", action="store_true", help="auto again, the single models' rows kept")
    args = p.parse_args()
    for folder in PHOTOS:
        if not folder.is_dir():
            print(f"error: {folder} not found", file=sys.stderr)
            return 2
    OUT.mkdir(parents=True, exist_ok=True)
    make_data()
    score(args.scale)
    if args.rescore_auto:
        rescore_auto(args.scale)
    table(args.scale)
    return 0


if __name__ == "__main__":
    sys.exit(main())
