"""Real-data experiment: EDSR-baseline x2 trained on Sun80, scored on Set5 / Set14 / BSD68,
and the degradation-matching lesson (the "poster" scenario).

  python experiments/sun80.py --minutes 60 --out results/sun80

1. prepares ../shared/datasets/Sun80 twice with 2x2 tiles: bicubic pairs, and "poster" pairs
   (``nearest > jpeg(30,60)``: pixels dropped, then JPEG in transit);
2. trains the same network on each with the same wall-clock budget (``--parallel`` runs
   both at once, each then gets about half the machine);
3. scores the bicubic-trained model and bicubic upscaling on Set5, Set14 and BSD68 with the
   papers' protocol, and both models plus bicubic on BSD68 degraded the poster way;
4. draws PSNR-versus-step (from each run's metrics.jsonl) and a crop comparison.

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


def train(minutes: float, parallel: bool, runs: Path) -> None:
    common = [PY, "-m", "edsr_jax.train", "--config", "experiments/sun80_x2.py",
              f"--config.train.max_minutes={minutes}"]
    jobs = [common + ["--workdir", str(runs / "sun80_x2")],
            common + ["--workdir", str(runs / "sun80_poster_x2"), "--config.data.train=data/sun80_poster",
                      "--config.data.lr_name=poster", f"--config.data.val_spec={POSTER}"]]
    if parallel:
        procs = [run(j, background=True) for j in jobs]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise SystemExit(f"training failed: exit codes {codes}")
    else:
        for j in jobs:
            run(j)


def evaluate(runs: Path, out: Path) -> None:
    sets = [str(DATASETS / n) for n in ("Set5", "Set14", "BSD68")]
    if not (out / "standard.json").exists():
        run([PY, "-m", "edsr_jax.evaluate", "--bicubic", "--checkpoint", str(runs / "sun80_x2"),
             "--scales", "2", *sets, "--json", str(out / "standard.json"),
             "--save-images", str(out / "crops")])
    for name in ("sun80_x2", "sun80_poster_x2"):
        target = out / f"poster_{name}.json"
        if not target.exists():
            run([PY, "-m", "edsr_jax.evaluate", "--bicubic", "--checkpoint", str(runs / name),
                 "--scales", "2", "--spec", POSTER, str(DATASETS / "BSD68"), "--json", str(target),
                 "--save-images", str(out / f"poster_crops_{name}")])


def plot(runs: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    labels = {"sun80_x2": "bicubic-trained, Set5 (bicubic LR)",
              "sun80_poster_x2": "poster-trained, Set5 (poster LR)"}
    for name, label in labels.items():
        path = runs / name / "metrics.jsonl"
        if not path.exists():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        steps = [r["step"] for r in rows]
        line, = ax.plot(steps, [r["psnr"] for r in rows], marker="o", ms=3, label=label)
        ax.axhline(rows[-1]["bicubic_psnr"], color=line.get_color(), ls="--", lw=1,
                   label=f"bicubic upscaling ({label.split(', ')[1]})")
    ax.set_xlabel("training step (batch 16, LR patch 32)")
    ax.set_ylabel("PSNR on Y (dB)")
    ax.set_title("EDSR-baseline x2 trained on Sun80 tiles (CPU)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "psnr_vs_step.png")
    print(f"wrote {out / 'psnr_vs_step.png'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60.0, help="training budget per model (default 60)")
    p.add_argument("--parallel", action="store_true", help="train both models at the same time")
    p.add_argument("--runs", default="runs", help="parent folder of the two workdirs (default runs)")
    p.add_argument("--out", default="results/sun80", help="results folder (default results/sun80)")
    p.add_argument("--skip-train", action="store_true", help="only evaluate and plot existing runs")
    args = p.parse_args()
    if not (DATASETS / "Sun80").is_dir():
        raise SystemExit(f"error: {DATASETS / 'Sun80'} not found")
    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.skip_train:
        prepare(out)
        train(args.minutes, args.parallel, runs)
    evaluate(runs, out)
    plot(runs, out)


if __name__ == "__main__":
    main()
