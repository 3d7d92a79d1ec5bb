"""Training-step speed: the project's jitted ``train_step`` beside the same EDSR in PyTorch.

    python benchmarks/train_step.py                       # EDSR-baseline x2 and EDSR x2, float32
    python benchmarks/train_step.py --quick --models edsr_baseline
    python benchmarks/train_step.py --device gpu --dtype bfloat16 float32 --batch 16 64 256 \\
        --peak-tflops 989                                 # on an NVIDIA GPU (H100 dense bf16 peak)

Both sides take the same work: uint8 LR/HR patches in, float32 [0, 255] network, L1 loss,
Adam (lr 1e-4, betas 0.9/0.999, eps 1e-8). JAX runs ``edsr_jax.training.step.compile_train_step``
(the trainer's own step: state donated, non-finite guard; convolutions chosen as the trainer's
``train.conv_backend`` auto does: oneDNN on one CPU device in float32, else XLA); PyTorch runs ``tests/torch_edsr.py``
with ``torch.optim.Adam`` and ``nn.L1Loss``. After a warm-up the two alternate in rounds of a
few steps each, in one process, and the median round gives patches/s; alternating keeps the
ratio honest on a machine shared with other work.

Achieved GFLOP/s count the architecture's convolutions only: 2 x MACs of every conv in the
forward pass, times 3 for forward + backward (the mean shifts, ReLUs and Adam are left out).
The fraction is taken against a float32 (or the run's dtype) 2048 x 2048 matmul rate measured
in the same run (the best of NumPy and jitted JAX), or against ``--peak-tflops`` when given.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from model_flops import train_flops  # noqa: E402

ADAM = {"lr": 1e-4, "b1": 0.9, "b2": 0.999, "eps": 1e-8}
CPU_BATCH = {"edsr_baseline": 16, "edsr": 2}
GPU_BATCH = [16, 64, 256]


def matmul_gflops(dtype: str, device: str, n: int = 2048, reps: int = 5) -> float:
    """Best measured ``n x n`` matmul rate (GFLOP/s) of NumPy (CPU, float32) and jitted JAX."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    best = 0.0
    if device == "cpu" and dtype == "float32":
        a = np.random.default_rng(0).standard_normal((n, n), np.float32)
        a @ a
        for _ in range(reps):
            t = time.perf_counter()
            a @ a
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
    x = jnp.ones((n, n), getattr(jnp, dtype))
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    for _ in range(reps):
        t = time.perf_counter()
        f(x).block_until_ready()
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
    return best


def make_batch(batch: int, patch: int, scale: int, seed: int = 0) -> dict:
    """Random uint8 patches ``{"lr": (B,p,p,3), "hr": (B,p*s,p*s,3)}``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {"lr": rng.integers(0, 256, (batch, patch, patch, 3), dtype=np.uint8),
            "hr": rng.integers(0, 256, (batch, patch * scale, patch * scale, 3), dtype=np.uint8)}


# The project's step built another way: side name -> (column label, compiler options (None:
# the project's, edsr_jax.nets.xla_options), convolution backend ("auto": the trainer's choice)).
JAX_VARIANTS = {
    "jax-xla-conv": ("XLA convolutions", None, "xla"),
    "jax-no-ynnpack": ("no YNNPACK", {"xla_cpu_experimental_ynn_fusion_type": ""}, "auto"),
    "jax-xla-default": ("XLA defaults", {}, "xla"),
}


class JaxSide:
    """The trainer's jitted step on a one-device mesh; ``run(n)`` does n steps and waits."""

    def __init__(self, model_config, dtype: str, batch: dict, compiler_options=None,
                 conv_backend: str = "auto"):
        import jax

        from edsr_jax.training import config as config_lib
        from edsr_jax.training.optim import make_optimizer
        from edsr_jax.training.state import create_train_state
        from edsr_jax.training.step import compile_train_step
        from edsr_jax.nets import onednn_conv, xla_options
        from edsr_jax.nets.edsr import DTYPES

        config = config_lib.base_config()
        config.optim.lr = ADAM["lr"]
        config.data.batch_size = int(batch["lr"].shape[0])  # picks the compiler options
        self.conv_backend = onednn_conv.choose_backend(  # as the trainer chooses
            conv_backend, jax.devices()[0].platform, 1, DTYPES[dtype])
        model = model_config.build(dtype=DTYPES[dtype], conv_backend=self.conv_backend)
        tx, _ = make_optimizer(config.optim)
        mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                             devices=jax.devices()[:1])
        # the state in the form the trainer keeps it on this platform (StepFormulation.flat_state)
        form = xla_options.step_formulation(jax.devices()[0].platform)
        init = lambda key: create_train_state(model, tx, key, use_ema=False, flat=form.flat_state,  # noqa: E731
                                              kernel_order=form.kernel_order)
        shape = jax.eval_shape(init, jax.random.key(0))
        self.step = compile_train_step(model, tx, config, mesh, shape, compiler_options)
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        self.state = jax.jit(init, out_shardings=sharding)(jax.random.key(0))
        data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        self.batch = jax.device_put(batch, data)
        start = time.perf_counter()
        self.run(1)
        self.first_step_s = time.perf_counter() - start  # compile + one step

    def run(self, n: int) -> None:
        for _ in range(n):
            self.state, metrics = self.step(self.state, self.batch)
        metrics["loss"].block_until_ready()


