"""Input-pipeline throughput: training patches per second from edsr_jax.data, old and new side by side.

Host rows (``where = "host"``: the LR is made or read on the host), each spec read by both
loaders, alternating, in one process:

- ``per-patch``: ``sources.make_train_dataset``, one patch per Grain record (the old loader);
- ``block``: ``blocks.make_block_dataset``, a block of ``--block`` patches per image and a
  batch per record (vectorised crops and symmetries); for cached pairs also ``block, flips
  on device`` (``augment="device"``: crops as cut, each patch's symmetry for the step);

for the specs ``cached pairs`` (prepared bicubic x2 pairs, made here with imresize into a
temp folder, read from the decode cache), ``bicubic`` (x2), ``nearest > jpeg(30,60)`` (x2)
and ``blur(0.2,1.5) > bicubic(4) > noise(0,8) > jpeg(30,90)`` (x4) made on the fly.

Device rows (``where = "device"``: the LR is made by ``edsr_jax.degradation.device.
degrade_batch`` inside the step): the HR-only loader (``blocks.make_hr_dataset``, uint8 HR
crops and their global indices; always measured, spec ``hr crops``, with the flips on the
host or left to the device), the flips and turns on the device (``device_symmetry.
apply_symmetries``, jitted) and, when the device module imports, ``degrade_batch`` jitted on
JAX's default device (the CPU here) for the same specs. Programs compile once into JAX's persistent cache (``$JAX_COMPILATION_CACHE_DIR``, else
``.cache/jax`` in the checkout): the first run compiles the two jpeg chains (about a minute
on 2 busy cores), later runs load them in seconds.

HR patch 96 unless ``--hr-patch`` says otherwise (LR patch = HR / scale). Images: the HR
photos in /work/shared/datasets/Sun80 (or ``--data DIR``), else generated 2K images.
Rates are steady-state (after a warm-up), the best of ``--rounds`` alternating rounds (the
least disturbed by other work on a shared machine). ``patches_per_s_per_core`` is patches/s
divided by the worker processes (by 1 without workers), as in earlier reports;
``patches_per_cpu_s`` divides by the CPU time of the process and its workers instead (steadier
when other programs share the cores). Prints markdown tables; ``--json FILE`` writes the rows
(a list of objects with at least ``spec``, ``where``, ``workers``, ``patches_per_s_per_core``)::

    python benchmarks/loader.py --quick --json /tmp/loader.json     # well under a minute (warm cache)
    python benchmarks/loader.py --images 40 --seconds 5 --rounds 3
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

from edsr_jax.data import blocks, sources  # noqa: E402
from edsr_jax.degradation.imresize import imresize  # noqa: E402
from edsr_jax.io.images import list_images, read_rgb, write_image  # noqa: E402

DEFAULT_DATA = Path("/work/shared/datasets/Sun80")
CHAIN_X4 = "blur(0.2,1.5) > bicubic(4) > noise(0,8) > jpeg(30,90)"
PAIRS = "cached pairs"
HR_CROPS = "hr crops"
# spec -> scale; "cached pairs" are bicubic x2 pairs prepared beforehand
SPECS = {PAIRS: 2, "bicubic": 2, "nearest > jpeg(30,60)": 2, CHAIN_X4: 4}
DEVICE_MODULE = "edsr_jax.degradation.device"


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


def cpu_seconds() -> float | None:
    """CPU time (user + system) of this process, its threads and its live child processes
    (Grain workers); None without psutil when there are children to count."""
    t = os.times()
    own = t.user + t.system
    try:
        import psutil  # noqa: PLC0415 - optional
    except ImportError:
        return own
    for child in psutil.Process().children(recursive=True):
        try:
            c = child.cpu_times()
            own += c.user + c.system
        except psutil.Error:
            pass
    return own


def measure(ds, workers: int, seconds: float) -> tuple[float, float | None]:
    """Steady-state ``(patches/s, patches per CPU-second)`` of an iterable of batches, after
    a warm-up that starts the workers and touches the images."""
    it = iter(ds)
    try:
        for _ in range(max(3, 2 * workers + 2)):
            next(it)
        n, c0, t0 = 0, cpu_seconds(), time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            n += next(it)["hr"].shape[0]
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        return n / wall, (n / cpu if cpu > 0 else None)
    finally:
        if hasattr(it, "close"):
            it.close()


FLIPS_ON_DEVICE = ", flips on device"  # loader-name suffix: augment="device"


def host_dataset(loader: str, src, args, workers: int, block: int):
    kw = dict(patch_size=args.hr_patch // src.scale, batch_size=args.batch, seed=0,
              num_workers=workers, process_index=0, process_count=1)
    if loader == "per-patch":
        return sources.make_train_dataset(src, **kw)
    augment = "device" if loader.endswith(FLIPS_ON_DEVICE) else True
    make = blocks.make_hr_dataset if loader.startswith("hr-only") else blocks.make_block_dataset
    return make(src, block=block, augment=augment, **kw)


def host_rows(args, paths, tmp: Path, workers: list[int], block_sizes: list[int]) -> list[dict]:
    """Per-patch and block loaders for every spec (and the HR-only loader), alternating."""
    made = {}
    for spec, scale in SPECS.items():
        if args.only and args.only not in spec:
            continue
        if spec == PAIRS:
            made[spec] = sources.PairedFolderSource(prepare_pairs(paths, tmp / "pairs", scale), scale,
                                                    progress=False)
        else:
            made[spec] = sources.HROnlySource(paths, scale, spec=spec, progress=False)
    if not args.only or args.only in HR_CROPS:
        made[HR_CROPS] = sources.HROnlySource(paths, 2, progress=False)
    configs = []  # (spec, where, loader, block)
    for spec in made:
        if spec == HR_CROPS:
            configs += [(spec, "device", f"hr-only block{f}", b) for f in ("", FLIPS_ON_DEVICE)
                        for b in block_sizes]
        else:
            configs += [(spec, "host", "per-patch", None)] + [(spec, "host", "block", b) for b in block_sizes]
            if spec == PAIRS:
                configs += [(spec, "host", f"block{FLIPS_ON_DEVICE}", b) for b in block_sizes]
    rates: dict[tuple, list] = {}
    for r in range(args.rounds):
        for spec, where, loader, b in configs:
            for w in workers:
                src = made[spec]
                rate, per_cpu = measure(host_dataset(loader, src, args, w, b or 1), w, args.seconds)
                rates.setdefault((spec, where, loader, b, w), []).append((rate, per_cpu))
                print(f"  round {r + 1}: {spec}, {loader}{f' {b}' if b else ''}, {w} workers: "
                      f"{rate:.0f} patches/s", file=sys.stderr, flush=True)
    rows = []
    for (spec, where, loader, b, w), got in rates.items():
        rate = max(x[0] for x in got)
        cpu = [x[1] for x in got if x[1] is not None]
        rows.append({"spec": spec, "where": where, "loader": loader, "block": b, "workers": w,
                     "scale": made[spec].scale, "hr_patch": args.hr_patch, "batch": args.batch,
                     "patches_per_s": round(rate, 1),
                     "patches_per_s_per_core": round(rate / max(w, 1), 1),
                     "patches_per_cpu_s": round(max(cpu), 1) if cpu else None,
                     "rounds": [round(x[0], 1) for x in got]})
    for row in rows:  # block against per-patch, same spec and workers
        base = next((o for o in rows if o["spec"] == row["spec"] and o["loader"] == "per-patch"
                     and o["workers"] == row["workers"]), None)
        row["vs_per_patch"] = (round(row["patches_per_s"] / base["patches_per_s"], 2)
                               if base and row["loader"].startswith("block") else None)
    return rows


def _rate(run, args) -> float:
    """Batches of ``args.batch`` patches per second of ``run()`` (a jitted call), after one
    warm-up call; the best of ``args.rounds`` windows of ``args.seconds``."""
    run().block_until_ready()
    best = 0.0
    for _ in range(args.rounds):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            run().block_until_ready()
            n += args.batch
        best = max(best, n / (time.perf_counter() - t0))
    return best


def device_rows(args, loader_rows: list[dict]) -> tuple[list[dict], str | None]:
    """``degrade_batch`` jitted on JAX's default device for every LR-making spec, beside the
    HR-only loader's rate; ``([], note)`` when the device module is missing."""
    try:
        device = importlib.import_module(DEVICE_MODULE)
    except ImportError as e:
        return [], f"{DEVICE_MODULE} not importable ({e}); device degradation rows skipped"
    import jax  # noqa: PLC0415 - only for the device rows

    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_compilation_cache_dir", str(ROOT / ".cache" / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    specs = [(s, k) for s, k in SPECS.items() if s != PAIRS and (not args.only or args.only in s)]
    rng = np.random.default_rng(0)
    hr = jax.device_put(rng.integers(0, 256, (args.batch, args.hr_patch, args.hr_patch, 3), dtype=np.uint8))
    keys = jax.random.split(jax.random.key(0), args.batch)
    fn = jax.jit(device.degrade_batch, static_argnames=("spec", "scale"))

    def compile_one(spec_scale):
        t0 = time.perf_counter()
        compiled = fn.lower(spec_scale[0], hr, keys, scale=spec_scale[1]).compile()
        return compiled, time.perf_counter() - t0

    import concurrent.futures  # noqa: PLC0415

    with concurrent.futures.ThreadPoolExecutor(max(1, len(specs))) as pool:  # compile in parallel
        compiled = list(pool.map(compile_one, specs))
    hr_loader = [r for r in loader_rows if r["spec"] == HR_CROPS and r["loader"] == "hr-only block"]
    platform = jax.devices()[0].platform
    rows = []
    flips = [r for r in loader_rows if r["spec"] == HR_CROPS and r["loader"].endswith(FLIPS_ON_DEVICE)]
    if flips:  # the flips and turns moved off the host, timed where they run instead
        from edsr_jax.data import device_symmetry  # noqa: PLC0415

        turn = jax.jit(device_symmetry.apply_symmetries)
        ks = jax.device_put(np.arange(args.batch, dtype=np.int32) % 8)
        rate = _rate(lambda: turn(hr, ks), args)
        for lr in flips:
            rows.append({"spec": "flips and turns", "where": "device", "loader": lr["loader"],
                         "block": lr["block"], "workers": lr["workers"], "scale": lr["scale"],
                         "hr_patch": args.hr_patch, "batch": args.batch, "patches_per_s": lr["patches_per_s"],
                         "patches_per_s_per_core": lr["patches_per_s_per_core"],
                         "patches_per_cpu_s": lr["patches_per_cpu_s"], "degrade_patches_per_s": round(rate, 1),
                         "degrade_platform": platform, "compile_s": None,
                         "host_and_degrade_patches_per_s": None})
    for (spec, scale), (prog, compile_s) in zip(specs, compiled):
        best = _rate(lambda: prog(hr, keys), args)
        for lr in hr_loader or [None]:
            loader = lr["patches_per_s_per_core"] if lr else None
            rows.append({
                "spec": spec, "where": "device", "loader": "hr-only block", "block": lr and lr["block"],
                "workers": lr["workers"] if lr else 0, "scale": scale, "hr_patch": args.hr_patch,
                "batch": args.batch, "patches_per_s": lr and lr["patches_per_s"],
                "patches_per_s_per_core": loader, "patches_per_cpu_s": lr and lr["patches_per_cpu_s"],
                "degrade_patches_per_s": round(best, 1), "degrade_platform": platform,
                "compile_s": round(compile_s, 1),
                # on a CPU the loader and the degradation share the cores: one after the other
                "host_and_degrade_patches_per_s": (round(1 / (1 / loader + 1 / best), 1)
                                                   if loader and platform == "cpu" else None)})
    return rows, None


