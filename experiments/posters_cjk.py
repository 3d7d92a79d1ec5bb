"""Chinese posters (issue 29, item 3): fine-tune ``poster-x2`` on posters half of which are
Chinese, and score it before and after on held-out Latin and Chinese posters.

  python experiments/posters_cjk.py             # all steps; finished ones are skipped on re-runs
  python experiments/posters_cjk.py --no-pack   # do not rewrite the built-in poster-x2

Needs a CJK font (Debian ``fonts-wqy-microhei``). Every step is a plain call of the project's
CLIs (printed) or of its library functions:

1. data (``data/posters_cjk/``), all 2048x1152 posters cut into 2x2 tiles of 1024x576:
   - train: 200 posters of seed 1 (``--words train``, fonts DejaVuSans, DejaVuSansMono,
     Pillow's built-in font and wqy-microhei, built-in photographs) with ``--cjk-share 0.5``:
     99 Chinese, 101 Latin (the Latin ones are pixel for pixel those of experiments/posters.py's
     seed-1 set at the same index, half of them in the set poster-x2 was trained on), LR
     ``nearest > jpeg(30,60)``;
   - validation: 2 posters of seed 2 at share 0.5 (one Latin, one Chinese), poster LR (the
     run's own, 8 tiles); ``PostersVal``: 8 more of seed 3 at share 0.5 (32 tiles), which
     chooses the step to ship;
   - held-out Latin: experiments/posters.py's 6 posters (seed 1001, ``--words heldout``,
     DejaVuSerif and DejaVuSansCondensed, Set14 photographs): ``PostersHeldout``, 24 tiles;
   - held-out Chinese: 6 posters of seed 1002, ``--words heldout`` (Chinese terms and
     sentences disjoint from training's), the held-out Latin fonts plus wqy-microhei,
     ``--cjk-share 1``, Set14 photographs: ``PostersHeldoutCJK``, 24 tiles. The CJK face is
     the training one: it is the only CJK font installed.
2. the built-in poster-x2 as a checkpoint (``runs/poster_x2_builtin``, its float16 weights).
3. fine-tune from it (``train.init_from``): experiments/posters_x2.py's recipe on the new data,
   600 steps of 16 LR patches of 32 px, lr 2e-4 warmed up over 50 steps then cosine to 0.
4. choose and score: the validated steps (300, 600) scored on ``PostersVal``; the best is the
   candidate (the run's 8-tile validation is too small to tell them apart). poster-x2 before
   and each step, with bicubic beside, on both held-out sets with the poster LR (PSNR/SSIM on
   Y, border 2): ``eval_before.json``, ``eval_step<S>.json``, ``eval_val_step<S>.json``,
   ``results.json``, ``table.md`` and ``small_text_cjk.png`` (crops of small Chinese text) in
   ``results/posters_cjk/``.
5. pack: when the chosen step gains on the Chinese posters and loses at most 0.05 dB on
   the Latin ones, it becomes the built-in ``poster-x2`` (``pretrained.pack``; its card's
   scores measured from the float16 weights: Set5, Set14, BSD68 with bicubic LR, both held-out
   poster sets with the poster LR).
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
POSTER = "nearest > jpeg(30,60)"
PY = sys.executable
CJK_FONT = "wqy-microhei"
TRAIN_FONTS = f"DejaVuSans,DejaVuSansMono,pillow-default,{CJK_FONT}"
HELDOUT_FONTS = "DejaVuSerif,DejaVuSansCondensed"
LATIN, CJK = "PostersHeldout", "PostersHeldoutCJK"  # the held-out sets' names in the tables
BASE_STEPS, STEPS = 2_400, 600
MAX_LATIN_LOSS = 0.05  # dB: the most the Latin held-out score may drop for the model to ship
RUN, START = "posters_cjk_x2", "poster_x2_builtin"
EVAL_EVERY = 300  # the run validates (and keeps) these steps: the candidates to ship
VAL = "PostersVal"  # 8 more training-style posters (seed 3): chooses the step


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def make_data(data: Path) -> None:
    """Generate and tile the posters (each step skipped when its folder is there)."""
    set14 = str(DATASETS / "Set14")
    draws = {"train_hr": ["--count", "200", "--seed", "1", "--words", "train", "--fonts", TRAIN_FONTS,
                          "--cjk-share", "0.5"],
             "val_hr": ["--count", "2", "--seed", "2", "--words", "train", "--fonts", TRAIN_FONTS,
                        "--cjk-share", "0.5"],
             "val3_hr": ["--count", "8", "--seed", "3", "--words", "train", "--fonts", TRAIN_FONTS,
                         "--cjk-share", "0.5"],
             "heldout_hr": ["--count", "6", "--seed", "1001", "--words", "heldout", "--fonts", HELDOUT_FONTS,
                            "--cjk-share", "0", "--photos", set14],
             "heldout_cjk_hr": ["--count", "6", "--seed", "1002", "--words", "heldout", "--fonts",
                                f"{HELDOUT_FONTS},{CJK_FONT}", "--cjk-share", "1", "--photos", set14]}
    for folder, args in draws.items():
        if not (data / folder).exists():
            run([PY, "-m", "edsr_jax.posters", "--out", str(data / folder), *args])
    tiles = ["--scales", "2", "--tiles", "2x2", "--no-progress"]
    for src, out, extra in (("train_hr", "train", ["--spec", POSTER, "--name", "poster"]), ("val_hr", "val", []), ("val3_hr", "val3", []),
                            ("heldout_hr", "heldout", []), ("heldout_cjk_hr", "heldout_cjk", [])):
        if not (data / out / "HR").exists():
            run([PY, "-m", "edsr_jax.prepare", str(data / src), "--out", str(data / out), *tiles, *extra])
    for out, name in (("val3", VAL), ("heldout", LATIN), ("heldout_cjk", CJK)):
        if not (data / name).exists():  # the HR tiles alone: evaluate makes the LR from them
            shutil.copytree(data / out / "HR", data / name)


def start_checkpoint(runs: Path, start: str | None) -> Path:
    """``start`` when given (a checkpoint of the Latin poster-x2, e.g. experiments/posters.py's
    ``runs/posters_x2``), else the built-in poster-x2 (float16 weights, widened) as a step-0
    checkpoint: refused once the built-in is this experiment's own result."""
    from edsr_jax.inference import pretrained
    from edsr_jax.training import checkpoint

    if start:
        return ROOT / start
    path = runs / START
    if not path.exists():
        if "posters_cjk" in pretrained.card("poster-x2")["training"]["recipe"]:
            raise SystemExit("error: the built-in poster-x2 is already this experiment's result; pass --start "
                             "runs/posters_x2 (experiments/posters.py's run) or another checkpoint of the Latin model")
        config, variables = pretrained.load("poster-x2")
        checkpoint.save_params_checkpoint(path, config, variables, note="the built-in poster-x2 before issue 29")
        print(f"wrote {path}")
    return path


