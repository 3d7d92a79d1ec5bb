"""Run every benchmark and rewrite BENCHMARKS.md with their tables.

    python benchmarks/run_all.py                 # quick options: under ~10 minutes on 2 CPU cores
    python benchmarks/run_all.py --full          # each benchmark's own defaults (much longer)
    python benchmarks/run_all.py --only train_step --out /tmp/B.md
    python benchmarks/run_all.py --device gpu    # on a machine with an NVIDIA GPU, ~8 minutes

The file gets the command, the machine (CPU model, cores, JAX device), the date and each
benchmark's stdout (its tables). Sections between markers ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->`` are kept as they are: the hand-written ``tried`` section, the GPU/TPU
``dryrun`` tables (``benchmarks/accelerators.py``), and the ``gpu`` section, which
``--device gpu`` rewrites alone: the trainer's step with its kernels per step (compiled and
traced) and step time beside the dry-run's estimates (``benchmarks/gpu_step.py``), the
GPU-marked tests, the train step against PyTorch CUDA at
per-device batch 16 / 64 / 256 in bfloat16 and float32 (with the real loader beside synthetic
batches, and the dry-run's roofline estimate beside the measurement).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEPT = ("tried", "dryrun", "gpu")  # marked sections a CPU run keeps as they are

# The train step is timed four ways, alternating: the project; its step with XLA's convolutions
# instead of oneDNN's (edsr_jax/nets/onednn_conv.py); with XLA's convolutions and XLA's default
# options (what a plain Flax EDSR gets); and PyTorch.
SIDES = ["--frameworks", "jax", "jax-xla-conv", "jax-xla-default", "torch"]
# name -> (script, quick arguments, full arguments); the EDSR train step gets its own short run.
BENCHMARKS = {
    "loader": ("loader.py", ["--quick"], []),
    "degrade_on": ("degrade_on.py", ["--quick"], []),
    "inference": ("inference.py", ["--scales", "2", "--sizes", "1920x1080", "--tiles", "1"], []),
    "video": ("video.py", ["--frames", "2"], []),
    "train_step": ("train_step.py", ["--quick", "--models", "edsr_baseline", *SIDES],
                   ["--models", "edsr_baseline", *SIDES]),
    "train_step_edsr": ("train_step.py", ["--models", "edsr", "--batch", "2", "--rounds", "2",
                                          "--steps", "1", "--warmup", "1", *SIDES],
                        ["--models", "edsr", *SIDES]),
}
GPU_BUDGET_S = 480
GPU_STEP = ["--device", "gpu", "--dtype", "bfloat16", "float32", "--quick"]
GPU_BENCHMARKS = {
    "gpu_step": ("gpu_step.py", [], []),
    "gpu_tests": ("-m pytest", ["-q", "-m", "gpu", "tests/test_gpu.py"], []),
    "train_step_gpu": ("train_step.py", [*GPU_STEP, "--models", "edsr_baseline", "--batch", "16", "64",
                                         "256", "--frameworks", "jax", "jax-loader", "torch"], []),
    "train_step_gpu_edsr": ("train_step.py", [*GPU_STEP, "--models", "edsr", "--batch", "16", "64",
                                              "--frameworks", "jax", "torch"], []),
}
TITLES = {"gpu_step": "Kernels per train step and step time, measured beside the dry-run's estimates "
                      "(benchmarks/gpu_step.py)",
          "gpu_tests": "GPU tests (tests/test_gpu.py)",
          "train_step_gpu": "Train step on the GPU, EDSR-baseline (benchmarks/train_step.py)",
          "train_step_gpu_edsr": "Train step on the GPU, EDSR (benchmarks/train_step.py)",
          "loader": "Input pipeline (benchmarks/loader.py)",
          "degrade_on": "Where the trainer makes its damage on this CPU (benchmarks/degrade_on.py)",
          "inference": "Inference (benchmarks/inference.py)",
          "video": "Video (benchmarks/video.py)",
          "train_step": "Train step, EDSR-baseline (benchmarks/train_step.py)",
          "train_step_edsr": "Train step, EDSR (benchmarks/train_step.py)"}


def machine(device: str = "cpu") -> str:
    """One line: CPU model, logical cores, JAX's default device."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    probe = subprocess.run([sys.executable, "-c", "import jax; d = jax.devices()[0]; "
                            "print(f'{d.platform} ({d.device_kind}), jax {jax.__version__}')"],
                           capture_output=True, text=True, env=_env(device))
    device = probe.stdout.strip() or "unknown"
    return f"{model}, {os.cpu_count()} logical cores; JAX device: {device}"


