"""Validate (and calibrate) the diagnosis on images degraded with known random specs.

The diagnosis is ``edsr_jax.evaluation.diagnosis`` (the command ``python -m edsr_jax.diagnose``).

    python experiments/diagnose.py                 # validate on BSD68 + Set14 (held out)
    python experiments/diagnose.py --calibrate     # fit the resampling model on Sun80

Each HR image is degraded several times with a spec drawn at random from the project's
operators, ``[blur(b) >] {nearest|bicubic|bilinear}(s) [> noise(n)] [> jpeg(q)]``
(b ~ U(0.5, 2.5) HR px with probability 0.35; n ~ U(1, 15) with probability 0.35;
q ~ U{20..95} with probability 0.5; s in 2, 2, 3, 4), after a random crop keeping 40-100 %
of each side (so that image sizes vary), saved as a file (a JPEG'd one as
a .jpg file at that quality half the time, else as PNG), and diagnosed through
``diagnose_file`` with the true scale. One case in eight is then upscaled back by ``s``
(nearest or bicubic, no JPEG) and diagnosed without a scale, to test the factor
detection. Validation images: ``../shared/datasets/BSD68`` and ``Set14`` when present,
else the built-in validation photographs of ``edsr_jax/data/samples.py``. Calibration
uses ``../shared/datasets/Sun80`` (else the built-in training photographs), never the
validation images.

Prints markdown tables (the README's "Diagnose the damage" section) and writes every case
to ``results/diagnose/<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edsr_jax.evaluation import diagnosis, estimators
from edsr_jax.data import samples
from edsr_jax.degradation import degrade
from edsr_jax.io import images  # noqa: E402
from edsr_jax.degradation.imresize import imresize  # noqa: E402

SHARED = ROOT.parent / "shared" / "datasets"


def hr_images(names: list[str], split: str) -> list[Path]:
    """Image paths of the shared datasets ``names`` that exist, else the built-in ``split``."""
    paths = [p for n in names if (SHARED / n).is_dir() for p in images.list_images(SHARED / n)]
    return paths or samples.builtin_images(split)


def random_case(rng: np.random.Generator) -> dict:
    """One random degradation: ``{"crop", "kind", "scale", "blur", "noise", "jpeg", "file", "up"}``."""
    jpeg = int(rng.integers(20, 96)) if rng.random() < 0.5 else None
    up = None
    if jpeg is None and rng.random() < 0.25:
        up = str(rng.choice(["nearest", "bicubic"]))
    return {
        "crop": round(float(rng.uniform(0.4, 1.0)), 3),  # share of each side kept (sizes vary)
        "kind": str(rng.choice(estimators.KINDS)),
        "scale": int(rng.choice([2, 2, 3, 4])),
        "blur": round(float(rng.uniform(0.5, 2.5)), 2) if rng.random() < 0.35 else None,
        "noise": round(float(rng.uniform(1, 15)), 2) if rng.random() < 0.35 else None,
        "jpeg": jpeg,
        "file": "jpg" if jpeg is not None and rng.random() < 0.5 else "png",
        "up": up,
    }


def spec_of(case: dict) -> str:
    """The case's degradation as spec text (without the upscale back)."""
    parts = [f"blur({case['blur']})"] if case["blur"] else []
    parts.append(f"{case['kind']}({case['scale']})")
    if case["noise"]:
        parts.append(f"noise({case['noise']})")
    if case["jpeg"] is not None and case["file"] == "png":
        parts.append(f"jpeg({case['jpeg']})")
    return " > ".join(parts)