def train(runs: Path, data: Path, start: Path) -> None:
    """The fine-tuning run (resumed where its workdir exists; skipped when it is finished)."""
    from edsr_jax.training import checkpoint

    if STEPS in checkpoint.step_numbers(runs / RUN / checkpoint.CHECKPOINT_DIR):
        return
    run([PY, "-m", "edsr_jax.train", "--config", "experiments/posters_x2.py", "--workdir", str(runs / RUN),
         f"--config.name={RUN}", f"--config.data.train={data / 'train'}", f"--config.data.val={data / 'val' / 'HR'}",
         "--config.data.val_max_images=8", f"--config.train.init_from={start}", f"--config.train.steps={STEPS}",
         "--config.optim.lr=2e-4", "--config.optim.warmup_steps=50", f"--config.train.eval_every={EVAL_EVERY}",
         "--config.train.checkpoint_every=100", "--config.train.max_minutes=70"])


def candidates() -> list[int]:
    """The steps the run validated (``eval_every``): the candidates to ship."""
    return list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))


def step_dir(runs: Path, step: int) -> Path:
    from edsr_jax.training import checkpoint

    return runs / RUN / checkpoint.CHECKPOINT_DIR / str(step)


def choose(runs: Path, data: Path, out: Path) -> tuple[int, dict]:
    """The step to ship: the best candidate by PSNR on ``PostersVal`` (8 more training-style
    posters, 32 tiles, in neither the training nor the held-out sets; the run's own validation,
    8 tiles of 2 posters, is too small to tell its steps apart). Returns (step, {step: psnr})."""
    val = {}
    for step in candidates():
        target = out / f"eval_val_step{step}.json"
        if not target.exists():
            run([PY, "-m", "edsr_jax.evaluate", "--checkpoint", str(step_dir(runs, step)), "--spec", POSTER,
                 str(data / VAL), "--json", str(target)])
        val[step] = json.loads(target.read_text())["results"][0]["psnr"]
    return max(val, key=val.get), val


