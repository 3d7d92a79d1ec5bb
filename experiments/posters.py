"""The posters experiment (issue 17): does a model fix the damage it was trained on, on posters?

  python experiments/posters.py                 # all steps; finished ones are skipped on re-runs
  python experiments/posters.py --skip-train    # only score, draw and pack existing runs

1. data: 100 training posters (``python -m edsr_jax.posters --seed 1 --words train``, fonts
   DejaVuSans, DejaVuSansMono, Pillow's built-in font, photographs: the built-in sample
   images), one validation poster (seed 2) and 6 held-out test posters that differ in every
   generated respect: seed 1001, the disjoint ``--words heldout`` list, other fonts
   (DejaVuSerif, DejaVuSansCondensed) and other photographs (Set14). All 2048x1152, cut into
   2x2 tiles of 1024x576 by ``prepare --tiles 2x2``; the training tiles get two LR variants,
   ``poster`` (``nearest > jpeg(30,60)``) and ``bicubic``.
2. train: three EDSR-baseline x2 models with the same work each (experiments/posters_x2.py:
   2,400 steps of 16 LR patches of 32 px, i.e. the same number of gradient steps and patches),
   at the same time: (a) posters, poster LR (matched); (b) posters, bicubic LR; (c) Sun80
   photographs, bicubic LR (experiments/sun80_x2.py with the same step count).
3. score: every model and bicubic upscaling on the 24 held-out poster tiles and on BSD68,
   each with the poster degradation and with MATLAB bicubic LR (PSNR/SSIM on Y, border 2):
   ``results/posters/eval_<run>_<degradation>.json`` and the table ``results/posters/table.md``.
4. figures: ``results/posters/small_text.png`` (crops of the smallest text of held-out posters:
   HR, the damaged LR, bicubic, the matched model, the two mismatched models) and
   ``results/posters/story.png`` (a region of one held-out tile the same way, for the README).
5. pack: the Sun80 model as ``photo-x2``, plus ``photo-x3`` / ``photo-x4`` fine-tuned from it on
   Sun80 x3 / x4 pairs (1,000 steps each; ``edsr_jax.inference.pretrained.pack``: float16
   weights and a card with their scores). The matched model was the built-in ``poster-x2``
   until issue 29; ``poster-x2`` is now it fine-tuned on Latin and Chinese posters by
   experiments/posters_cjk.py (``--start runs/posters_x2`` from a fresh run), so it is packed
   here only with ``--pack-poster``.

Every step is a plain call of the project's CLIs (printed) or of its library functions.
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
TRAIN_FONTS = "DejaVuSans,DejaVuSansMono,pillow-default"
HELDOUT_FONTS = "DejaVuSerif,DejaVuSansCondensed"
STEPS = 2_400
# run name -> (label, training data, training LR, training command's extra arguments)
RUNS = {
    "posters_x2": ("posters, poster LR (matched)", "posters", "poster",
                   ["--config", "experiments/posters_x2.py"]),
    "posters_bicubic_x2": ("posters, bicubic LR", "posters", "bicubic",
                           ["--config", "experiments/posters_x2.py", "--config.name=posters_bicubic_x2",
                            "--config.data.lr_name=bicubic", "--config.data.val_spec="]),
    "sun80_x2": ("Sun80 photos, bicubic LR", "Sun80", "bicubic",
                 ["--config", "experiments/sun80_x2.py", f"--config.train.steps={STEPS}",
                  "--config.optim.warmup_steps=100", "--config.train.eval_every=400",
                  "--config.train.checkpoint_every=200", "--config.train.max_minutes=150"]),
}
DEGRADATIONS = {"poster": POSTER, "bicubic": ""}
HELDOUT = "PostersHeldout"  # the test set's name in the tables: data/posters/PostersHeldout/


def run(cmd: list[str], background: bool = False):
    print("+", " ".join(cmd), flush=True)
    if background:
        return subprocess.Popen(cmd, cwd=ROOT)
    subprocess.run(cmd, cwd=ROOT, check=True)


def make_data(data: Path) -> None:
    """Generate and tile the posters; prepare Sun80 (each skipped when already there)."""
    draws = {"train_hr": ["--count", "100", "--seed", "1", "--words", "train", "--fonts", TRAIN_FONTS],
             "val_hr": ["--count", "1", "--seed", "2", "--words", "train", "--fonts", TRAIN_FONTS],
             "heldout_hr": ["--count", "6", "--seed", "1001", "--words", "heldout", "--fonts", HELDOUT_FONTS,
                            "--photos", str(DATASETS / "Set14")]}
    for folder, args in draws.items():
        if not (data / folder).exists():
            run([PY, "-m", "edsr_jax.posters", "--out", str(data / folder), *args])
    tiles = ["--scales", "2", "--tiles", "2x2", "--no-progress"]
    for src, out, extra in (("train_hr", "train", []), ("train_hr", "train", ["--spec", POSTER, "--name", "poster"]),
                            ("val_hr", "val", []), ("heldout_hr", "heldout", [])):
        name = "poster" if extra else "bicubic"
        if not (data / out / f"LR_{name}").exists():
            run([PY, "-m", "edsr_jax.prepare", str(data / src), "--out", str(data / out), *tiles, *extra])
    heldout = data / HELDOUT
    if not heldout.exists():  # the HR tiles alone: evaluate makes each degradation from them
        shutil.copytree(data / "heldout" / "HR", heldout)
    if not (ROOT / "data" / "sun80_bicubic").exists():
        run([PY, "-m", "edsr_jax.prepare", str(DATASETS / "Sun80"), "--out", "data/sun80_bicubic", *tiles])


def train(runs: Path) -> None:
    """The three trainings at once (resumed where a workdir exists)."""
    procs = [run([PY, "-m", "edsr_jax.train", *extra, "--workdir", str(runs / name)], background=True)
             for name, (_, _, _, extra) in RUNS.items()]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"training failed: exit codes {codes}")


def score(runs: Path, data: Path, out: Path) -> None:
    """evaluate: each run x degradation on the held-out posters and BSD68 (bicubic beside)."""
    for name in RUNS:
        for deg, spec in DEGRADATIONS.items():
            target = out / f"eval_{name}_{deg}.json"
            if target.exists():
                continue
            run([PY, "-m", "edsr_jax.evaluate", "--bicubic", "--checkpoint", str(runs / name),
                 *(["--spec", spec] if spec else []), str(data / HELDOUT), str(DATASETS / "BSD68"),
                 "--json", str(target)])


def load_scores(out: Path) -> dict:
    """{(model label or "bicubic upscaling", test set, degradation): (psnr, ssim)}."""
    scores = {}
    for name, (label, *_) in RUNS.items():
        for deg in DEGRADATIONS:
            path = out / f"eval_{name}_{deg}.json"
            if not path.exists():
                continue
            for r in json.loads(path.read_text())["results"]:
                who = "bicubic upscaling" if r["method"] == "bicubic" else label
                scores[(who, r["dataset"], deg)] = (r["psnr"], r["ssim"])
    return scores


def table(out: Path) -> str:
    """The markdown table (train data x test data x degradation) and the goal check."""
    scores = load_scores(out)
    rows = ["bicubic upscaling"] + [label for label, *_ in RUNS.values()]
    cols = [(HELDOUT, "poster"), (HELDOUT, "bicubic"), ("BSD68", "poster"), ("BSD68", "bicubic")]
    head = ["model (training data, LR)"] + [f"{'held-out posters' if d == HELDOUT else d}, {g} LR" for d, g in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for who in rows:
        cells = []
        for col in cols:
            v = scores.get((who, *col))
            cells.append("—" if v is None else f"{v[0]:.2f} / {v[1]:.4f}")
        lines.append(f"| {who} | " + " | ".join(cells) + " |")
    text = ("PSNR (dB) / SSIM on Y, border 2, x2; poster LR = `" + POSTER + "` (seeded per image), "
            "bicubic LR = MATLAB imresize.\n\n" + "\n".join(lines) + "\n")
    matched, key = RUNS["posters_x2"][0], (HELDOUT, "poster")
    if (matched, *key) in scores and ("bicubic upscaling", *key) in scores:
        m = scores[(matched, *key)][0]
        text += f"\nHeld-out posters, poster LR: matched - bicubic upscaling = {m - scores[('bicubic upscaling', *key)][0]:+.2f} dB (goal >= +1.5)"
        for name in ("posters_bicubic_x2", "sun80_x2"):
            other = scores.get((RUNS[name][0], *key))
            if other:
                text += f"; matched - {RUNS[name][0]} = {m - other[0]:+.2f} dB (goal >= +2)"
        text += ".\n"
    (out / "table.md").write_text(text)
    print(text)
    return text


def _models(runs: Path) -> dict:
    from edsr_jax.inference.infer import Upscaler

    return {label: Upscaler.from_checkpoint(runs / name) for name, (label, *_) in RUNS.items()}


def _text_window(hr, h: int, w: int):
    """(y, x) of the h x w window of ``hr`` that holds the smallest text: windows that are
    mostly light background (>= 80 % of pixels with luma > 215: no photograph) with some ink
    (luma < 140 on 3-25 % of pixels), ranked by ink edges per ink pixel (thin strokes of
    small glyphs have the most edge per pixel of ink)."""
    import numpy as np

    luma = hr.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    ink = luma < 140
    light = luma > 215
    edges = np.zeros_like(ink)
    edges[:, 1:] |= ink[:, 1:] != ink[:, :-1]
    edges[1:, :] |= ink[1:, :] != ink[:-1, :]
    best, where = -1.0, (0, 0)
    for y in range(0, hr.shape[0] - h + 1, h // 4):
        for x in range(0, hr.shape[1] - w + 1, w // 4):
            box = (slice(y, y + h), slice(x, x + w))
            amount = ink[box].mean()
            if light[box].mean() < 0.8 or not 0.03 <= amount <= 0.25:
                continue
            thin = edges[box].mean() / amount
            if thin > best:
                best, where = thin, (y, x)
    return where


def _label(img, text: str):
    """``img`` (h, w, 3) uint8 with ``text`` in a white band above it."""
    import numpy as np
    from PIL import Image, ImageDraw

    band = Image.new("RGB", (img.shape[1], 22), "white")
    ImageDraw.Draw(band).text((4, 4), text, fill=(0, 0, 0))
    return np.concatenate([np.asarray(band), img])


def figures(runs: Path, data: Path, out: Path, scores: dict) -> None:
    """small_text.png: the smallest text of three held-out tiles (HR 192x112 crops shown 2x,
    nearest); story.png: a 512x288 region of one held-out tile at full size, HR / damaged /
    bicubic / the two mismatched models / the matched model."""
    import numpy as np
    from PIL import Image

    from edsr_jax.evaluation.evaluator import bicubic_upscale, lr_maker
    from edsr_jax.io.images import read_rgb

    models = _models(runs)
    make_lr = lr_maker(2, POSTER)
    tiles = sorted((data / HELDOUT).glob("*.png"))
    picks = [t for t in tiles if t.stem.endswith("_03")][:3]  # bottom-left tiles: captions, footers
    rows = []
    h, w = 112, 192
    story = None
    for path in picks:
        hr = read_rgb(path)
        lr = make_lr(hr, path.name)
        outs = {"HR": hr, "poster LR (shown nearest)": np.repeat(np.repeat(lr, 2, 0), 2, 1),
                "bicubic": bicubic_upscale(lr, 2)}
        outs.update({label: model(lr) for label, model in models.items()})
        y, x = _text_window(hr, h, w)
        crops = [_label(np.repeat(np.repeat(img[y:y + h, x:x + w], 2, 0), 2, 1), name)
                 for name, img in outs.items()]
        gap = np.full((crops[0].shape[0], 6, 3), 255, np.uint8)
        rows.append(np.concatenate(sum(([c, gap] for c in crops), [])[:-1], axis=1))
        if story is None:
            story = outs
    sep = np.full((8, rows[0].shape[1], 3), 255, np.uint8)
    Image.fromarray(np.concatenate(sum(([r, sep] for r in rows), [])[:-1])).save(out / "small_text.png")
    print(f"wrote {out / 'small_text.png'}")
    # the README's story: a 512x288 region of one tile at full resolution, five panels in a grid
    names = ["HR", "poster LR (shown nearest)", "bicubic", RUNS["sun80_x2"][0],
             RUNS["posters_bicubic_x2"][0], RUNS["posters_x2"][0]]
    y0, x0 = 288, 0
    panels = [_label(story[n][y0:y0 + 288, x0:x0 + 512], n) for n in names]
    grid = [panels[0:2], panels[2:4], panels[4:6]]
    vgap = np.full((panels[0].shape[0], 6, 3), 255, np.uint8)
    lines = [np.concatenate([a, vgap, b], axis=1) for a, b in grid]
    hgap = np.full((6, lines[0].shape[1], 3), 255, np.uint8)
    Image.fromarray(np.concatenate([lines[0], hgap, lines[1], hgap, lines[2]])).save(out / "story.png")
    print(f"wrote {out / 'story.png'}")


SUN80 = "Sun80 (80 photographs) cut into 2x2 tiles"
RECIPE = "L1, Adam, lr 1e-3 warm-up 100 steps then cosine to 0; experiments/posters.py"
FINETUNE_STEPS = 1_000
FINETUNE = "fine-tuned from photo-x2 (head and body; new upsampler and tail): L1, Adam, lr 5e-4 " \
           "warm-up 50 steps then cosine to 0; experiments/posters.py"
# built-in model -> (run, summary, training record, also scored on the held-out posters); the
# record's "content" says what the training images show (photographs, drawn: posters), which
# --model auto reads (inference/choice.py)
SHIPS = {
    "photo-x2": ("sun80_x2", "EDSR-baseline x2 for photographs (Sun80, bicubic LR)",
                 {"data": SUN80, "degradation": "bicubic (MATLAB imresize)", "steps": STEPS,
                  "recipe": RECIPE, "validation": "Set5 (bicubic LR)", "content": ["photographs"]}, True),
    "poster-x2": ("posters_x2", "EDSR-baseline x2 for posters shrunk by dropping pixels and "
                                "JPEG-compressed (nearest > jpeg(30,60))",
                  {"data": "100 generated posters 2048x1152 (python -m edsr_jax.posters --seed 1 --words "
                           "train) cut into 2x2 tiles", "degradation": POSTER, "steps": STEPS,
                   "recipe": RECIPE, "validation": "2 tiles of one more poster (seed 2), poster LR",
                   "content": ["drawn"]}, True),
    **{f"photo-x{s}": (f"sun80_x{s}", f"EDSR-baseline x{s} for photographs (Sun80, bicubic LR; from photo-x2)",
                       {"data": SUN80, "degradation": "bicubic (MATLAB imresize)", "steps": FINETUNE_STEPS,
                        "recipe": FINETUNE, "validation": "Set5 (bicubic LR)", "content": ["photographs"]}, False)
       for s in (3, 4)},
}


def finetune(runs: Path) -> None:
    """photo-x3 and photo-x4: the Sun80 x2 model fine-tuned at x3 and x4 (both at once)."""
    if not (ROOT / "data" / "sun80_bicubic_x34").exists():
        run([PY, "-m", "edsr_jax.prepare", str(DATASETS / "Sun80"), "--out", "data/sun80_bicubic_x34",
             "--scales", "3", "4", "--tiles", "2x2", "--no-progress"])
    procs = [run([PY, "-m", "edsr_jax.train", "--config", "experiments/sun80_x2.py",
                  "--workdir", str(runs / f"sun80_x{s}"), f"--config.name=sun80_x{s}",
                  f"--config.model.scale={s}", "--config.data.train=data/sun80_bicubic_x34",
                  f"--config.train.init_from={runs / 'sun80_x2'}", f"--config.train.steps={FINETUNE_STEPS}",
                  "--config.optim.warmup_steps=50", "--config.optim.lr=5e-4", "--config.train.eval_every=500",
                  "--config.train.checkpoint_every=250", "--config.train.max_minutes=30"], background=True)
             for s in (3, 4)]
    if any(p.wait() for p in procs):
        raise SystemExit("fine-tuning failed")


def pack(runs: Path, data: Path, out: Path, only: tuple[str, ...] = tuple(SHIPS)) -> None:
    """Ship the models of ``SHIPS`` (those of ``only``): pack float16 weights, score them
    (Set5, Set14, BSD68 with bicubic LR at the model's scale; the x2 models also on the held-out
    posters with the poster degradation), and write the scores into the cards."""
    from edsr_jax.inference import pretrained
    from edsr_jax.training.restore import restore_params

    for name, (run_name, summary, training, posters) in SHIPS.items():
        if name not in only:
            continue
        config, params, saved = restore_params(runs / run_name, prefer_ema=True)
        info = {"summary": summary,
                "training": {**training, "batch": 16, "lr_patch": 32, "checkpoint_step": int(saved["step"]),
                             "spec": "bicubic" if training["degradation"].startswith("bicubic") else training["degradation"]},
                "scores": {}}
        pretrained.pack(params, config, name, info, overwrite=True)
        scores = {}
        evals = [([DATASETS / "Set5", DATASETS / "Set14", DATASETS / "BSD68"], "", "", f"card_{name}.json")]
        if posters:
            evals.append(([data / HELDOUT], POSTER, " poster LR", f"card_{name}_posters.json"))
        for sets, spec, key, file in evals:
            target = out / file
            if not target.exists():
                run([PY, "-m", "edsr_jax.evaluate", "--model", name, *(["--spec", spec] if spec else []),
                     *map(str, sets), "--json", str(target)])
            for r in json.loads(target.read_text())["results"]:
                scores[r["dataset"] + key] = {"psnr": round(r["psnr"], 4), "ssim": round(r["ssim"], 5),
                                             "images": r["images"], "degradation": r["degradation"]}
        pretrained.pack(params, config, name, {**info, "scores": scores}, overwrite=True)
        print(pretrained.describe(name))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs", help="parent folder of the workdirs (default runs)")
    p.add_argument("--data", default="data/posters", help="poster data folder (default data/posters)")
    p.add_argument("--out", default="results/posters", help="results folder (default results/posters)")
    p.add_argument("--skip-train", action="store_true", help="score, draw and pack existing runs only")
    p.add_argument("--no-pack", action="store_true", help="do not (re)write the built-in models")
    p.add_argument("--pack-poster", action="store_true",
                   help="also pack the matched model as poster-x2 (replacing experiments/posters_cjk.py's)")
    args = p.parse_args()
    for name in ("Sun80", "Set5", "Set14", "BSD68"):
        if not (DATASETS / name).is_dir():
            print(f"error: {DATASETS / name} not found", file=sys.stderr)
            return 2
    runs, data, out = ROOT / args.runs, ROOT / args.data, ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    make_data(data)
    if not args.skip_train:
        train(runs)
        finetune(runs)
    score(runs, data, out)
    scores = load_scores(out)
    table(out)
    figures(runs, data, out, scores)
    if not args.no_pack:
        pack(runs, data, out, only=tuple(n for n in SHIPS if n != "poster-x2" or args.pack_poster))
    return 0


if __name__ == "__main__":
    sys.exit(main())