class LoaderSide(JaxSide):
    """The same step fed as the trainer feeds it: the Grain pipeline (``data.make_train_dataset``
    over the built-in images, bicubic LR made on the fly, ``num_workers`` worker processes)
    through ``feed.DeviceFeed``, instead of one synthetic batch already on the device."""

    def __init__(self, model_config, dtype: str, batch: dict, num_workers: int = 2):
        import jax

        from edsr_jax.data import samples
        from edsr_jax.data import sources as data
        from edsr_jax.data.feed import DeviceFeed

        n, patch = batch["lr"].shape[:2]
        source = data.HROnlySource(samples.resolve("builtin", "train"), model_config.scale)
        dataset = data.make_train_dataset(source, patch_size=int(patch), batch_size=int(n), seed=0,
                                          patches_per_image=64, num_workers=num_workers)
        mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                             devices=jax.devices()[:1])  # as JaxSide's
        self.feed = DeviceFeed(iter(dataset), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
        super().__init__(model_config, dtype, batch)

    def run(self, n: int) -> None:
        for _ in range(n):
            self.state, metrics = self.step(self.state, next(self.feed))
        metrics["loss"].block_until_ready()


def roofline_patches_s(side: JaxSide, batch: int) -> float | None:
    """The dry-run's roofline estimate (``benchmarks/accelerators.py``) for the side's own
    compiled step on this GPU, in patches/s; None where the device has no entry there."""
    import jax

    import hlo_stats

    kind = jax.devices()[0].device_kind
    target = next((t for t in ("h200", "h100") if t.upper() in kind.upper()), None)
    if target is None:
        return None
    text = side.step.lower(side.state, side.batch).compile().as_text()
    seconds = hlo_stats.roofline_seconds(hlo_stats.program_stats(text), hlo_stats.DEVICES[target])
    return batch / seconds


class TorchSide:
    """The same network and optimiser in PyTorch (NCHW; autocast for bfloat16)."""

    def __init__(self, model_config, dtype: str, batch: dict, device: str):
        import torch
        from torch_edsr import EDSR, randomize

        self.torch = torch
        self.device = "cuda" if device == "gpu" else "cpu"
        if self.device == "cpu":
            torch.set_num_threads(os.cpu_count() or 1)
        else:
            torch.backends.cudnn.benchmark = True
        c = model_config
        self.model = randomize(EDSR(c.scale, c.num_blocks, c.num_features, c.res_scale)).to(self.device)
        self.opt = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad],
                                    lr=ADAM["lr"], betas=(ADAM["b1"], ADAM["b2"]), eps=ADAM["eps"])
        self.loss = torch.nn.L1Loss()
        to = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous().to(self.device)  # noqa: E731
        self.lr, self.hr = to(batch["lr"]), to(batch["hr"])
        self.autocast = dtype == "bfloat16"
        start = time.perf_counter()
        self.run(1)
        self.first_step_s = time.perf_counter() - start

    def run(self, n: int) -> None:
        torch = self.torch
        for _ in range(n):
            with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.autocast):
                loss = self.loss(self.model(self.lr.float()), self.hr.float())
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        loss.item()
        if self.device == "cuda":
            torch.cuda.synchronize()