def make_lr(hr: np.ndarray, case: dict, seed: int, folder: Path, name: str) -> Path:
    """Degrade ``hr`` as ``case`` says and save it under ``folder``; returns the file."""
    s = case["scale"]
    rng = np.random.default_rng(seed)
    h, w = (max(int(n * case["crop"]), min(n, 48 * s)) for n in hr.shape[:2])
    r0, c0 = int(rng.integers(0, hr.shape[0] - h + 1)), int(rng.integers(0, hr.shape[1] - w + 1))
    hr = hr[r0:r0 + h // s * s, c0:c0 + w // s * s]
    lr = degrade.parse(spec_of(case))(hr, rng)
    if case["up"] == "nearest":
        lr = np.repeat(np.repeat(lr, s, axis=0), s, axis=1)
    elif case["up"] == "bicubic":
        lr = imresize(lr, float(s))
    if case["file"] == "jpg":
        return images.write_image(folder / f"{name}.jpg", lr, overwrite=True, quality=case["jpeg"])
    return images.write_image(folder / f"{name}.png", lr, overwrite=True)


def run_cases(paths: list[Path], per_image: int, seed: int, quiet: bool = False) -> list[dict]:
    """Degrade every image ``per_image`` times, diagnose each file; one record per case."""
    rng = np.random.default_rng(seed)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, p in enumerate(paths):
            try:
                hr = images.read_rgb(p)
            except images.ImageError as e:
                print(f"skipped {e}", file=sys.stderr)
                continue
            if np.array_equal(hr[..., 0], hr[..., 1]) and np.array_equal(hr[..., 1], hr[..., 2]):
                print(f"skipped {p}: grayscale", file=sys.stderr)
                continue
            for k in range(per_image):
                case = random_case(rng)
                f = make_lr(hr, case, seed * 100003 + i * 101 + k, Path(tmp), f"{p.stem}_{k}")
                try:
                    d = diagnosis.diagnose_file(f, None if case["up"] else case["scale"])
                except diagnosis.Skipped as e:
                    print(f"skipped {e}", file=sys.stderr)
                    continue
                records.append({"image": p.name, "spec": spec_of(case), **case,
                                "diagnosis": asdict(d)})
            if not quiet:
                print(f"\r{i + 1}/{len(paths)} images", end="", file=sys.stderr)
    if not quiet:
        print(file=sys.stderr)
    return records


# --------------------------------------------------------------------------- calibration

def fit_softmax(x: np.ndarray, y: np.ndarray, l2: float = 1e-2) -> np.ndarray:
    """Multinomial logistic regression on ``x (N, D)``, labels ``y (N,)`` in 0..K-1, with an
    L2 penalty ``l2`` (not on the constant column 0); returns weights ``(K, D)``."""
    from scipy.optimize import minimize

    k, d = int(y.max()) + 1, x.shape[1]
    onehot = np.eye(k)[y]
    mask = np.ones(d)
    mask[0] = 0

    def loss(w):
        w = w.reshape(k, d)
        z = x @ w.T
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        nll = -np.mean(np.log(p[np.arange(len(y)), y] + 1e-12))
        grad = (p - onehot).T @ x / len(y)
        return nll + 0.5 * l2 * np.sum(w * w * mask), (grad + l2 * w * mask).ravel()

    res = minimize(loss, np.zeros(k * d), jac=True, method="L-BFGS-B", options={"maxiter": 2000})
    return res.x.reshape(k, d)


def calibrate(records: list[dict]) -> dict:
    """Fit the resampling model and the per-kind edge baselines; returns the constants."""
    feats = np.array([r["diagnosis"]["features"] for r in records if not r["up"]])
    labels = np.array([estimators.KINDS.index(r["kind"]) for r in records if not r["up"]])
    mean, std = feats.mean(axis=0), feats.std(axis=0) + 1e-9
    z = np.clip((feats - mean) / std, -6, 6)
    w = fit_softmax(estimators.expand(z), labels)
    acc = float((np.argmax(estimators.expand(z) @ w.T, axis=1) == labels).mean())
    base = {}
    for kind in estimators.KINDS:
        e2 = [r["diagnosis"]["edge_e2"] for r in records
              if r["kind"] == kind and not r["blur"] and not r["up"] and np.isfinite(r["diagnosis"]["edge_e2"])]
        base[kind] = round(float(np.median(e2)), 3)
    return {"mean": mean.round(5).tolist(), "std": std.round(5).tolist(),
            "weights": w.round(4).tolist(), "edge_e2_base": base, "train_accuracy": acc,
            "cases": len(labels)}


def constants_snippet(c: dict) -> str:
    """The calibrated constants as the Python lines of ``edsr_jax/evaluation/estimators.py``."""
    lines = [f"KIND_MEAN = np.array({json.dumps(c['mean'])})", f"KIND_STD = np.array({json.dumps(c['std'])})",
             "KIND_WEIGHTS = np.array(["]
    for row in c["weights"]:
        lines.append("    [")
        lines += ["        " + ", ".join(repr(v) for v in row[i:i + 9]) + "," for i in range(0, len(row), 9)]
        lines.append("    ],")
    lines += ["])", f"EDGE_E2_BASE = {json.dumps(c['edge_e2_base'])}"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- report

def summarise(records: list[dict]) -> str:
    """Markdown tables: resampling confusion, JPEG quality error, noise and blur errors, speed."""
    out = []
    plain = [r for r in records if not r["up"]]
    # confusion matrix
    out.append("Resampling kind (rows: true, columns: diagnosed), all cases:\n")
    out.append("| true \\ diagnosed | " + " | ".join(estimators.KINDS) + " | accuracy |")
    out.append("| --- |" + " --- |" * (len(estimators.KINDS) + 1))
    for kind in estimators.KINDS:
        rows = [r for r in plain if r["kind"] == kind]
        c = [sum(r["diagnosis"]["kind"] == k for r in rows) for k in estimators.KINDS]
        out.append(f"| {kind} | " + " | ".join(map(str, c))
                   + f" | {c[estimators.KINDS.index(kind)] / max(len(rows), 1):.0%} ({len(rows)}) |")
    total = sum(r["diagnosis"]["kind"] == r["kind"] for r in plain)
    out.append(f"\nOverall {total}/{len(plain)} = {total / max(len(plain), 1):.0%}.")
    sub = []
    for label, pred in (("no blur, no JPEG", lambda r: not r["blur"] and r["jpeg"] is None),
                        ("no blur, JPEG", lambda r: not r["blur"] and r["jpeg"] is not None),
                        ("blur, no JPEG", lambda r: r["blur"] and r["jpeg"] is None),
                        ("blur, JPEG", lambda r: r["blur"] and r["jpeg"] is not None),
                        ("noise sigma >= 5", lambda r: (r["noise"] or 0) >= 5)):
        rows = [r for r in plain if pred(r)]
        ok = sum(r["diagnosis"]["kind"] == r["kind"] for r in rows)
        nb = [r for r in rows if r["kind"] != "nearest"]
        sep = sum((r["diagnosis"]["kind"] == "nearest") == (r["kind"] == "nearest") for r in rows)
        sub.append(f"| {label} | {ok}/{len(rows)} = {ok / max(len(rows), 1):.0%} | "
                   f"{sep}/{len(rows)} = {sep / max(len(rows), 1):.0%} |")
        del nb
    out.append("\n| subset | kind right | nearest vs filtered right |\n| --- | --- | --- |")
    out += sub
    # JPEG
    out.append("\nJPEG quality (cases whose last step is JPEG, and false alarms):\n")
    out.append("| source | cases | detected | exact | within ±5 | median abs error | max abs error |")
    out.append("| --- | --- | --- | --- | --- | --- | --- |")
    for label, pred in (("JPEG file (tables)", lambda r: r["file"] == "jpg"),
                        ("PNG, quality <= 90", lambda r: r["file"] == "png" and r["jpeg"] is not None and r["jpeg"] <= 90),
                        ("PNG, quality > 90", lambda r: r["file"] == "png" and r["jpeg"] is not None and r["jpeg"] > 90)):
        rows = [r for r in plain if pred(r)]
        det = [r for r in rows if r["diagnosis"]["jpeg_quality"] is not None]
        err = np.array([abs(r["diagnosis"]["jpeg_quality"] - r["jpeg"]) for r in det])
        out.append(f"| {label} | {len(rows)} | {len(det)} | {int((err == 0).sum())} | {int((err <= 5).sum())} | "
                   f"{np.median(err) if len(err) else float('nan'):.0f} | {err.max() if len(err) else float('nan'):.0f} |")
    clean = [r for r in records if r["jpeg"] is None]
    fa = sum(r["diagnosis"]["jpeg_quality"] is not None for r in clean)
    out.append(f"| no JPEG (false alarms) | {len(clean)} | {fa} | | | | |")
    # noise
    out.append("\nNoise sigma (relative error |est - true| / true; cases with noise):\n")
    out.append(f"| subset | cases | median rel. error | within 20 % | false alarms (no noise, est >= {diagnosis.NOISE_MIN}) |")
    out.append("| --- | --- | --- | --- | --- |")
    for label, pred in (("sigma >= 2, no JPEG after", lambda r: r["jpeg"] is None),
                        ("sigma >= 2, JPEG q >= 70 after", lambda r: r["jpeg"] is not None and r["jpeg"] >= 70),
                        ("sigma >= 2, JPEG q < 70 after", lambda r: r["jpeg"] is not None and r["jpeg"] < 70)):
        rows = [r for r in plain if pred(r) and (r["noise"] or 0) >= 2]
        rel = np.array([abs(r["diagnosis"]["noise"] - r["noise"]) / r["noise"] for r in rows])
        quiet = [r for r in plain if pred(r) and not r["noise"]]
        fa = sum(r["diagnosis"]["noise"] >= diagnosis.NOISE_MIN for r in quiet)
        out.append(f"| {label} | {len(rows)} | {np.median(rel) if len(rel) else float('nan'):.0%} | "
                   f"{int((rel <= 0.2).sum())}/{len(rows)} | {fa}/{len(quiet)} |")
    # blur
    out.append("\nBlur sigma (HR pixels; the estimate uses the diagnosed kind):\n")
    out.append(f"| subset | cases | median abs error | within 0.5 | proposed (>= {diagnosis.BLUR_MIN}) |")
    out.append("| --- | --- | --- | --- | --- |")
    for label, pred in (("blurred, sigma >= 1.0", lambda r: (r["blur"] or 0) >= 1.0),
                        ("blurred, sigma < 1.0", lambda r: r["blur"] and r["blur"] < 1.0),
                        ("not blurred", lambda r: not r["blur"])):
        rows = [r for r in plain if pred(r)]
        err = np.array([abs(r["diagnosis"]["blur"] - (r["blur"] or 0)) for r in rows])
        det = sum(r["diagnosis"]["blur"] >= diagnosis.BLUR_MIN for r in rows)
        out.append(f"| {label} | {len(rows)} | {np.median(err) if len(err) else float('nan'):.2f} | "
                   f"{int((err <= 0.5).sum())}/{len(rows)} | {det}/{len(rows)} |")
    # upscaled back
    ups = [r for r in records if r["up"]]
    if ups:
        ok = sum(r["diagnosis"]["upscaled_by"] == r["scale"] for r in ups)
        plain_up = sum(r["diagnosis"]["upscaled_by"] > 1 for r in plain)
        out.append(f"\nUpscaled back by s (nearest or bicubic) and diagnosed without --scale: factor "
                   f"found in {ok}/{len(ups)}; images not upscaled reported as upscaled: "
                   f"{plain_up}/{len(plain)}.")
    secs = np.array([r["diagnosis"]["seconds"] for r in records])
    px = np.array([r["diagnosis"]["width"] * r["diagnosis"]["height"] for r in records])
    out.append(f"\nSpeed: {secs.mean() * 1000:.0f} ms of CPU per image on average (median "
               f"{np.median(px) / 1e3:.0f} kpx; one thread), {60 / secs.mean():.0f} images per minute per core "
               "for the analysis (decoding the file not included).")
    return "\n".join(out)


def scenario(spec: str, paths: list[Path], scale: int | None, folder: Path) -> str:
    """Degrade every HR image with ``spec`` (each image's draw seeded by its name, as
    ``evaluate --spec`` does), save the LR as PNG under ``folder``, diagnose the folder;
    returns the CLI's report."""
    pipe = degrade.parse(spec, scale=scale) if scale else degrade.parse(spec)
    s = pipe.scale
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        hr = images.read_rgb(p)
        if np.array_equal(hr[..., 0], hr[..., 1]) and np.array_equal(hr[..., 1], hr[..., 2]):
            continue
        hr = hr[:hr.shape[0] // s * s, :hr.shape[1] // s * s]
        images.write_image(folder / f"{p.stem}.png", pipe(hr, degrade.image_rng(p.name)), overwrite=True)
    fd = diagnosis.diagnose_folder(folder, scale)
    return diagnosis.report(fd)


def main(argv=None) -> int:
    """Run the validation (or ``--calibrate``, or ``--scenario``) and print the tables."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calibrate", action="store_true", help="fit the resampling model on Sun80")
    p.add_argument("--per-image", type=int, default=4, help="random cases per HR image")
    p.add_argument("--seed", type=int, default=0, help="seed of the random specs")
    p.add_argument("--limit", type=int, default=0, help="use only the first N HR images (0: all)")
    p.add_argument("--scenario", default=None, metavar="SPEC",
                   help="degrade the validation images with this one spec and diagnose the folder")
    p.add_argument("--scale", type=int, default=None, help="--scenario: the scale to diagnose for")
    p.add_argument("--name", default=None, help="results/diagnose/NAME.json (default: validation "
                                                "or calibration)")
    args = p.parse_args(argv)
    if args.calibrate:
        paths = hr_images(["Sun80"], "train")
    else:
        paths = hr_images(["BSD68", "Set14"], "val")
    if args.limit:
        paths = paths[:args.limit]
    if args.scenario:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"{args.scenario!r} on {len(paths)} images ({', '.join(sorted({p.parent.name for p in paths}))}):\n")
            print(scenario(args.scenario, paths, args.scale, Path(tmp) / "lr"))
        return 0
    t0 = time.time()
    records = run_cases(paths, args.per_image, args.seed + (1000 if args.calibrate else 0))
    out_dir = ROOT / "results" / "diagnose"
    out_dir.mkdir(parents=True, exist_ok=True)
    name = args.name or ("calibration" if args.calibrate else "validation")
    result = {"images": [str(p) for p in paths], "seed": args.seed, "records": records}
    if args.calibrate:
        result["constants"] = calibrate(records)
        print(f"# paste into edsr_jax/evaluation/estimators.py (training accuracy "
              f"{result['constants']['train_accuracy']:.1%} on {result['constants']['cases']} cases):")
        print(constants_snippet(result["constants"]) + "\n")
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=None, allow_nan=True) + "\n")
    print(f"{len(records)} cases from {len(paths)} images in {time.time() - t0:.0f} s "
          f"({'calibration' if args.calibrate else 'validation'}: {', '.join(sorted({p.parent.name for p in paths}))})\n")
    print(summarise(records))
    if args.calibrate:
        print("\n(the tables above use the constants estimators.py held during this run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
