"""The train step on this GPU: kernels per step and step time measured, beside the dry-run's
estimates of the same compiled program, in one table.

    python benchmarks/gpu_step.py                          # needs an NVIDIA GPU (jax[cuda12])
    python benchmarks/gpu_step.py --cases edsr_baseline:bfloat16:64 --steps 50

Per case (model preset, dtype, per-device batch; one device, x2, 48-px LR patches): the
project's train step as the trainer runs it on this platform (``train_step.JaxSide``:
``compile_train_step``, ``xla_options.step_formulation``, the state in the trainer's form).
Columns:

- kernels compiled: what the optimised program launches (``hlo_stats.program_stats`` of its
  text), the dry-run's count;
- kernels traced: GPU kernels per step in a profiler trace of ``--trace-steps`` steps
  (``jax.profiler.trace``'s Perfetto file: events on the ``Stream`` lines of a ``/device:GPU``
  process, memcpy and memset left out); "-" where the trace holds no such line;
- measured ms: median wall time per step over ``--rounds`` rounds of ``--steps`` steps;
- est ms: the dry-run's roofline (``hlo_stats.roofline_seconds``, 2 us per launch, and without
  launch cost) of the same program, for the ``hlo_stats.DEVICES`` entry named in the GPU's
  device kind (H100, H200; "-" for another GPU);
- MFU measured and estimated, against that entry's dense peak.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import hlo_stats  # noqa: E402
from model_flops import train_flops  # noqa: E402

PATCH, SCALE = 48, 2
DEFAULT_CASES = ["edsr_baseline:bfloat16:64", "edsr_baseline:bfloat16:16", "edsr_baseline:float32:64",
                 "edsr:bfloat16:16"]


def parse_case(text: str) -> tuple[str, str, int]:
    """``"PRESET:DTYPE:BATCH"`` -> (preset, dtype, batch); ``SystemExit`` with one ``error:`` line
    naming the value when it is not one."""
    parts = text.split(":")
    if (len(parts) != 3 or parts[0] not in ("edsr_baseline", "edsr")
            or parts[1] not in ("bfloat16", "float32") or not parts[2].isdigit() or int(parts[2]) < 1):
        raise SystemExit(f"error: --cases {text!r}: expected PRESET:DTYPE:BATCH with PRESET edsr_baseline "
                         "or edsr, DTYPE bfloat16 or float32, BATCH a positive integer "
                         "(e.g. edsr_baseline:bfloat16:64)")
    return parts[0], parts[1], int(parts[2])


def device_target(kind: str) -> str | None:
    """The ``hlo_stats.DEVICES`` entry named in a device kind ("NVIDIA H100 80GB HBM3" -> "h100"),
    or None."""
    return next((t for t in ("h200", "h100") if t in kind.lower()), None)


def traced_kernels(events: list[dict]) -> int | None:
    """GPU kernels in a Perfetto/Chrome trace's events: complete events ("ph" "X") on threads
    named ``Stream...`` of processes named ``/device:GPU...``, memcpy and memset left out; None
    when the trace has no such thread (nothing to count)."""
    gpus = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
            and str(e.get("args", {}).get("name", "")).startswith("/device:GPU")}
    streams = {(e["pid"], e.get("tid")) for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"
               and e.get("pid") in gpus and str(e.get("args", {}).get("name", "")).startswith("Stream")}
    if not streams:
        return None
    return sum(1 for e in events if e.get("ph") == "X" and (e.get("pid"), e.get("tid")) in streams
               and not str(e.get("name", "")).lower().startswith(("memcpy", "memset")))


def trace_kernels_per_step(side, steps: int) -> float | None:
    """Kernels per step of ``side`` (a ``train_step.JaxSide``) in a profiler trace of ``steps``
    steps (``traced_kernels``), or None."""
    import jax

    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            side.run(steps)
        found = glob.glob(f"{tmp}/**/perfetto_trace.json.gz", recursive=True)
        if not found:
            return None
        with gzip.open(found[0], "rt") as f:
            data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    count = traced_kernels(events)
    return None if count is None else count / steps


def run_case(preset: str, dtype: str, batch: int, rounds: int, steps: int, trace_steps: int) -> dict:
    """One row: compile the trainer's step, read its program, time it, trace it."""
    import jax

    from edsr_jax.nets.edsr import preset as model_preset
    from train_step import JaxSide, make_batch

    config = model_preset(preset, SCALE)
    side = JaxSide(config, dtype, make_batch(batch, PATCH, SCALE))
    stats = hlo_stats.program_stats(side.step.lower(side.state, side.batch).compile().as_text())
    side.run(3)  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        side.run(steps)
        times.append((time.perf_counter() - start) / steps)
    row = {"preset": preset, "dtype": dtype, "batch": batch, "kernels": len(stats.kernels),
           "traced": trace_kernels_per_step(side, trace_steps), "measured_s": statistics.median(times),
           "first_step_s": side.first_step_s}
    flops = batch * train_flops(config.num_blocks, config.num_features, SCALE, PATCH)
    target = device_target(jax.devices()[0].device_kind)
    if target:
        device = hlo_stats.DEVICES[target]
        peak = device.matrix_tflops["bf16" if dtype == "bfloat16" else "f32"] * 1e12
        row.update(target=target, est_s=hlo_stats.roofline_seconds(stats, device),
                   est_no_launch_s=hlo_stats.roofline_seconds(stats, device, launch_us=0.0))
        row.update(mfu=flops / row["measured_s"] / peak, est_mfu=flops / row["est_s"] / peak)
    return row


