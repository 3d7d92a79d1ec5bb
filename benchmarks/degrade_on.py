"""Where to make the damage on this machine: the trainer's steps per second with the LR made on
the host (``data.degrade_on="host"``: the block loader degrades each patch) against the device
(``"device"``: HR crops in, ``degrade_batch`` inside the jitted step), side by side in one run.

Each side is the real trainer set up by ``training.run.Run`` (loader, feed thread, compiled
step) on the built-in photographs, timed over ``--steps`` steps after a warm-up, sides
alternating for ``--rounds`` rounds (best round kept: the least disturbed on a shared
machine). The ratio ``device / host`` above 1 means the device path trains faster here; it is
what ``training.datasets.DEGRADE_ON_AUTO`` records for the CPU::

    python benchmarks/degrade_on.py --quick          # ~3 minutes on 2 cores
    python benchmarks/degrade_on.py --model edsr_baseline --batch 16 --patch 48
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

SPECS = ("bicubic", "nearest > jpeg(30,60)", "blur(0.2,1.5) > bicubic(4) > noise(0,8) > jpeg(30,90)")
MODELS = {"quickstart": (4, 32), "edsr_baseline": (16, 64), "tiny": (2, 8)}


def make_run(spec: str, where: str, workdir: Path, stack, *, blocks: int, features: int, batch: int,
             patch: int, workers: int):
    """A trainer ``Run`` (``training.run``) for ``spec`` with the damage made ``where``."""
    from edsr_jax.degradation import degrade
    from edsr_jax.inference.infer import Upscaler
    from edsr_jax.training import config as config_lib
    from edsr_jax.training.run import Run

    scale = next(s for s in (2, 3, 4) if _fits(spec, s))  # an open factor: x2
    c = config_lib.base_config()
    c.model.scale, c.model.num_blocks, c.model.num_features = scale, blocks, features
    c.data.spec, c.data.degrade_on, c.data.num_workers = spec, where, workers
    c.data.patch_size, c.data.batch_size, c.data.patches_per_image = patch, batch, 64
    c.data.val_max_images = 1
    c.train.steps, c.train.log_every = 10**6, 10**6
    return Run(c, workdir, stack, Upscaler)


def _fits(spec: str, scale: int) -> bool:
    from edsr_jax.degradation import degrade

    try:
        degrade.parse(spec, scale=scale)
    except degrade.SpecError:
        return False
    return True


def time_run(run, state, steps: int) -> tuple[float, object]:
    """Seconds for ``steps`` trainer steps (feed and step, as ``training.run.loop`` runs them)."""
    import jax

    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = run.train_step(state, next(run.feed))
    jax.block_until_ready(metrics["loss"])
    return time.perf_counter() - start, state


def measure(spec: str, args) -> dict:
    """``{"host": steps/s, "device": steps/s}`` for ``spec`` (best of the alternating rounds)."""
    best = {"host": 0.0, "device": 0.0}
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp, \
            contextlib.redirect_stderr(io.StringIO()):  # the runs' own progress bars and lines
        runs, states = {}, {}
        for where in best:
            runs[where] = make_run(spec, where, Path(tmp) / where, stack, blocks=args.blocks,
                                   features=args.features, batch=args.batch, patch=args.patch,
                                   workers=args.workers)
            states[where] = runs[where].restore_or_init()
            _, states[where] = time_run(runs[where], states[where], args.warmup)  # compile, fill the feed
        for _ in range(args.rounds):
            for where in best:
                seconds, states[where] = time_run(runs[where], states[where], args.steps)
                best[where] = max(best[where], args.steps / seconds)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--specs", nargs="+", default=list(SPECS))
    p.add_argument("--model", choices=sorted(MODELS), default="quickstart")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=32, help="LR patch side")
    p.add_argument("--workers", type=int, default=0, help="Grain worker processes of the host loader")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="--steps 8 --rounds 2")
    p.add_argument("--json", help="also write the rows as JSON to this file")
    args = p.parse_args(argv)
    args.blocks, args.features = MODELS[args.model]
    if args.quick:
        args.steps, args.rounds = 8, 2
    rows = []
    print(f"model {args.model} ({args.blocks} blocks, {args.features} features), batch {args.batch}, "
          f"LR patch {args.patch}, {args.workers} loader workers; steps/s, best of {args.rounds} rounds")
    print("\n| spec | host steps/s | device steps/s | device / host |\n| --- | --- | --- | --- |")
    for spec in args.specs:
        got = measure(spec, args)
        row = {"spec": spec, "host_steps_per_s": got["host"], "device_steps_per_s": got["device"],
               "ratio": got["device"] / got["host"]}
        rows.append(row)
        print(f"| {spec} | {got['host']:.2f} | {got['device']:.2f} | {row['ratio']:.2f}x |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