def fmt(v, spec=".0f") -> str:
    return "" if v is None else format(v, spec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of HR images")
    ap.add_argument("--images", type=int, default=None, help="use only the first N images")
    ap.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    ap.add_argument("--batch", type=int, default=64, help="batch size (patches)")
    ap.add_argument("--block", default=str(blocks.DEFAULT_BLOCK),
                    help="patches per image and record of the block loaders (comma-separated to compare)")
    ap.add_argument("--hr-patch", type=int, default=96, help="HR patch side in pixels")
    ap.add_argument("--seconds", type=float, default=5.0, help="timing window per configuration")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best is kept")
    ap.add_argument("--only", default=None, help="run only specs whose name contains this")
    ap.add_argument("--no-device", action="store_true", help="skip the degrade_batch rows")
    ap.add_argument("--quick", action="store_true",
                    help="8 images, 0 workers, 1 s per configuration, 1 round (overrides those options)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.workers, args.seconds, args.rounds = 8, "0", 1.0, 1
    workers = [int(w) for w in args.workers.split(",")]
    block_sizes = [int(b) for b in args.block.split(",")]
    start = time.perf_counter()
    saved_cache = os.environ.get("EDSR_JAX_CACHE")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        tmp = Path(tmp)
        warnings.simplefilter("ignore")  # e.g. images smaller than a patch, skipped
        os.environ["EDSR_JAX_CACHE"] = str(tmp / "cache")
        try:
            paths = hr_images(args, tmp)
            rows = host_rows(args, paths, tmp, workers, block_sizes)
        finally:
            if saved_cache is None:
                del os.environ["EDSR_JAX_CACHE"]
            else:
                os.environ["EDSR_JAX_CACHE"] = saved_cache
    note = "skipped (--no-device)" if args.no_device else None
    dev = []
    if not args.no_device:
        dev, note = device_rows(args, rows)
    where = args.data if args.data.is_dir() else "generated 2048x1080"
    print(f"\n{len(paths)} images from {where}; HR patch {args.hr_patch}, batch {args.batch}, "
          f"{os.cpu_count()} CPU cores; best of {args.rounds} alternating round(s) of {args.seconds:g} s; "
          f"{time.perf_counter() - start:.0f} s in all\n")
    print("| where | source | loader | workers | patches/s | per worker core | per CPU-second | block / per-patch |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        name = r["spec"] + ("" if r["spec"] in (PAIRS, HR_CROPS) else f" x{r['scale']}")
        loader = r["loader"].replace("block", f"block {r['block']}", 1) if r["block"] else r["loader"]
        print(f"| {r['where']} | {name} | {loader} | {r['workers']} | {fmt(r['patches_per_s'])} | "
              f"{fmt(r['patches_per_s_per_core'])} | {fmt(r['patches_per_cpu_s'])} | "
              f"{fmt(r['vs_per_patch'], '.2f')} |")
    if dev:
        print(f"\ndegrade_batch on {dev[0]['degrade_platform']} (jitted, batch {args.batch}) beside the "
              "HR-only loader:\n")
        print("| spec | loader workers | HR crops/s per core | degrade_batch patches/s | compile s | "
              "both on this CPU, patches/s |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for r in dev:
            print(f"| {r['spec']} x{r['scale']} | {r['workers']} | {fmt(r['patches_per_s_per_core'])} | "
                  f"{fmt(r['degrade_patches_per_s'])} | {fmt(r['compile_s'], '.1f')} | "
                  f"{fmt(r['host_and_degrade_patches_per_s'])} |")
    if note:
        print(f"\ndevice rows: {note}")
    if args.json:
        args.json.write_text(json.dumps(rows + dev, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