def _env(device: str = "cpu") -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if device == "cpu":
        env.setdefault("JAX_PLATFORMS", "cpu")
    else:  # the same program compiled by two sides (e.g. jax and jax-loader) compiles once
        env.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".cache" / "jax"))
    return env


def run(name: str, full: bool, timeout: float, device: str = "cpu") -> tuple[str, list[str], float]:
    """Run one benchmark; returns (stdout or an error note, its command, seconds)."""
    script, quick, full_args = {**BENCHMARKS, **GPU_BENCHMARKS}[name]
    args = full_args if full else quick
    program = script.split() if script.startswith("-m") else [str(ROOT / "benchmarks" / script)]
    cmd = [sys.executable, *program, *args]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(device), timeout=timeout,
                              cwd=ROOT)
        out = proc.stdout.strip()
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            out += f"\n\n(failed with exit code {proc.returncode}:\n```\n{tail}\n```)"
    except subprocess.TimeoutExpired:
        out = f"(timed out after {timeout:.0f} s)"
    shown = ["python", *(script.split() if script.startswith("-m") else [f"benchmarks/{script}"]), *args]
    return out, shown, time.perf_counter() - start


def kept_section(path: Path, name: str) -> str:
    """The block between ``<!-- name:begin -->`` and ``<!-- name:end -->`` of an existing file
    (markers included); an empty marked block when there is none."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if path.is_file():
        text = path.read_text()
        if begin in text and end in text:
            return text[text.index(begin): text.index(end) + len(end)]
    return f"{begin}\n{end}"


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with its marked block ``name`` replaced by ``body`` (appended when absent)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        return text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def render(results: dict, command: str, kept: list[str], device: str = "cpu") -> str:
    """The whole BENCHMARKS.md (CPU), or the body of its ``gpu`` section."""
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    head = "## Measured on a GPU" if device == "gpu" else "# Benchmarks"
    parts = [head, "",
             f"Generated by `{command}` on {now}.", "",
             f"Machine: {machine(device)}.", "",
             "Numbers on a machine shared with other work are noisy; the ratios from runs that "
             "alternate the two frameworks in one process are the figures to trust.", ""]
    level = "###" if device == "gpu" else "##"
    for name, (out, shown, seconds) in results.items():
        parts += [f"{level} {TITLES[name]}", "", f"`{' '.join(shlex.quote(a) for a in shown)}` "
                  f"({seconds:.0f} s)", "", out, ""]
    parts += [block + "\n" for block in kept]
    return "\n".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--only", nargs="+", choices=sorted({**BENCHMARKS, **GPU_BENCHMARKS}), default=None,
                   help="run only these benchmarks (default: all)")
    p.add_argument("--full", action="store_true", help="each benchmark's default, longer, options")
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md", help="file to rewrite")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed per benchmark")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"),
                   help="gpu: the GPU tests and benchmarks, written into BENCHMARKS.md's gpu section")
    args = p.parse_args(argv)
    if args.device == "gpu":
        probe = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                               capture_output=True, text=True, env=_env("gpu"))
        if probe.stdout.strip() != "gpu":
            print(f"error: --device gpu, but JAX's backend here is {probe.stdout.strip() or 'unknown'} "
                  "(install with pip install -e '.[cuda]' on a machine with an NVIDIA GPU)",
                  file=sys.stderr)
            return 2
    table = GPU_BENCHMARKS if args.device == "gpu" else BENCHMARKS
    names = [n for n in (args.only or list(table)) if n in table]
    given = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python benchmarks/run_all.py", *given])
    results = {}
    deadline = time.monotonic() + GPU_BUDGET_S  # --device gpu: all of it within 8 minutes
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        timeout = args.timeout if args.device == "cpu" else max(30.0, deadline - time.monotonic())
        results[name] = run(name, args.full, timeout, args.device)
        print(results[name][0], file=sys.stderr, flush=True)
    if args.device == "gpu":
        old = args.out.read_text() if args.out.is_file() else "# Benchmarks\n"
        args.out.write_text(replace_section(old, "gpu", render(results, command, [], "gpu")))
    else:
        args.out.write_text(render(results, command, [kept_section(args.out, k) for k in KEPT]))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
