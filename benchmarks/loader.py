"""Input-pipeline throughput: training patches per second from edsr_jax.data.sources.

Configurations (HR patch 96 unless --hr-patch says otherwise; LR patch = HR / scale):

- ``paired-x2``: prepared bicubic pairs (made here with imresize into a temp folder),
  read from the decode cache;
- ``bicubic(2)``: HR-only source, LR made on the fly by ``degrade``;
- ``blur > bicubic(4) > noise > jpeg``: the realistic x4 chain on the fly;

each with 0, 1 and 2 Grain worker processes (``--workers``). Images: the HR photos
in /work/shared/datasets/Sun80 (or ``--data DIR``), else generated 2K images.
Prints one markdown table. Example::

    python benchmarks/loader.py --images 40 --seconds 5
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from edsr_jax.data import sources as data  # noqa: E402
from edsr_jax.io.images import list_images, read_rgb, write_image  # noqa: E402
from edsr_jax.degradation.imresize import imresize  # noqa: E402

DEFAULT_DATA = Path("/work/shared/datasets/Sun80")
CHAIN_X4 = "blur(0.2,1.5) > bicubic(4) > noise(0,8) > jpeg(30,90)"


def hr_images(args, tmp: Path) -> list[Path]:
    """The benchmark's HR files: ``--data`` (first ``--images``) or generated 2K images."""
    if args.data.is_dir():
        return list_images(args.data)[: args.images]
    rng = np.random.default_rng(0)
    out = []
    for k in range(args.images or 8):
        small = rng.integers(0, 256, (68, 128, 3), dtype=np.uint8)
        img = imresize(small, output_shape=(1080, 2048))
        out.append(write_image(tmp / "hr" / f"{k:04d}.png", img))
    return out


def prepare_pairs(paths: list[Path], root: Path, scale: int) -> Path:
    """Write a DIV2K-layout folder with LR = imresize(HR, 1/scale)."""
    for k, p in enumerate(paths):
        hr = read_rgb(p)
        hr = hr[: hr.shape[0] // scale * scale, : hr.shape[1] // scale * scale]
        write_image(root / "HR" / f"{k:04d}.png", hr)
        write_image(root / f"LR_bicubic/X{scale}/{k:04d}x{scale}.png", imresize(hr, 1 / scale))
    return root


def measure(source, hr_patch: int, batch: int, workers: int, seconds: float) -> float:
    """Steady-state patches/s (after a warm-up that starts the workers)."""
    ds = data.make_train_dataset(source, patch_size=hr_patch // source.scale, batch_size=batch,
                                 seed=0, num_workers=workers, process_index=0, process_count=1)
    it = iter(ds)
    try:
        for _ in range(max(3, 2 * workers + 2)):
            next(it)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            b = next(it)
            n += b["hr"].shape[0]
        return n / (time.perf_counter() - t0)
    finally:
        if hasattr(it, "close"):
            it.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of HR images")
    ap.add_argument("--images", type=int, default=None, help="use only the first N images")
    ap.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    ap.add_argument("--batch", type=int, default=16, help="batch size (patches)")
    ap.add_argument("--hr-patch", type=int, default=96, help="HR patch side in pixels")
    ap.add_argument("--seconds", type=float, default=5.0, help="timing window per configuration")
    ap.add_argument("--only", default=None, help="run only configurations whose name contains this")
    args = ap.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["EDSR_JAX_CACHE"] = str(tmp / "cache")
        paths = hr_images(args, tmp)
        warnings.simplefilter("ignore")
        sources = {
            "paired-x2 (cache)": lambda: data.PairedFolderSource(
                prepare_pairs(paths, tmp / "pairs", 2), 2, progress=False),
            "bicubic(2) on the fly": lambda: data.HROnlySource(paths, 2, progress=False),
            f"{CHAIN_X4} on the fly": lambda: data.HROnlySource(paths, 4, spec=CHAIN_X4, progress=False),
        }
        rows = []
        for name, make in sources.items():
            if args.only and args.only not in name:
                continue
            src = make()
            for w in workers:
                rate = measure(src, args.hr_patch, args.batch, w, args.seconds)
                rows.append((name, w, rate, rate / max(w, 1)))
                print(f"  {name}, {w} workers: {rate:.0f} patches/s", file=sys.stderr, flush=True)
    where = args.data if args.data.is_dir() else "generated 2048x1080"
    print(f"\n{len(paths)} images from {where}; HR patch {args.hr_patch}, batch {args.batch}, "
          f"{os.cpu_count()} CPU cores\n")
    print("| source | workers | patches/s | per worker core |")
    print("| --- | ---: | ---: | ---: |")
    for name, w, rate, per in rows:
        print(f"| {name} | {w} | {rate:.0f} | {per:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
