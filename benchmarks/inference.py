"""Inference speed and peak memory: JAX ``infer.Upscaler`` beside the PyTorch EDSR.

    python benchmarks/inference.py                        # x2 and x4, 1080p and 4K, 2 tiles each
    python benchmarks/inference.py --full --scales 2 --sizes 3840x2160 --frameworks jax

Each case runs in its own child process so its peak memory (``ru_maxrss``, the resident
set high-water mark, which sees XLA's buffers where tracemalloc does not) is its own.
Weights are random (speed does not depend on them); EDSR-baseline by default.

Both frameworks use the same tiles: ``Upscaler``'s default tile for the memory budget and
``receptive_radius`` LR pixels of overlap (PyTorch takes ragged tiles at the image edge,
JAX pads every tile to one shape and masks). Output megapixels per second count the
output image only, not the overlap.

On a small CPU a full 4K run takes many minutes, so by default only the first ``--tiles``
tiles (full-size ones, from the top row of the real image) are timed, and the time of the
whole image is extrapolated as ``(seconds per tile) x (tiles of the whole image)``; to keep
the memory figure honest the child first allocates and touches the whole-image buffers a
full run holds (uint8 input, padded copy, output), so its peak is an upper bound of a full
run's. ``--full`` runs the whole image instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_size(text: str) -> tuple[int, int]:
    """``"1920x1080"`` -> ``(height, width)`` = ``(1080, 1920)``."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected WIDTHxHEIGHT, e.g. 1920x1080") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"size {text!r}: must be positive")
    return h, w


def tile_grid(h: int, w: int, tile: int, overlap: int):
    """Tiles of an ``h x w`` LR image in row-major order: ``(y0, x0, ch, cw)`` core boxes."""
    return [(y0, x0, min(tile, h - y0), min(tile, w - x0))
            for y0 in range(0, h, tile) for x0 in range(0, w, tile)]


# -- children: one case each; print one JSON line ------------------------------------------

