"""The models for unknown damage (issue 29): the built-ins ``general-x2`` and ``general-x4``.

  python experiments/general.py                     # both; finished steps are skipped on re-runs
  python experiments/general.py --only general-x4   # one of them
  python experiments/general.py --no-pack           # train and score, leave the built-ins as they are

1. data: ``data/general/train/``: links to Sun80's 80 photographs and 100 generated training
   posters (``python -m edsr_jax.posters --seed 1 --words train`` in the training fonts and the
   CJK font, so many carry a red Chinese line), whole images, HR only.
2. init: the built-in ``photo-x2`` / ``photo-x4`` exported as PyTorch weights and imported as a
   checkpoint (``export --model photo-x2 --out X.pt``, ``export --from-torch X.pt --out DIR``).
3. train: every patch damaged by a random chain of a mixture of seven (``GENERAL_SPEC``; at x4
   ``GENERAL_SPEC_X4``, its blurs doubled), on the device inside the train step.
   general-x2: experiments/general_x2.py, 1,500 steps, then experiments/general_x2_more.py,
   2,000 more from those weights (the schedule restarted at a lower peak).
   general-x4: experiments/general_x4.py, 1,000 steps from photo-x4, then
   experiments/general_x4_more.py, 1,000 more.
   The weights shipped are the last stage's best on its validation (Set5, the training damage).
4. pack: float16 weights and a card with the scores measured from them (Set5, Set14, BSD68 on
   MATLAB bicubic LR, as every built-in's card; the other damages at x2 are in
   experiments/prescribe.py's table).

Every step is a plain call of the project's CLIs (printed) or of its library functions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
from general_x2 import GENERAL_SPEC  # noqa: E402
from general_x4 import GENERAL_SPEC_X4  # noqa: E402

DATASETS = ROOT.parent / "shared" / "datasets"
PY = sys.executable
POSTER_FONTS = "DejaVuSans,DejaVuSansMono,pillow-default,wqy-microhei"
# name: (start, the stages' configs and steps, spec)
MODELS = {"general-x2": ("photo-x2", (("general_x2", 1_500), ("general_x2_more", 2_000)), GENERAL_SPEC),
          "general-x4": ("photo-x4", (("general_x4", 1_000), ("general_x4_more", 1_000)), GENERAL_SPEC_X4)}


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def make_data(data: Path) -> None:
    """Posters drawn once; the training folder is links to them and to Sun80's photographs."""
    posters = data / "posters"
    if not posters.exists():
        run([PY, "-m", "edsr_jax.posters", "--out", str(posters), "--count", "100", "--seed", "1",
             "--words", "train", "--fonts", POSTER_FONTS])
    train = data / "train"
    train.mkdir(parents=True, exist_ok=True)
    for src, prefix in ((DATASETS / "Sun80", "sun80_"), (posters, "")):
        for f in sorted(src.iterdir()):
            if f.suffix.lower() in (".png", ".jpg", ".jpeg") and not (train / (prefix + f.name)).exists():
                (train / (prefix + f.name)).symlink_to(f.resolve())


def init(runs: Path, start: str) -> Path:
    """The built-in ``start`` as a checkpoint folder (the fine-tuning's start)."""
    folder = runs / f"init_{start}"
    if not folder.exists():
        run([PY, "-m", "edsr_jax.export", "--model", start, "--out", str(runs / f"{start}.pt")])
        run([PY, "-m", "edsr_jax.export", "--from-torch", str(runs / f"{start}.pt"), "--out", str(folder)])
    return folder


def train(runs: Path, stages) -> Path:
    """Every stage in turn; the last one's workdir. The configs name data/general/train and
    their start (runs/general/init_<model>, or the stage before), relative to the root."""
    for stage, _ in stages:
        workdir = runs / stage
        run([PY, "-m", "edsr_jax.train", "--config", f"experiments/{stage}.py", "--workdir",
             str(workdir.relative_to(ROOT))])
    return workdir


def pack(name: str, workdir: Path, out: Path) -> None:
    """Ship ``name``: float16 weights, then its card with Set5/Set14/BSD68 (bicubic LR at its
    scale) measured from them."""
    from edsr_jax.inference import pretrained
    from edsr_jax.training.restore import restore_params

    start, stages, spec = MODELS[name]
    config, params, saved = restore_params(workdir, prefer_ema=True)
    recipe = ", then ".join(f"{steps:,} steps at lr {load_lr(stage)}" for stage, steps in stages)
    info = {"summary": f"EDSR-baseline x{config.scale} for unknown damage (random chains of resizes, "
                       "blur, noise and JPEG; photographs and posters)",
            "training": {"data": "Sun80 (80 photographs) and 100 generated posters (python -m "
                                 "edsr_jax.posters --seed 1 --words train, some with a Chinese line), "
                                 "whole images, HR only",
                         "degradation": "a random chain per patch (mixture of seven)",
                         "content": ["photographs", "drawn"],
                         "spec": spec, "steps": sum(n for _, n in stages), "batch": 16, "lr_patch": 32,
                         "recipe": f"fine-tuned from {start}: L1, Adam, {recipe}, "
                                   f"{'each ' if len(stages) > 1 else ''}warmed up over 50 steps then "
                                   "cosine to 0, the damage made on the device; experiments/general.py",
                         "checkpoint_step": int(saved["step"]),  # of the last stage
                         "validation": "Set5, one chain of the mixture per image"},
            "scores": {}}
    pretrained.pack(params, config, name, info, overwrite=True)
    target = out / f"card_{name}.json"
    if not target.exists():
        run([PY, "-m", "edsr_jax.evaluate", "--model", name, str(DATASETS / "Set5"), str(DATASETS / "Set14"),
             str(DATASETS / "BSD68"), "--json", str(target)])
    scores = {r["dataset"]: {"psnr": round(r["psnr"], 4), "ssim": round(r["ssim"], 5),
                             "images": r["images"], "degradation": r["degradation"]}
              for r in json.loads(target.read_text())["results"]}
    pretrained.pack(params, config, name, {**info, "scores": scores}, overwrite=True)
    print(pretrained.describe(name))


def load_lr(stage: str) -> str:
    """A stage's peak learning rate as written in its config (``5e-4``)."""
    from edsr_jax.train import load_config

    return f"{load_config(f'experiments/{stage}.py').optim.lr:.0e}".replace("e-0", "e-")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=tuple(MODELS), action="append", help="this model only (repeatable)")
    p.add_argument("--no-pack", action="store_true", help="do not (re)write the built-in models")
    args = p.parse_args()
    for name in ("Sun80", "Set5", "Set14", "BSD68"):
        if not (DATASETS / name).is_dir():
            print(f"error: {DATASETS / name} not found", file=sys.stderr)
            return 2
    runs, data, out = ROOT / "runs" / "general", ROOT / "data" / "general", ROOT / "results" / "general"
    runs.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    make_data(data)
    for name in args.only or MODELS:
        start, stages, _ = MODELS[name]
        init(runs, start)
        workdir = train(runs, stages)
        if not args.no_pack:
            pack(name, workdir, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