def measure(sides: dict, batch: int, rounds: int, steps: int) -> dict:
    """Alternate the sides ``rounds`` times, ``steps`` steps each; median patches/s per side."""
    rates = {name: [] for name in sides}
    for _ in range(rounds):
        for name, side in sides.items():
            start = time.perf_counter()
            side.run(steps)
            rates[name].append(steps * batch / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def run_case(name: str, scale: int, batch: int, patch: int, dtype: str, device: str,
             frameworks: list[str], rounds: int, steps: int, warmup: int) -> dict:
    import gc

    from edsr_jax.nets.edsr import preset

    config = preset(name, scale)
    data = make_batch(batch, patch, scale)
    sides, first = {}, {}
    if "jax" in frameworks:
        sides["jax"] = JaxSide(config, dtype, data)
        first["jax"] = sides["jax"].first_step_s
    for side, (_, options, conv) in JAX_VARIANTS.items():  # the same step built another way
        if side in frameworks:
            sides[side] = JaxSide(config, dtype, data, compiler_options=options, conv_backend=conv)
            first[side] = sides[side].first_step_s
    if "jax-loader" in frameworks:
        sides["jax-loader"] = LoaderSide(config, dtype, data)
        first["jax-loader"] = sides["jax-loader"].first_step_s
    estimate = roofline_patches_s(sides["jax"], batch) if "jax" in sides and device == "gpu" else None
    if "torch" in frameworks:
        try:
            sides["torch"] = TorchSide(config, dtype, data, device)
            first["torch"] = sides["torch"].first_step_s
        except (ImportError, RuntimeError) as e:  # no torch, or no CUDA build of it
            print(f"torch skipped: {e}", file=sys.stderr)
    for side in sides.values():
        side.run(warmup)
    rates = measure(sides, batch, rounds, steps)
    for side in sides.values():
        if hasattr(side, "feed"):
            side.feed.close()
    del sides
    gc.collect()
    flops = train_flops(config.num_blocks, config.num_features, scale, patch)
    return {"model": name, "scale": scale, "batch": batch, "patch": patch, "dtype": dtype,
            "rates": rates, "first": first, "gflop_per_patch": flops / 1e9, "estimate": estimate}


def table(results: list[dict], reference_gflops: float, reference: str) -> str:
    """Markdown table of the cases."""
    head = ("| model | dtype | batch | patch | JAX patches/s | PyTorch patches/s | JAX / PyTorch "
            "| JAX GFLOP/s | PyTorch GFLOP/s | JAX / " + reference + " | PyTorch / " + reference
            + " | JAX first step s |")
    variants = [(side, label) for side, (label, _, _) in JAX_VARIANTS.items()
                if any(side in r["rates"] for r in results)]
    for _, label in variants:
        head += f" JAX, {label} patches/s | project step / {label} |"
    loader = any("jax-loader" in r["rates"] for r in results)
    estimated = any(r.get("estimate") for r in results)
    if loader:
        head += " JAX, real loader patches/s | real loader / synthetic |"
    if estimated:
        head += " roofline estimate patches/s | measured / estimate |"
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        j, t = r["rates"].get("jax"), r["rates"].get("torch")
        g = r["gflop_per_patch"]
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        rows.append("| " + " | ".join([
            f"{r['model']} x{r['scale']}", r["dtype"], str(r["batch"]), str(r["patch"]),
            fmt(j, ".2f"), fmt(t, ".2f"), fmt(j / t if j and t else None, ".2f"),
            fmt(j * g if j else None, ".0f"), fmt(t * g if t else None, ".0f"),
            fmt(j * g / reference_gflops if j else None, ".0%"),
            fmt(t * g / reference_gflops if t else None, ".0%"),
            fmt(r["first"].get("jax"), ".1f")]
            + [cell for side, _ in variants for d in [r["rates"].get(side)]
               for cell in (fmt(d, ".2f"), fmt(j / d if j and d else None, ".2f"))]
            + ([fmt(r["rates"].get("jax-loader"), ".2f"),
                fmt(r["rates"]["jax-loader"] / j if j and r["rates"].get("jax-loader") else None, ".2f")]
               if loader else [])
            + ([fmt(r.get("estimate"), ".0f"),
                fmt(j / r["estimate"] if j and r.get("estimate") else None, ".2f")]
               if estimated else [])) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--models", nargs="+", default=["edsr_baseline", "edsr"],
                   choices=("edsr_baseline", "edsr"), help="model presets to time")
    p.add_argument("--scale", type=int, default=2, choices=(2, 3, 4), help="upscaling factor")
    p.add_argument("--batch", type=int, nargs="+", default=None,
                   help="batch sizes (default: 16 baseline / 2 EDSR on CPU; 16 64 256 on GPU)")
    p.add_argument("--patch", type=int, default=48, help="LR patch side (HR is patch x scale)")
    p.add_argument("--dtype", nargs="+", default=["float32"], choices=("float32", "bfloat16"),
                   help="compute dtypes (params and Adam stay float32)")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"), help="where both sides run")
    p.add_argument("--frameworks", nargs="+", default=["jax", "torch"],
                   choices=("jax", *JAX_VARIANTS, "jax-loader", "torch"),
                   help="sides to alternate; jax-xla-conv: the project's step with XLA's "
                        "convolutions instead of oneDNN's; jax-no-ynnpack: with no YNNPACK "
                        "fusion; jax-xla-default: XLA's convolutions and default options; "
                        "jax-loader: the project's step fed by the real Grain loader")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 7; 3 quick)")
    p.add_argument("--steps", type=int, default=None, help="steps per round (default 3; 2 quick)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side after compiling")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="device peak for the utilisation column (default: measured matmul)")
    p.add_argument("--quick", action="store_true", help="fewer rounds and steps")
    args = p.parse_args(argv)

    if args.device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    if args.device == "gpu" and jax.default_backend() != "gpu":
        print(f"error: --device gpu but JAX's backend is {jax.default_backend()}", file=sys.stderr)
        return 2
    from inference import without_missing_torch  # benchmarks/ is on sys.path as the script's folder

    args.frameworks = without_missing_torch(args.frameworks)
    rounds = args.rounds or (3 if args.quick else 7)
    steps = args.steps or (2 if args.quick else 3)
    if args.device == "gpu":
        steps = max(steps, 10)
    results = []
    for dtype in args.dtype:
        for name in args.models:
            batches = args.batch or (GPU_BATCH if args.device == "gpu" else [CPU_BATCH[name]])
            for batch in batches:
                try:
                    r = run_case(name, args.scale, batch, args.patch, dtype, args.device,
                                 args.frameworks, rounds, steps, args.warmup)
                except Exception as e:  # e.g. out of device memory at a large batch: note it, go on
                    print(f"{name} {dtype} batch {batch}: failed: {str(e).splitlines()[0][:200]}",
                          file=sys.stderr, flush=True)
                    continue
                results.append(r)
                print(f"{name} {dtype} batch {batch}: " + ", ".join(
                    f"{k} {v:.2f} patches/s" for k, v in r["rates"].items()), file=sys.stderr, flush=True)
    refs = {}
    for dtype in args.dtype:
        refs[dtype] = (args.peak_tflops * 1e3 if args.peak_tflops
                       else matmul_gflops(dtype, args.device))
    from edsr_jax.nets import onednn_conv
    from edsr_jax.nets import xla_options

    device = jax.devices()[0]
    conv = {d: onednn_conv.choose_backend("auto", device.platform, 1, d) for d in args.dtype}
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\nTrain step, {device.platform} ({device.device_kind}), {os.cpu_count()} CPU(s), "
          f"{rounds} alternating rounds of {steps} steps, median; scale x{args.scale}; "
          f"load average at the end {load}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
          f"project compiler options (edsr_jax.nets.xla_options) at batch 16: "
          f"{xla_options.compiler_options(device.platform, 16)}, at batch 1: "
          f"{xla_options.compiler_options(device.platform, 1)} (None: XLA's defaults); "
          f"project convolutions (train.conv_backend auto): {conv}.")
    for dtype in args.dtype:
        ref = "peak" if args.peak_tflops else "matmul"
        print(f"\n{dtype}: reference {refs[dtype]:.0f} GFLOP/s "
              f"({'given peak' if args.peak_tflops else f'2048x2048 {dtype} matmul, measured'})\n")
        print(table([r for r in results if r["dtype"] == dtype], refs[dtype], ref))
    return 0


if __name__ == "__main__":
    sys.exit(main())
