"""Real-data experiment: EDSR-baseline x2 trained on Sun80, scored on Set5 / Set14 / BSD68,
and the degradation-matching lesson (the "poster" scenario).

  python experiments/sun80.py --minutes 60 --out results/sun80

1. prepares ../shared/datasets/Sun80 twice with 2x2 tiles: bicubic pairs, and "poster" pairs
   (``nearest > jpeg(30,60)``: pixels dropped, then JPEG in transit);
2. trains the same network (experiments/sun80_x2.py) on each with the same wall-clock budget,
   one after the other (``--parallel``: both at once, each then gets about half the machine,
   so also pass ``--set train.steps=...`` about half of the config's to keep the schedule
   inside the budget); ``--models`` picks which, ``--set KEY=VALUE`` overrides the config,
   ``--suffix`` names the workdirs ``runs/sun80_x2SUFFIX`` and ``runs/sun80_poster_x2SUFFIX``;
3. scores the bicubic-trained model and bicubic upscaling on Set5, Set14 and BSD68 with the
   papers' protocol, and each model plus bicubic on BSD68 degraded the poster way;
4. draws PSNR-versus-step (from each run's metrics.jsonl) and the crop figures.

Every step is a plain call of the project's CLIs, printed before it runs; finished steps are
skipped on re-runs (prepare and train resume, existing JSON results are kept).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
POSTER = "nearest > jpeg(30,60)"
PY = sys.executable


def run(cmd: list[str], background: bool = False):
    print("+", " ".join(cmd), flush=True)
    if background:
        return subprocess.Popen(cmd, cwd=ROOT)
    subprocess.run(cmd, cwd=ROOT, check=True)


def prepare(out: Path) -> None:
    run([PY, "-m", "edsr_jax.prepare", str(DATASETS / "Sun80"), "--out", "data/sun80_bicubic",
         "--scales", "2", "--tiles", "2x2", "--no-progress"])
    run([PY, "-m", "edsr_jax.prepare", str(DATASETS / "Sun80"), "--out", "data/sun80_poster",
         "--scales", "2", "--tiles", "2x2", "--spec", POSTER, "--name", "poster", "--no-progress"])


def run_names(models: list[str], suffix: str) -> dict[str, str]:
    """model kind ("bicubic" / "poster") -> workdir name under --runs."""
    names = {"bicubic": f"sun80_x2{suffix}", "poster": f"sun80_poster_x2{suffix}"}
    return {m: names[m] for m in models}


def train(minutes: float, parallel: bool, runs: Path, names: dict[str, str],
          overrides: list[str]) -> None:
    common = [PY, "-m", "edsr_jax.train", "--config", "experiments/sun80_x2.py",
              f"--config.train.max_minutes={minutes}"] + [f"--config.{o}" for o in overrides]
    extra = {"bicubic": [], "poster": ["--config.data.train=data/sun80_poster",
                                       "--config.data.lr_name=poster", f"--config.data.val_spec={POSTER}"]}
    jobs = [common + ["--workdir", str(runs / name)] + extra[kind] for kind, name in names.items()]
    if parallel:
        procs = [run(j, background=True) for j in jobs]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise SystemExit(f"training failed: exit codes {codes}")
    else:
        for j in jobs:
            run(j)


def evaluate(runs: Path, out: Path, names: dict[str, str], suffix: str) -> None:
    sets = [str(DATASETS / n) for n in ("Set5", "Set14", "BSD68")]
    target = out / f"standard{suffix}.json"
    if "bicubic" in names and not target.exists():
        run([PY, "-m", "edsr_jax.evaluate", "--bicubic", "--checkpoint", str(runs / names["bicubic"]),
             "--scales", "2", *sets, "--json", str(target), "--save-panels", str(out / f"crops{suffix}")])
    for name in names.values():
        target = out / f"poster_{name}.json"
        if not target.exists():
            run([PY, "-m", "edsr_jax.evaluate", "--bicubic", "--checkpoint", str(runs / name),
                 "--scales", "2", "--spec", POSTER, str(DATASETS / "BSD68"), "--json", str(target),
                 "--save-panels", str(out / f"poster_crops_{name}")])


def plot(runs: Path, out: Path) -> None:
    """PSNR on Set5 versus step for every ``runs/sun80_*`` workdir with a metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    baselines = {}
    for path in sorted(runs.glob("sun80_*/metrics.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if "psnr" in r]
        if not rows:
            continue
        lr = "poster LR" if "poster" in path.parent.name else "bicubic LR"
        ax.plot([r["step"] for r in rows], [r["psnr"] for r in rows], marker="o", ms=2.5,
                label=f"{path.parent.name} (Set5, {lr})")
        baselines[lr] = rows[-1]["bicubic_psnr"]
    for lr, value in baselines.items():
        ax.axhline(value, color="gray", ls="--" if lr == "bicubic LR" else ":", lw=1,
                   label=f"bicubic upscaling (Set5, {lr})")
    ax.set_xlabel("training step (batch 16, LR patch 32)")
    ax.set_ylabel("PSNR on Y (dB)")
    ax.set_title("EDSR-baseline x2 trained on Sun80 tiles (CPU)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "psnr_vs_step.png")
    print(f"wrote {out / 'psnr_vs_step.png'}")


def figures(out: Path, names: dict[str, str], suffix: str) -> None:
    """The README's crops: Set5 butterfly (from the bicubic model's panels) and, for the BSD68
    image with the median gain of the poster-trained over the bicubic-trained model, both
    models' panels one above the other."""
    import numpy as np
    from PIL import Image

    if "bicubic" in names:
        panel = out / f"crops{suffix}" / "Set5" / "x2" / "butterfly_edsr_baseline_x2.png"
        if panel.exists():
            Image.open(panel).save(out / "butterfly_x2.png")
            print(f"wrote {out / 'butterfly_x2.png'}")
    mismatched, matched = out / f"poster_{names.get('bicubic')}.json", out / f"poster_{names.get('poster')}.json"
    if not (mismatched.exists() and matched.exists()):
        return
    score = lambda path: {r["image"]: r["psnr"] for r in next(  # noqa: E731
        x for x in json.loads(path.read_text())["results"] if x["method"] != "bicubic")["per_image"]}
    a, b = score(mismatched), score(matched)
    gains = sorted((b[k] - a[k], k) for k in a if k in b)
    image = Path(gains[len(gains) // 2][1]).stem
    rows = [np.asarray(Image.open(out / f"poster_crops_{names[k]}" / "BSD68" / "x2"
                                  / f"{image}_edsr_baseline_x2.png")) for k in ("bicubic", "poster")]
    gap = np.full((6, rows[0].shape[1], 3), 255, np.uint8)
    Image.fromarray(np.concatenate([rows[0], gap, rows[1]])).save(out / "poster_matching.png")
    print(f"wrote {out / 'poster_matching.png'} (BSD68 {image}, gain {gains[len(gains) // 2][0]:+.2f} dB)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60.0, help="training budget per model (default 60)")
    p.add_argument("--parallel", action="store_true", help="train the models at the same time")
    p.add_argument("--models", nargs="+", default=["bicubic", "poster"], choices=("bicubic", "poster"),
                   help="which models to train and score (default both)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for training, e.g. --set optim.lr=5e-4 (repeatable)")
    p.add_argument("--suffix", default="", help="appended to the workdir names (default none)")
    p.add_argument("--runs", default="runs", help="parent folder of the workdirs (default runs)")
    p.add_argument("--out", default="results/sun80", help="results folder (default results/sun80)")
    p.add_argument("--skip-train", action="store_true", help="only evaluate and plot existing runs")
    args = p.parse_args()
    if not (DATASETS / "Sun80").is_dir():
        print(f"error: {DATASETS / 'Sun80'} not found", file=sys.stderr)
        return 2
    for item in args.set:
        if "=" not in item:
            print(f"error: --set {item!r}: expected KEY=VALUE, e.g. optim.lr=5e-4", file=sys.stderr)
            return 2
    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = run_names(args.models, args.suffix)
    if not args.skip_train:
        prepare(out)
        train(args.minutes, args.parallel, runs, names, args.set)
    evaluate(runs, out, names, args.suffix)
    plot(runs, out)
    figures(out, names, args.suffix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