def table(rows: list[dict]) -> str:
    """Markdown table of ``run_case`` rows."""
    head = ("| model | dtype | batch | kernels compiled | kernels traced | measured ms | est ms "
            "(no launch cost) | measured / est | MFU measured | MFU est |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        est = "est_s" in r
        traced = "-" if r["traced"] is None else f"{r['traced']:.0f}"
        lines.append(
            f"| {r['preset']} x{SCALE} | {r['dtype']} | {r['batch']} | {r['kernels']} | "
            f"{traced} | {1e3 * r['measured_s']:.2f} | "
            + (f"{1e3 * r['est_s']:.2f} ({1e3 * r['est_no_launch_s']:.2f}) | "
               f"{r['measured_s'] / r['est_s']:.2f} | {100 * r['mfu']:.0f} % | {100 * r['est_mfu']:.0f} % |"
               if est else "- | - | - | - |"))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=DEFAULT_CASES, metavar="PRESET:DTYPE:BATCH",
                   help=f"train steps to run (default: {' '.join(DEFAULT_CASES)})")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (the median is reported)")
    p.add_argument("--steps", type=int, default=20, help="steps per timed round")
    p.add_argument("--trace-steps", type=int, default=5, help="steps in the profiler trace")
    args = p.parse_args(argv)
    cases = [parse_case(c) for c in args.cases]
    for name in ("rounds", "steps", "trace_steps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    import jax

    if jax.default_backend() != "gpu":
        print(f"error: benchmarks/gpu_step.py needs an NVIDIA GPU; JAX's backend here is "
              f"{jax.default_backend()} (install with pip install -e '.[cuda]' on a GPU machine; "
              "without one, benchmarks/accelerators.py gives the compile-only estimates)", file=sys.stderr)
        return 2
    rows = []
    for preset, dtype, batch in cases:
        try:
            rows.append(run_case(preset, dtype, batch, args.rounds, args.steps, args.trace_steps))
        except Exception as e:  # e.g. out of device memory: note it, go on
            print(f"{preset} {dtype} batch {batch}: failed: {str(e).splitlines()[0][:200]}", file=sys.stderr)
    device = jax.devices()[0]
    print(f"Train step on {device.device_kind} (jax {jax.__version__}), one device, x{SCALE}, "
          f"{PATCH}-px LR patches; median of {args.rounds} rounds of {args.steps} steps; kernels traced "
          f"over {args.trace_steps} steps.\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