def child(case: dict) -> dict:
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from edsr_jax.inference import infer
    from edsr_jax.nets.edsr import preset, receptive_radius

    config = preset(case["preset"], case["scale"])
    h, w = case["height"], case["width"]
    s = config.scale
    tile = case["tile"] or infer.tile_for_budget(config, case["memory_budget_mb"])
    overlap = receptive_radius(config)
    img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    tiles_full = len(tile_grid(h, w, tile, overlap))
    if case["full"]:
        work, ballast = img, None
    else:
        # the first k full-size tiles of the top row(s); the whole-image buffers are held too
        k = case["tiles"]
        per_row = max(1, w // tile)
        rows = max(1, math.ceil(k / per_row))
        work = img[: min(h, rows * tile), : min(w, min(k, per_row) * tile)]
        frame_bytes = (math.ceil(h / tile) * tile + 2 * overlap) * (math.ceil(w / tile) * tile + 2 * overlap) * 3
        ballast = np.ones(frame_bytes + h * s * w * s * 3, np.uint8)  # padded copy + uint8 output
    tiles_run = len(tile_grid(*work.shape[:2], tile, overlap))

    if case["framework"] == "jax":
        import jax
        import jax.numpy as jnp

        params = config.build().init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
        up = infer.Upscaler(config, params, tile=tile)
        side = tile + 2 * overlap
        # compile the tile shape before timing
        infer.jitted(config)(up.params, np.zeros((1, side, side, 3), np.float32),
                             np.array([[0, side, 0, side]], np.int32)).block_until_ready()
        start = time.perf_counter()
        out = up(work)
        seconds = time.perf_counter() - start
        device = jax.devices()[0].device_kind
    else:
        import torch

        sys.path.insert(0, str(ROOT / "tests"))
        from torch_edsr import EDSR, randomize

        torch.set_num_threads(os.cpu_count() or 1)
        model = randomize(EDSR(s, config.num_blocks, config.num_features, config.res_scale)).eval()
        with torch.inference_mode():
            model(torch.zeros(1, 3, 32, 32))  # warm-up
            start = time.perf_counter()
            out = torch_tiled(model, work, s, tile, overlap)
            seconds = time.perf_counter() - start
        device = f"torch {torch.__version__} cpu, {torch.get_num_threads()} threads"
    assert out.shape == (work.shape[0] * s, work.shape[1] * s, 3)
    del ballast
    per_tile = seconds / tiles_run
    full_seconds = seconds if case["full"] else per_tile * tiles_full
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {**case, "tile": tile, "overlap": overlap, "tiles_run": tiles_run, "tiles_full": tiles_full,
            "seconds": seconds, "full_seconds": full_seconds,
            "mp_per_s": h * w * s * s / 1e6 / full_seconds, "peak_bytes": peak, "device": device}


def torch_tiled(model, img, scale: int, tile: int, overlap: int):
    """The PyTorch side with the same tiles: each core box with up to ``overlap`` context
    (clipped at the image edge, so ragged tiles), output rounded to uint8."""
    import numpy as np
    import torch

    h, w, _ = img.shape
    out = np.empty((h * scale, w * scale, 3), np.uint8)
    for y0, x0, ch, cw in tile_grid(h, w, tile, overlap):
        ya, yb = max(0, y0 - overlap), min(h, y0 + ch + overlap)
        xa, xb = max(0, x0 - overlap), min(w, x0 + cw + overlap)
        x = torch.from_numpy(np.ascontiguousarray(img[ya:yb, xa:xb])).permute(2, 0, 1)[None].float()
        y = model(x)[0].permute(1, 2, 0)
        oy, ox = (y0 - ya) * scale, (x0 - xa) * scale
        core = y[oy:oy + ch * scale, ox:ox + cw * scale]
        out[y0 * scale:(y0 + ch) * scale, x0 * scale:(x0 + cw) * scale] = (
            core.clamp(0, 255).round().to(torch.uint8).numpy())
    return out


# -- parent ------------------------------------------------------------------------------

def run_case(case: dict, timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.setdefault("JAX_PLATFORMS", "cpu")
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(case)], capture_output=True,
                          text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {**case, "error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    lines = ["| framework | scale | input | tile (+overlap) | tiles timed | output MP/s | "
             "whole image (s) | peak RSS (GiB) |",
             "| --- | --- | --- | --- | --- | ---: | ---: | ---: |"]
    for r in results:
        size = f"{r['width']}x{r['height']}"
        if "error" in r:
            lines.append(f"| {r['framework']} | x{r['scale']} | {size} | | | error: {r['error']} | | |")
            continue
        est = "" if r["full"] else " (est.)"
        lines.append(
            f"| {r['framework']} | x{r['scale']} | {size} | {r['tile']} (+{r['overlap']}) | "
            f"{r['tiles_run']} of {r['tiles_full']} | {r['mp_per_s']:.3f} | {r['full_seconds']:.0f}{est} | "
            f"{r['peak_bytes'] / 2**30:.2f} |")
    return "\n".join(lines)


def without_missing_torch(frameworks: list[str]) -> list[str]:
    """``frameworks`` less "torch" when PyTorch is not installed (an optional extra), said in
    one line on stderr."""
    if "torch" not in frameworks:
        return frameworks
    try:
        import torch  # noqa: F401
    except ImportError:
        print('note: PyTorch is not installed: the torch side is left out (pip install "torch==2.13.0" '
              "--index-url https://download.pytorch.org/whl/cpu adds it)", file=sys.stderr)
        return [f for f in frameworks if f != "torch"]
    return frameworks


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--scales", type=int, nargs="+", default=[2, 4], choices=(2, 3, 4),
                   help="upscaling factors (default 2 4)")
    p.add_argument("--sizes", type=parse_size, nargs="+", default=[(1080, 1920), (2160, 3840)],
                   metavar="WxH", help="LR input sizes (default 1920x1080 3840x2160)")
    p.add_argument("--frameworks", nargs="+", default=["jax", "torch"], choices=("jax", "torch"),
                   help="what to run (default both)")
    p.add_argument("--preset", default="edsr_baseline", choices=("edsr_baseline", "edsr"),
                   help="architecture (default edsr_baseline)")
    p.add_argument("--memory-budget-mb", type=float, default=1024, help="Upscaler's default budget")
    p.add_argument("--tile", type=int, default=None, help="tile side in LR pixels (default: from budget)")
    p.add_argument("--tiles", type=int, default=2, help="tiles timed per case unless --full (default 2)")
    p.add_argument("--full", action="store_true", help="upscale whole images (slow on a small CPU)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds allowed per case")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    if args.tiles < 1:
        p.error("--tiles must be >= 1")
    args.frameworks = without_missing_torch(args.frameworks)
    results = []
    for scale in args.scales:
        for h, w in args.sizes:
            for fw in args.frameworks:
                case = {"framework": fw, "scale": scale, "height": h, "width": w, "preset": args.preset,
                        "tile": args.tile, "memory_budget_mb": args.memory_budget_mb,
                        "tiles": args.tiles, "full": args.full}
                r = run_case(case, args.timeout)
                results.append(r)
                print(table([r]).splitlines()[-1], file=sys.stderr, flush=True)
    print(f"\nEDSR {args.preset}, random weights, {os.cpu_count()} CPU(s); "
          f"{'whole images' if args.full else f'{args.tiles} tile(s) timed per case, whole image extrapolated'}\n")
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