def score(runs: Path, data: Path, out: Path, start: Path) -> dict:
    """evaluate before (``start``: the built-in's weights as checkpointed by ``start_checkpoint``,
    so that a re-run after packing still scores the old model) and each candidate step, bicubic beside,
    on both held-out sets; returns {(who, dataset): (psnr, ssim)} with who in before /
    bicubic / the step number."""
    who = {"before": ["--checkpoint", str(start)],
           **{step: ["--checkpoint", str(step_dir(runs, step))] for step in candidates()}}
    scores = {}
    for name, model in who.items():
        target = out / (f"eval_{name}.json" if name == "before" else f"eval_step{name}.json")
        if not target.exists():
            run([PY, "-m", "edsr_jax.evaluate", "--bicubic", *model, "--spec", POSTER, str(data / LATIN),
                 str(data / CJK), "--json", str(target)])
        for r in json.loads(target.read_text())["results"]:
            scores[("bicubic" if r["method"] == "bicubic" else name, r["dataset"])] = (r["psnr"], r["ssim"])
    return scores


def report(scores: dict, chosen: int, val: dict, out: Path) -> bool:
    """Write results.json and table.md; returns whether the chosen step ships."""
    rows = [("bicubic upscaling", "bicubic"), (f"poster-x2 before (100 Latin posters, {BASE_STEPS} steps)", "before")]
    rows += [(f"fine-tuned on 101 Latin + 99 Chinese posters, step {step} of {STEPS}"
              f"{' (chosen)' if step == chosen else ''}", step) for step in candidates()]
    lines = ["| model | PostersVal (choice) | held-out Latin posters | held-out Chinese posters |",
             "|---|---|---|---|"]
    for label, key in rows:
        cells = [f"{val[key]:.2f}" if key in val else "—"]
        cells += [f"{scores[(key, d)][0]:.2f} / {scores[(key, d)][1]:.4f}" for d in (LATIN, CJK)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    gain = {d: scores[(chosen, d)][0] - scores[("before", d)][0] for d in (LATIN, CJK)}
    ships = gain[CJK] > 0 and gain[LATIN] >= -MAX_LATIN_LOSS
    text = (f"PSNR (dB) / SSIM on Y, border 2, x2, LR `{POSTER}` (seeded per image); held-out sets: 24 tiles "
            "1024x576 of 6 posters each; PostersVal: PSNR on 32 tiles of 8 training-style posters (seed 3), "
            "which chooses the step (experiments/posters_cjk.py).\n\n" + "\n".join(lines) +
            f"\n\nStep {chosen} - before: Latin {gain[LATIN]:+.3f} dB, Chinese {gain[CJK]:+.3f} dB "
            f"(ships when Chinese > 0 and Latin >= -{MAX_LATIN_LOSS}): "
            f"{'ships as poster-x2' if ships else 'does not ship'}.\n")
    (out / "table.md").write_text(text)
    record = {"degradation": POSTER, "steps": STEPS, "chosen_step": chosen, "ships": ships,
              "max_latin_loss_db": MAX_LATIN_LOSS, "gain_db": gain, "val_psnr": val,
              "scores": {f"{k[0]} {k[1]}": {"psnr": v[0], "ssim": v[1]} for k, v in scores.items()}}
    (out / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    print(text)
    return ships


def figure(runs: Path, data: Path, out: Path, start: Path, chosen: int) -> None:
    """small_text_cjk.png: the smallest Chinese text of three held-out Chinese tiles (HR
    192x112 crops shown 2x, nearest): HR, the damaged LR, bicubic, poster-x2 before and after."""
    import numpy as np
    from PIL import Image

    from edsr_jax.evaluation.evaluator import bicubic_upscale, lr_maker
    from edsr_jax.inference.infer import Upscaler
    from edsr_jax.io.images import read_rgb
    from posters import _label, _text_window  # experiments/posters.py, beside this file

    target = out / "small_text_cjk.png"
    if target.exists():
        return
    models = {"poster-x2 before": Upscaler.from_checkpoint(start),
              f"fine-tuned (step {chosen})": Upscaler.from_checkpoint(step_dir(runs, chosen))}
    make_lr = lr_maker(2, POSTER)
    rows, (h, w) = [], (112, 192)
    for path in [t for t in sorted((data / CJK).glob("*.png")) if t.stem.endswith(("_01", "_03"))][:3]:
        hr = read_rgb(path)
        lr = make_lr(hr, path.name)
        outs = {"HR": hr, "poster LR (shown nearest)": np.repeat(np.repeat(lr, 2, 0), 2, 1),
                "bicubic": bicubic_upscale(lr, 2), **{k: m(lr) for k, m in models.items()}}
        y, x = _text_window(hr, h, w)
        crops = [_label(np.repeat(np.repeat(img[y:y + h, x:x + w], 2, 0), 2, 1), name) for name, img in outs.items()]
        gap = np.full((crops[0].shape[0], 6, 3), 255, np.uint8)
        rows.append(np.concatenate(sum(([c, gap] for c in crops), [])[:-1], axis=1))
    sep = np.full((8, rows[0].shape[1], 3), 255, np.uint8)
    Image.fromarray(np.concatenate(sum(([r, sep] for r in rows), [])[:-1])).save(target)
    print(f"wrote {target}")


def pack(runs: Path, data: Path, out: Path, chosen: int) -> None:
    """The fine-tuned run as the built-in poster-x2, its card's scores measured from the
    float16 weights (packed first, then scored, then packed again with the scores)."""
    from edsr_jax.inference import pretrained
    from edsr_jax.training.restore import restore_params

    config, params, saved = restore_params(step_dir(runs, chosen), prefer_ema=True)
    info = {"summary": "EDSR-baseline x2 for posters (Latin and Chinese) shrunk by dropping pixels and "
                       "JPEG-compressed (nearest > jpeg(30,60))",
            "training": {"data": "200 generated posters 2048x1152 (python -m edsr_jax.posters --seed 1 --words "
                                 "train --cjk-share 0.5: 101 Latin, 99 Chinese) cut into 2x2 tiles",
                         "degradation": POSTER, "steps": BASE_STEPS + STEPS, "batch": 16, "lr_patch": 32,
                         "content": ["drawn"],
                         "recipe": f"{BASE_STEPS} steps on 100 Latin posters (L1, Adam, lr 1e-3 warm-up 100 "
                                   "steps then cosine to 0; experiments/posters.py), then fine-tuned "
                                   f"{STEPS} steps on the posters above (lr 2e-4 warm-up 50 steps then "
                                   "cosine to 0; experiments/posters_cjk.py)",
                         "checkpoint_step": int(saved["step"]),
                         "validation": "the step (of 300 and 600) best on 32 tiles of 8 more posters (seed 3, "
                                       "--cjk-share 0.5), poster LR"},
            "scores": {}}
    pretrained.pack(params, config, "poster-x2", info, spec=POSTER, overwrite=True)
    scores = {}
    evals = [([DATASETS / "Set5", DATASETS / "Set14", DATASETS / "BSD68"], "", "", "card_poster-x2.json"),
             ([data / LATIN, data / CJK], POSTER, " poster LR", "card_poster-x2_posters.json")]
    for sets, spec, key, file in evals:
        target = out / file
        if not target.exists():
            run([PY, "-m", "edsr_jax.evaluate", "--model", "poster-x2", *(["--spec", spec] if spec else []),
                 *map(str, sets), "--json", str(target)])
        for r in json.loads(target.read_text())["results"]:
            scores[r["dataset"] + key] = {"psnr": round(r["psnr"], 4), "ssim": round(r["ssim"], 5),
                                         "images": r["images"], "degradation": r["degradation"]}
    pretrained.pack(params, config, "poster-x2", {**info, "scores": scores}, spec=POSTER, overwrite=True)
    print(pretrained.describe("poster-x2"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs", help="parent folder of the workdirs (default runs)")
    p.add_argument("--data", default="data/posters_cjk", help="poster data folder (default data/posters_cjk)")
    p.add_argument("--out", default="results/posters_cjk", help="results folder (default results/posters_cjk)")
    p.add_argument("--start", default=None,
                   help="checkpoint to fine-tune from (default: the built-in poster-x2 while it is the Latin one)")
    p.add_argument("--no-pack", action="store_true", help="do not rewrite the built-in poster-x2")
    args = p.parse_args()
    for name in ("Set5", "Set14", "BSD68"):
        if not (DATASETS / name).is_dir():
            print(f"error: {DATASETS / name} not found", file=sys.stderr)
            return 2
    from edsr_jax.data import fonts

    if CJK_FONT not in [f.name for f in fonts.available_fonts()]:
        print(f"error: the CJK font {CJK_FONT} is not installed; install {fonts.CJK_PACKAGE}", file=sys.stderr)
        return 2
    runs, data, out = ROOT / args.runs, ROOT / args.data, ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    make_data(data)
    start = start_checkpoint(runs, args.start)
    train(runs, data, start)
    chosen, val = choose(runs, data, out)
    ships = report(score(runs, data, out, start), chosen, val, out)
    figure(runs, data, out, start, chosen)
    if ships and not args.no_pack:
        pack(runs, data, out, chosen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
