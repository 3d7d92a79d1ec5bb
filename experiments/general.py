"""The model for unknown damage (issue 29): the built-in ``general-x2``.

  python experiments/general.py                # all steps; finished ones are skipped on re-runs
  python experiments/general.py --no-pack      # train and score, leave the built-ins as they are

1. data: ``data/general/train/``: links to Sun80's 80 photographs and 100 generated training
   posters (``python -m edsr_jax.posters --seed 1 --words train`` in the training fonts and the
   CJK font, so many carry a red Chinese line), whole images, HR only.
2. init: the built-in ``photo-x2`` exported as PyTorch weights and imported as a checkpoint
   (``export --model photo-x2 --out X.pt``, ``export --from-torch X.pt --out DIR``): the start.
3. train: experiments/general_x2.py: every patch damaged by a random chain of
   ``GENERAL_SPEC`` (a mixture of seven), on the device inside the train step; 1,500 steps.
4. pack: float16 weights and a card with the scores measured from them (Set5, Set14, BSD68 on
   MATLAB bicubic LR, as every built-in's card; the other damages are in
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

DATASETS = ROOT.parent / "shared" / "datasets"
PY = sys.executable
POSTER_FONTS = "DejaVuSans,DejaVuSansMono,pillow-default,wqy-microhei"
STEPS = 1_500
NAME = "general-x2"


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


def init(runs: Path) -> Path:
    """photo-x2 as a checkpoint folder (the fine-tuning's start)."""
    folder = runs / "init_photo-x2"
    if not folder.exists():
        run([PY, "-m", "edsr_jax.export", "--model", "photo-x2", "--out", str(runs / "photo-x2.pt")])
        run([PY, "-m", "edsr_jax.export", "--from-torch", str(runs / "photo-x2.pt"), "--out", str(folder)])
    return folder


def train(runs: Path) -> Path:
    workdir = runs / "general_x2"
    # the config names data/general/train and runs/general/init_photo-x2 (relative to the root)
    run([PY, "-m", "edsr_jax.train", "--config", "experiments/general_x2.py", "--workdir",
         str(workdir.relative_to(ROOT))])
    return workdir


def pack(workdir: Path, out: Path) -> None:
    """Ship ``general-x2``: float16 weights, then its card with Set5/Set14/BSD68 (bicubic LR)
    measured from them."""
    from edsr_jax.inference import pretrained
    from edsr_jax.training.restore import restore_params

    config, params, saved = restore_params(workdir, prefer_ema=True)
    info = {"summary": "EDSR-baseline x2 for unknown damage (random chains of resizes, blur, "
                       "noise and JPEG; photographs and posters)",
            "training": {"data": "Sun80 (80 photographs) and 100 generated posters (python -m "
                                 "edsr_jax.posters --seed 1 --words train, some with a Chinese line), "
                                 "whole images, HR only",
                         "degradation": "a random chain per patch (mixture of seven)",
                         "spec": GENERAL_SPEC, "steps": STEPS, "batch": 16, "lr_patch": 32,
                         "recipe": "fine-tuned from photo-x2: L1, Adam, lr 5e-4 warm-up 50 steps then "
                                   "cosine to 0, the damage made on the device; experiments/general.py",
                         "checkpoint_step": int(saved["step"]),
                         "validation": "Set5, one chain of the mixture per image"},
            "scores": {}}
    pretrained.pack(params, config, NAME, info, overwrite=True)
    target = out / f"card_{NAME}.json"
    if not target.exists():
        run([PY, "-m", "edsr_jax.evaluate", "--model", NAME, str(DATASETS / "Set5"), str(DATASETS / "Set14"),
             str(DATASETS / "BSD68"), "--json", str(target)])
    scores = {r["dataset"]: {"psnr": round(r["psnr"], 4), "ssim": round(r["ssim"], 5),
                             "images": r["images"], "degradation": r["degradation"]}
              for r in json.loads(target.read_text())["results"]}
    pretrained.pack(params, config, NAME, {**info, "scores": scores}, overwrite=True)
    print(pretrained.describe(NAME))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--no-pack", action="store_true", help="do not (re)write the built-in model")
    args = p.parse_args()
    for name in ("Sun80", "Set5", "Set14", "BSD68"):
        if not (DATASETS / name).is_dir():
            print(f"error: {DATASETS / name} not found", file=sys.stderr)
            return 2
    runs, data, out = ROOT / "runs" / "general", ROOT / "data" / "general", ROOT / "results" / "general"
    runs.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    make_data(data)
    init(runs)
    workdir = train(runs)
    if not args.no_pack:
        pack(workdir, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
