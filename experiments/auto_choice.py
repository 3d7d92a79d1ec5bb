"""How ``--model auto`` chooses on images of known damage (issue 29), and the calibration the
built-in models ship with (``edsr_jax/inference/calibration.py``).

  python experiments/auto_choice.py            # set, twelve evaluate runs (CPU: ~40 min), summary, CV
  python experiments/auto_choice.py --grid     # also: the distance rule again under other constants
  python experiments/auto_choice.py --write    # also: write inference/weights/choice_calibration.json

1. set: ``data/auto_calibration/``: 81 HR images of 320 x 320 or less (``make_set``): up to five
   crops of each of the 8 built-in photographs (``data.samples``) and of Set5 (when ../shared is
   present), and two crops of each of 16 generated posters (8 Latin, 8 Chinese; seed 2001, the
   training words and fonts). None is in a built-in model's training data or in
   experiments/prescribe.py's held-out table.
2. for each damage of ``DAMAGES``: ``python -m edsr_jax.evaluate data/auto_calibration --bicubic
   --model photo-x2 poster-x2 general-x2 auto --spec DAMAGE --json results/auto_choice/<n>.json``
   (LR 160 x 160 at most, seeded per image name; ``auto`` records each image's choice).
3. summary: per damage, and over all 486 images, the mean PSNR of bicubic, each model and auto,
   how many images auto gave the best of the models, how many choices were uncertain. (The
   recorded auto column was measured before the calibration existed: the distance rule with
   general-x2 as the fallback. Evaluated again with the calibration present it would be
   in-sample; step 5's cross-validation is the out-of-sample number.)
   ``--grid`` re-runs the distance rule from today's diagnoses (no model runs) under other
   constants (``JPEG_OVER``, ``JPEG_UNDER``, ``BLUR_UNIT``, ``NOISE_UNIT``, ``NEAR``, ``MARGIN``,
   ``CONFIDENT``).
4. drawn content: ``choice.DRAWN``, the two-level share from which an image counts as drawn,
   is the threshold that misreads fewest whole LR images of known content (Sun80's photographs
   and the training posters under each damage; ``drawn_readings``, no model runs).
5. calibration: each LR made again as evaluate made it and diagnosed with today's code (the
   distance rule's input and ``calibration.features``); ``k``, the columns (the models, or with
   ``BLENDS``) and the content features' weights chosen by leave-one-source-out
   cross-validation of the choice as shipped (the distance rule where it is certain, the
   calibration where it is uncertain or the image looks drawn); the same under other drawn
   thresholds printed beside. ``--write`` stores the table.

The calibration was chosen on these images only. experiments/prescribe.py's held-out table is
the score (README "Which model for which damage").
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "auto_choice"
DAMAGES = ("bicubic", "nearest > jpeg(30,60)", "nearest", "bilinear > jpeg(60,90)", "blur(1.5) > bicubic",
           "bicubic > noise(5)")
MODELS = ("photo-x2", "poster-x2", "general-x2")
BLENDS = ("photo-x2+general-x2", "poster-x2+general-x2")  # the mean of two models' outputs (inference/blend.py)
COLUMNS = MODELS + BLENDS  # what the calibration may choose


SIDE = 320          # HR side of every calibration image (LR 160 x 160 at x2)
TRAIN_FONTS = ("DejaVuSans", "DejaVuSansMono", "pillow-default", "wqy-microhei")  # not the table's held-out fonts


def _crops(im: np.ndarray, side: int) -> list[np.ndarray]:
    """Up to five ``side`` x ``side`` crops: the four corners and the centre (fewer when the
    image is small: distinct origins only)."""
    h, w = im.shape[:2]
    side = min(side, h, w) // 4 * 4
    origins = dict.fromkeys([(0, 0), (0, w - side), (h - side, 0), (h - side, w - side),
                             ((h - side) // 2, (w - side) // 2)])
    return [im[t:t + side, l:l + side] for t, l in origins]


def make_set(folder: Path) -> None:
    """The calibration images, none of them in any built-in model's training data nor in
    experiments/prescribe.py's held-out table: crops of the 8 built-in photographs
    (``data.samples``) and of Set5 (when ../shared is present), and 16 generated posters (8
    Latin, 8 Chinese; seed 2001, the training word list and fonts, so neither the table's
    held-out words nor its fonts), two crops each."""
    from edsr_jax.data import fonts, posters, samples
    from edsr_jax.io.images import read_rgb, write_image

    if folder.is_dir() and any(folder.iterdir()):
        return
    folder.mkdir(parents=True, exist_ok=True)
    paths = samples.builtin_images("train") + samples.builtin_images("val")
    set5 = ROOT.parent / "shared" / "datasets" / "Set5"
    if set5.is_dir():
        paths += sorted(q for q in set5.iterdir() if q.suffix.lower() == ".png")
    photos = [read_rgb(q) for q in paths]
    for q, im in zip(paths, photos):
        for k, crop in enumerate(_crops(im, SIDE)):
            write_image(folder / f"{q.stem}_{k}.png", crop, overwrite=True)
    faces = [f for f in fonts.available_fonts() if f.name in TRAIN_FONTS]
    for i in range(16):
        poster = posters.render(2001, i, (2 * SIDE, SIDE + 40), photos=photos[:8], fonts=faces, words="train",
                                cjk_share=1.0 if i % 2 else 0.0)
        for k, crop in enumerate((poster[:SIDE, :SIDE], poster[-SIDE:, -SIDE:])):
            write_image(folder / f"poster{i:02d}_{k}.png", crop, overwrite=True)


def evaluate(folder: Path) -> list[Path]:
    """Per damage, ``results/auto_choice/<n>.json`` (bicubic, the models, auto) and
    ``blends_<n>.json`` (the blends), each made by one evaluate run unless it exists."""
    OUT.mkdir(parents=True, exist_ok=True)
    files = []
    for n, spec in enumerate(DAMAGES, 1):
        for target, methods in ((OUT / f"{n}.json", ["--bicubic", "--model", *MODELS, "auto"]),
                                (OUT / f"blends_{n}.json", ["--model", *BLENDS])):
            if not target.exists():
                cmd = [sys.executable, "-m", "edsr_jax.evaluate", str(folder), *methods, "--spec", spec,
                       "--json", str(target)]
                print("+", " ".join(cmd), flush=True)
                subprocess.run(cmd, check=True, cwd=ROOT)
        files.append(OUT / f"{n}.json")
    return files


def load(files: list[Path]) -> list[tuple[str, dict, dict, dict]]:
    """``(damage, per-method PSNR, auto's choice record)`` per image."""
    rows = []
    for f in files:
        r = {x["method"]: x for x in json.loads(f.read_text())["results"]}
        r.update({x["method"]: x for x in json.loads((f.parent / f"blends_{f.name}").read_text())["results"]})
        for i, row in enumerate(r["auto"]["per_image"]):
            assert all(r[m]["per_image"][i]["image"] == row["image"] for m in BLENDS), f
            psnr = {m: r[m]["per_image"][i]["psnr"] for m in ("bicubic", *COLUMNS, "auto")}
            rows.append((r["auto"]["degradation"], row["image"], psnr, row["choice"]))
    return rows


def summary(rows) -> None:
    methods = ("bicubic", *COLUMNS, "auto")
    print(f"{'damage':<24} " + " ".join(f"{m[:10]:>10}" for m in methods) + "  best-of-models  uncertain")
    for damage in (*DAMAGES, "all"):
        mine = [r for r in rows if damage in (r[0], "all")]
        mean = {m: np.mean([p[m] for _, _, p, _ in mine]) for m in methods}
        right = sum(c["model"] == max(MODELS, key=p.get) for _, _, p, c in mine)
        print(f"{damage:<24} " + " ".join(f"{mean[m]:10.3f}" for m in methods)
              + f"  {right:>5} of {len(mine):<5}  {sum(c['uncertain'] for *_, c in mine):>5}")


def rule_under(seen: list, **constants) -> list:
    """The distance rule's ``choice.Choice`` for each of ``seen`` (``seen_of``) among ``MODELS``,
    without a calibration, with ``choice``'s constants set as given (restored after)."""
    from edsr_jax.inference import choice

    saved = {k: getattr(choice, k) for k in constants}
    for k, v in constants.items():
        setattr(choice, k, v)
    try:
        options = [c for c in choice.candidates(2) if c.name in MODELS]
        return [choice.choose(one, options, 2) for one in seen]
    finally:
        for k, v in saved.items():
            setattr(choice, k, v)


def rechoose(rows, seen: list, **constants) -> tuple[int, float]:
    """The choice again from today's diagnoses (``seen_of``) with ``choice``'s constants set as
    given, without a calibration (no model runs): how many images get the best of the models,
    and the choice's mean PSNR."""
    picks = [c.model for c in rule_under(seen, **constants)]
    right = sum(m == max(MODELS, key=p.get) for m, (_, _, p, _) in zip(picks, rows))
    return right, float(np.mean([p[m] for m, (_, _, p, _) in zip(picks, rows)]))


GRID = {"JPEG_OVER": (1.0, 1.5), "JPEG_UNDER": (0.5, 1.0), "BLUR_UNIT": (2.0, 4.0, 8.0),
        "NOISE_UNIT": (10.0, 20.0, 40.0), "NEAR": (0.3, 0.4, 0.6, 0.8), "MARGIN": (0.2, 0.3, 0.5),
        "CONFIDENT": (0.3, 0.5, 0.7)}


def grid(rows, seen: list) -> None:
    """Every combination of ``GRID`` (the choice's constants), from today's diagnoses: the ten
    with the highest mean PSNR of the choice, and the shipped one."""
    from edsr_jax.inference import choice

    shipped = tuple(getattr(choice, k) for k in GRID)
    results = []
    for values in itertools.product(*GRID.values()):
        right, mean = rechoose(rows, seen, **dict(zip(GRID, values)))
        results.append((mean, right, values))
    results.sort(key=lambda r: -r[0])
    print(" ".join(f"{k:>10}" for k in GRID) + "  best-of-models  mean PSNR of the choice")
    for mean, right, values in results[:10] + [r for r in results if r[2] == shipped]:
        mark = "  (shipped)" if values == shipped else ""
        print(" ".join(f"{v:10.2f}" for v in values) + f"  {right:>5} of {len(rows):<5}  {mean:.3f}{mark}")


DRAWN_GRID = (0.03, 0.05, 0.06, 0.08, 0.1, 0.12, 0.15)


def drawn_readings() -> list[dict]:
    """The two-level share (``estimators.two_level_share``, as ``diagnose`` reads it) of whole
    images of known content under each of ``DAMAGES``: Sun80's 80 photographs and the 100
    generated training posters of experiments/general.py (``data/general/posters``). No model
    runs: these images are in the built-ins' training data, so they say nothing of the models'
    scores, only how the content reading falls on whole photographs and whole posters (the
    calibration's are crops, and its photographs come from 13 sources only). Cached in
    ``results/auto_choice/drawn.json``."""
    from edsr_jax.evaluation import diagnosis, evaluator

    target = OUT / "drawn.json"
    if target.exists():
        return json.loads(target.read_text())
    sys.path.insert(0, str(ROOT / "experiments"))
    import general

    general.make_data(ROOT / "data" / "general")
    folders = (("photo", general.DATASETS / "Sun80"), ("poster", ROOT / "data" / "general" / "posters"))
    makers = {spec: evaluator.lr_maker(2, spec) for spec in DAMAGES}
    out = []
    for content, folder in folders:
        for f in sorted(q for q in folder.iterdir() if q.suffix.lower() in (".png", ".jpg")):
            hr = evaluator.read_hr(f, 2)
            for spec in DAMAGES:
                d = diagnosis.diagnose_array(makers[spec](hr, f.name), scale=2)
                out.append({"content": content, "image": f.name, "damage": spec, "two_level": d.two_level})
    target.write_text(json.dumps(out) + "\n")
    return out


def drawn_threshold(readings: list[dict]) -> None:
    """Per threshold of ``DRAWN_GRID``: the share of whole photographs read as drawn and of whole
    posters missed, over all damages and under the worst one, and the images misread in all.
    ``choice.DRAWN`` is the threshold with the fewest misread."""
    from edsr_jax.inference import choice

    print(f"\ndrawn content on whole images ({sum(r['content'] == 'photo' for r in readings)} photograph "
          f"and {sum(r['content'] == 'poster' for r in readings)} poster LR images, {len(DAMAGES)} damages)")
    print(f"{'threshold':>9}  {'photos read drawn':>17}  {'worst damage':>12}  {'posters missed':>14}  "
          f"{'worst damage':>12}  {'images misread':>14}")
    for t in DRAWN_GRID:
        rate = {c: [np.mean([(r["two_level"] >= t) == (c == "photo") for r in readings
                             if r["content"] == c and r["damage"] == d]) for d in DAMAGES]
                for c in ("photo", "poster")}
        misread = sum((r["two_level"] >= t) == (r["content"] == "photo") for r in readings)
        mark = "  (shipped)" if t == choice.DRAWN else ""
        print(f"{t:9.2f}  {np.mean(rate['photo']):17.3f}  {max(rate['photo']):12.3f}  {np.mean(rate['poster']):14.3f}  "
              f"{max(rate['poster']):12.3f}  {misread:14d}{mark}")


def seen_of(rows, folder: Path) -> list:
    """``choice.Seen`` of each row's LR, made again exactly as evaluate made it
    (``evaluator.lr_maker``, seeded by the file name) and diagnosed with today's code (the
    recorded diagnoses are those of the code that scored the models)."""
    from edsr_jax.evaluation import diagnosis, evaluator
    from edsr_jax.inference import choice

    makers = {spec: evaluator.lr_maker(2, spec) for spec in DAMAGES}
    out = []
    for spec, name, _, record in rows:
        lr = makers[spec](evaluator.read_hr(folder / name, 2), name)
        d = diagnosis.diagnose_array(lr, scale=2)
        was = record["diagnosis"]["kind_probabilities"]["nearest"]
        assert abs(d.kind_probabilities["nearest"] - was) < 1e-6, (spec, name, "not the LR evaluate scored")
        out.append(choice.Seen.of(d))
    return out


def sources(rows) -> np.ndarray:
    """Each row's source image (``coffee_3.png`` -> ``coffee``, ``poster05_1.png`` -> ``poster05``):
    cross-validation leaves out every crop of one source at a time."""
    return np.array([name.rsplit("_", 1)[0] for _, name, _, _ in rows])


KS = (5, 10, 20)
FLAT_WEIGHTS = (0.0, 1.0, 2.0)
TWO_LEVEL_WEIGHTS = (0.0, 1.0, 2.0, 4.0)
BLUR_UNITS = (2.0, 4.0)  # choice.BLUR_UNIT (set by hand on 11 images) checked again here


def calibrate(rows, seen: list) -> "object":
    """The calibration table, its columns (the models alone, or with ``BLENDS``), ``k`` and
    flat-share weight chosen by leave-one-source-out cross-validation: the mean PSNR of what
    ``choice.choose`` takes with it (the distance rule where it is certain, the calibration where
    it is uncertain) for images of sources the table does not hold, printed beside the
    calibration alone, the distance rule alone (the general model when uncertain), general-x2
    and the oracles. Each under ``BLUR_UNITS`` (the distance rule's blur unit): the table
    written is the best for ``choice.BLUR_UNIT``, and the line says if another unit did better."""
    from edsr_jax.inference import calibration, choice
    from edsr_jax.inference.calibration import Calibration

    psnr = np.array([[p[m] for m in COLUMNS] for _, _, p, _ in rows])
    src = sources(rows)
    idx = np.arange(len(rows))
    shipped_unit = choice.BLUR_UNIT
    rules = {unit: rule_under(seen, BLUR_UNIT=unit) for unit in BLUR_UNITS}
    rule = rules[shipped_unit]
    feats = np.array([calibration.features(one) for one in seen])
    damage = np.array([r[0] for r in rows])

    def scores(picks) -> np.ndarray:
        return psnr[idx, [COLUMNS.index(m) for m in picks]]

    def as_shipped(rule, calibrated, drawn) -> np.ndarray:
        """The rule's choice where certain and not drawn, else the calibration's."""
        return scores([a if r.uncertain or d else r.model for r, a, d in zip(rule, calibrated, drawn)])

    drawn = feats[:, 5] >= choice.DRAWN
    print(f"\ncalibration by leave-one-source-out cross-validation ({len(set(src))} sources, {len(rows)} images; "
          f"{int(drawn.sum())} read as drawn, two-level share >= {choice.DRAWN})")
    units = " / ".join(f"{u:g}" for u in BLUR_UNITS)
    print(f"{'columns':<10} {'k':>3} {'flat w':>6} {'2-level w':>9}  {'as shipped, BLUR_UNIT ' + units:>30}  "
          f"{'no drawn rule':>13}  {'alone':>6}   as shipped per damage (BLUR_UNIT {shipped_unit:g})")
    best = dict.fromkeys(BLUR_UNITS)
    for columns, k, flat, two in itertools.product((MODELS, COLUMNS), KS, FLAT_WEIGHTS, TWO_LEVEL_WEIGHTS):
        cols = [COLUMNS.index(m) for m in columns]
        cal = Calibration(2, columns, feats, psnr[:, cols], k, (1.0, 1.0, 1.0, 1.0, flat, two))
        alone = [cal.rank(feats[i], exclude=src == src[i]).best for i in idx]
        shipped = {u: as_shipped(rules[u], alone, drawn) for u in BLUR_UNITS}
        plain = as_shipped(rule, alone, np.zeros_like(drawn))
        label = "models" if columns == MODELS else "+ blends"
        print(f"{label:<10} {k:>3} {flat:>6.1f} {two:>9.1f}  "
              f"{' / '.join(f'{shipped[u].mean():.3f}' for u in BLUR_UNITS):>30}  {plain.mean():13.3f}  "
              f"{scores(alone).mean():6.3f}   " + " ".join(f"{shipped[shipped_unit][damage == d].mean():.2f}"
                                                        for d in DAMAGES))
        for u in BLUR_UNITS:
            if best[u] is None or shipped[u].mean() > best[u][0]:
                best[u] = (shipped[u].mean(), cal)
    top = max(BLUR_UNITS, key=lambda u: best[u][0])
    print("best as shipped per BLUR_UNIT: " + ", ".join(f"{u:g}: {best[u][0]:.3f}" for u in BLUR_UNITS)
          + f"; choice.BLUR_UNIT is {shipped_unit:g}" + ("" if top == shipped_unit else f", the CV prefers {top:g}"))
    best = best[shipped_unit]
    print(f"distance rule alone: {scores([r.model for r in rule]).mean():.3f}; general-x2: "
          f"{psnr[:, COLUMNS.index('general-x2')].mean():.3f}; oracle of the models: "
          f"{psnr[:, :len(MODELS)].max(axis=1).mean():.3f}, with the blends: {psnr.max(axis=1).mean():.3f}")
    print("best single model per damage: " + " ".join(
        f"{psnr[damage == d, :len(MODELS)].mean(axis=0).max():.2f}" for d in DAMAGES))
    cal = best[1]
    picked = [cal.rank(feats[i], exclude=src == src[i]).best for i in idx]
    print("the best calibration as shipped under other drawn thresholds: " + ", ".join(
        f"{t:.2f}: {as_shipped(rule, picked, feats[:, 5] >= t).mean():.3f}" for t in DRAWN_GRID))
    return Calibration(cal.scale, cal.models, cal.features, cal.psnr, cal.k, cal.weights,
                       f"experiments/auto_choice.py: {len(rows)} LR images ({len(set(src))} sources x "
                       f"{len(DAMAGES)} damages), leave-one-source-out PSNR {best[0]:.3f} dB as shipped")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", action="store_true", help="also re-run the choice under other weights and thresholds")
    p.add_argument("--write", action="store_true",
                   help="write the calibration the built-in models ship with (inference/weights/"
                        "choice_calibration.json)")
    args = p.parse_args()
    folder = ROOT / "data" / "auto_calibration"
    make_set(folder)
    rows = load(evaluate(folder))
    summary(rows)
    drawn_threshold(drawn_readings())
    seen = seen_of(rows, folder)
    if args.grid:
        grid(rows, seen)
    cal = calibrate(rows, seen)
    if args.write:
        from edsr_jax.inference import calibration, pretrained

        target = pretrained.MODELS_DIR / calibration.FILE
        target.write_text(json.dumps(cal.to_json()) + "\n")
        print(f"wrote {target} (k {cal.k}, weights {cal.weights})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
