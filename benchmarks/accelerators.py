"""GPU and TPU dry-run: compile the project's jitted programs for accelerators we do not have,
and report what each compiled program does and what it should cost. Compiler estimates, not
measurements.

    # GPU: a virtualenv with jax[cuda12] at the project's jax version (.ci/run makes .venv-cuda)
    JAX_PLATFORMS=cpu JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 .venv-cuda/bin/python \\
        benchmarks/accelerators.py --targets h100 h200 --devices 1 8
    # TPU: a virtualenv with jax[tpu] (.venv-tpu)
    JAX_PLATFORMS=cpu .venv-tpu/bin/python benchmarks/accelerators.py --targets v5e v5p --devices 4 8
    # the largest per-device batch that fits (EDSR x4, patch 48):
    ... benchmarks/accelerators.py --targets h100 --max-batch edsr 4
    # the train step that makes its LR on the device (data.degrade_on="device"), beside the same
    # step fed host pairs:
    ... benchmarks/accelerators.py --targets h100 --devices 8 --degrade-on device \
        --spec "nearest > jpeg(30,60)"

Programs: the trainer's train step (``training.step.compile_train_step``: mesh over the devices, state
donated, in the form the trainer keeps it on that platform (GPU: flat, ``training.state.to_flat``,
and on several GPUs split over them, ``StepFormulation.shard_update``; else replicated), batch
sharded; per-device batch of 48x48 LR patches); with ``--degrade-on device`` also
``train_step+damage``, the same step fed HR crops, patch indices and symmetries that makes its
LR with ``--spec`` inside the program (``training.step.DeviceDamage``); a plain optax
Adam step with donated state on the same model and mesh (the baseline for copied bytes), and
on one device the inference forward pass (``infer.apply_masked`` as ``infer.jitted`` compiles
it with XLA convolutions) for one Upscaler tile (``tile_for_budget``'s default) and for one
evaluation image (a Set14-sized LR bucket).

Per program: compile seconds; argument / output / temp memory; kernels (fusions, cuDNN and
cuBLAS calls); copies and their bytes; conditionals, loops; host transfers and callbacks;
collectives and their bytes (``hlo_stats.program_stats``); a roofline estimate of the run time
(``hlo_stats.roofline_seconds``: per kernel the longer of FLOPs at the device's dense peak and
bytes at its HBM bandwidth, plus a launch cost, kernels in sequence) with patches/s and MFU;
for TPU, beside it the compiler's own ``optimal_seconds`` from ``cost_analysis()``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import hlo_stats  # noqa: E402
from hlo_stats import DEVICES  # noqa: E402
from model_flops import train_flops  # noqa: E402

TARGET_DIR = ROOT / "benchmarks" / "targets"
PATCH = 48

GPU_TARGETS = {"h100": "h100.textproto", "h200": "h200.textproto"}
# TPU slices: chips -> topology name (host bounds are 2x2: a 1-chip mesh is a slice's first chip)
TPU_TOPOLOGIES = {"v5e": {1: "v5e:2x2", 4: "v5e:2x2", 8: "v5e:2x4"},
                  "v5p": {1: "v5p:2x2x1", 4: "v5p:2x2x1", 8: "v5p:2x2x2"}}


def platform_of(target: str) -> str:
    """"cuda" for GPU targets, "tpu" for TPU ones."""
    return "cuda" if target in GPU_TARGETS else "tpu"


@functools.lru_cache(maxsize=None)
def devices(target: str, count: int) -> tuple:
    """``count`` abstract devices of ``target`` from ``jax.experimental.topologies``."""
    from jax.experimental import topologies

    if target in GPU_TARGETS:
        text = (TARGET_DIR / GPU_TARGETS[target]).read_text()
        topo = topologies.get_topology_desc(platform="cuda", target_config=text,
                                            topology=f"1x1x{count}")
        return tuple(topo.devices)
    name = TPU_TOPOLOGIES[target].get(count)
    if name is None:
        raise SystemExit(f"error: --devices {count} for {target}: one of {sorted(TPU_TOPOLOGIES[target])}")
    topo = topologies.get_topology_desc(name, "tpu")
    return tuple(topo.devices[:count])


def _lower(jitted, args, platform: str):
    traced = jitted.trace(*args)
    if platform == "cuda":
        return traced.lower(lowering_platforms=("cuda",))
    return traced.lower()


def _model(preset: str, scale: int, dtype: str):
    from edsr_jax.nets.edsr import DTYPES, PRESETS, ModelConfig

    if preset in ("tiny", "tiny_scaled"):  # tiny_scaled: EDSR's res_scale (0.1), folded on GPU
        config = ModelConfig(scale, 2, 8, 1.0 if preset == "tiny" else PRESETS["edsr"][2])
    else:
        blocks, features, res_scale = PRESETS[preset]
        config = ModelConfig(scale, blocks, features, res_scale)
    return config, config.build(dtype=DTYPES[dtype])


# --formulations: the train step written each way xla_options.step_formulation chooses among,
# and plain optax Adam with and without the gradient layout constraint.
FORMULATIONS = {"cond": ("cond", False), "select": ("select", False),
                "select+layout": ("select", True), "select+flatnorm": ("select", False, True),
                "select+layout+flatnorm": ("select", True, True),
                "select+layout+flatstate": ("select", True, True, True),
                "select+flatstate": ("select", False, False, True),
                "select+layout+flatstate+ohwi": ("select", True, True, True, (3, 0, 1, 2)),
                "select+flatstate+ohwi": ("select", False, False, True, (3, 0, 1, 2)),
                "select+layout+flatstate+ohwi+relu": ("select", True, True, True, (3, 0, 1, 2), True),
                "select+relu": ("select", False, False, False, None, True),
                "select+layout+flatstate+ohwi+relu+fold": ("select", True, True, True, (3, 0, 1, 2), True, True),
                "select+relu+fold": ("select", False, False, False, None, True, True),
                "select+fold": ("select", False, False, False, None, False, True),
                "select+tail": ("select", False, False, False, None, False, False, True),
                "select+layout+flatstate+ohwi+relu+fold+shard": ("select", True, True, True, (3, 0, 1, 2), True,
                                                                 True, False, True),
                "select+flatstate+tail": ("select", False, False, True, None, False, False, True),
                "select+flatstate+tail+shard": ("select", False, False, True, None, False, False, True, True)}


def train_programs(target: str, count: int, preset: str, scale: int, dtype: str,
                   batch_per_device: int, formulations=False, damage_spec: str | None = None,
                   grad_reduce: str = "float32") -> dict:
    """Lowered train step of the trainer and the plain-Adam baseline: ``{name: lowered}``;
    with ``formulations`` (True, or a list of names), the step in each (those) of
    ``FORMULATIONS`` and (True) plain Adam with its gradients constrained to the parameters'
    layout too; with ``damage_spec``, also
    ``train_step+damage``: the step that makes its LR from HR crops with that spec.
    ``grad_reduce``: ``train.grad_reduce_dtype`` (the dtype the devices' gradients are summed in)."""
    import jax
    import jax.numpy as jnp
    import optax

    from edsr_jax.training import config as config_lib
    from edsr_jax.training.loss import pixel_loss
    from edsr_jax.training.optim import make_optimizer
    from edsr_jax.training.sharding import make_shardings
    from edsr_jax.nets.xla_options import step_formulation
    from edsr_jax.training.state import create_train_state, to_flat
    from edsr_jax.training.step import DeviceDamage, compile_train_step, row_major

    platform = platform_of(target)
    mesh = jax.sharding.Mesh(devices(target, count), ("data",))
    model_config, model = _model(preset, scale, dtype)
    cfg = config_lib.base_config()
    cfg.data.batch_size = batch_per_device * count
    cfg.model.dtype, cfg.train.grad_reduce_dtype = dtype, grad_reduce
    tx, _ = make_optimizer(cfg.optim)
    abstract = jax.eval_shape(lambda k: create_train_state(model, tx, k, use_ema=False),
                              jax.random.key(0))
    shardings = make_shardings(mesh, abstract)
    replicated, batch_sharding, state_sharding = shardings
    state = jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                   abstract, state_sharding)
    n = cfg.data.batch_size
    batch = {"lr": jax.ShapeDtypeStruct((n, PATCH, PATCH, 3), jnp.uint8, sharding=batch_sharding),
             "hr": jax.ShapeDtypeStruct((n, PATCH * scale, PATCH * scale, 3), jnp.uint8,
                                        sharding=batch_sharding)}
    def flat_state(kernel_order, shard=False):
        # split over the devices (StepFormulation.shard_update): padded to a multiple of them
        shape = jax.eval_shape(lambda a: to_flat(a, kernel_order, count if shard else 1), abstract)
        return jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                      shape, make_shardings(mesh, shape, shard_flat=shard).state)

    adam = optax.adam(cfg.optim.lr)

    def plain_adam(params_opt, batch, layout=False):
        params, opt_state = params_opt

        def loss_of(p):
            sr = model.apply(p, batch["lr"].astype(jnp.float32))
            return pixel_loss(sr, batch["hr"], "l1")

        loss, grads = jax.value_and_grad(loss_of)(params)
        if layout:
            grads = jax.tree_util.tree_map(row_major, grads)
        updates, opt_state = adam.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    params_opt = (state.params, jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
        jax.eval_shape(adam.init, state.params)))

    def baseline(layout):
        return _lower(jax.jit(functools.partial(plain_adam, layout=layout),
                              in_shardings=(replicated, batch_sharding),
                              out_shardings=(replicated, replicated), donate_argnums=(0,)),
                      (params_opt, batch), platform)

    def step(formulation=None, damage=None):
        # the state in the form the trainer keeps it under this formulation (StepFormulation.flat_state)
        form = formulation or step_formulation(platform)
        shard = form.flat_state and form.shard_update and count > 1
        st = flat_state(form.kernel_order, shard) if form.flat_state else state
        jitted = compile_train_step(model, tx, cfg, mesh, st, shardings=make_shardings(mesh, st, shard_flat=shard),
                                    formulation=form, damage=damage)
        if damage is None:
            return _lower(jitted, (st, batch), platform)
        hr_batch = {"hr": batch["hr"],
                    "index": jax.ShapeDtypeStruct((n, 2), jnp.uint32, sharding=batch_sharding),
                    "symmetry": jax.ShapeDtypeStruct((n,), jnp.int32, sharding=batch_sharding)}
        return _lower(jitted, (st, hr_batch), platform)

    if damage_spec:
        return {"train_step": step(), "train_step+damage": step(damage=DeviceDamage(damage_spec, scale, 0)),
                "plain_adam": baseline(False)}
    if not formulations:
        return {"train_step": step(), "plain_adam": baseline(False)}
    from edsr_jax.nets.xla_options import StepFormulation

    names = list(FORMULATIONS) if formulations is True else formulations
    out = {f"train_step {name}": step(StepFormulation(*FORMULATIONS[name])) for name in names}
    if formulations is not True:
        return out
    return {**out, "plain_adam": baseline(False), "plain_adam +layout": baseline(True)}


def forward_programs(target: str, preset: str, scale: int, dtype: str, tile: int | None = None,
                     hr_tail: bool = False, xla_layout: bool = False) -> dict:
    """Lowered inference forward passes on one device: an Upscaler tile (``tile`` LR pixels
    plus the receptive radius each side; default: the Upscaler's on that device, from
    ``xla_options.inference_budget_mb``: a quarter of its memory), masked
    (a border tile) and as a tile inside the image runs, and an evaluation image (Set14-sized LR
    at x``scale``, bucketed): ``{name: (lowered, LR pixels)}``. The tail where the Upscaler runs
    it on the target (``xla_options.tail_on_lr_grid``), or after the last shuffle (``hr_tail``);
    the convolution inputs in the target's ``xla_options.conv_input_layout``, or in the layout
    XLA chooses (``xla_layout``)."""
    import jax
    import jax.numpy as jnp

    from edsr_jax.inference import infer
    from edsr_jax.nets import xla_options
    from edsr_jax.nets.edsr import receptive_radius

    platform = platform_of(target)
    device = devices(target, 1)[0]
    one = jax.sharding.SingleDeviceSharding(device)
    model_config, model = _model(preset, scale, dtype)
    params = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 8, 8, 3))), jax.random.key(0))
    params = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=one),
                                    infer._plain_dict(infer._inner(params)))
    lr_tail = xla_options.tail_on_lr_grid(device.platform) and not hr_tail

    def fn(masked: bool):
        layout = None if xla_layout else xla_options.conv_input_layout(device.platform)
        return jax.jit(functools.partial(infer.apply_masked, config=model_config, dtype=dtype,
                                         conv_backend="xla", masked=masked, tail_on_lr_grid=lr_tail,
                                         conv_input_layout=layout),
                       compiler_options=xla_options.compiler_options(device.platform))

    budget = xla_options.inference_budget_mb(platform, int(DEVICES[target].memory_gib * 2**30))
    tile = tile or infer.tile_for_budget(model_config, budget, dtype)
    side = tile + 2 * receptive_radius(model_config)
    eval_h, eval_w = infer.bucket(512 // scale), infer.bucket(384 // scale)
    out = {}
    # A tile inside the image runs unmasked where xla_options.unmask_full_batches says so.
    inside_masked = not xla_options.unmask_full_batches(device.platform)
    programs = {"upscale_tile": (side, True), "upscale_tile_inside": (side, inside_masked),
                "evaluate_image": ((eval_h, eval_w), True)}
    for name, (size, masked) in programs.items():
        h, w = size if isinstance(size, tuple) else (size, size)
        x = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32, sharding=one)
        bounds = jax.ShapeDtypeStruct((1, 4), jnp.int32, sharding=one)
        out[f"{name} {h}x{w}"] = (_lower(fn(masked), (params, x, bounds), platform), h * w)
    return out


def train_model_flops(preset: str, scale: int, patches: int) -> float:
    """The architecture's convolution FLOPs of ``patches`` training patches (forward x3)."""
    model_config, _ = _model(preset, scale, "float32")
    return patches * train_flops(model_config.num_blocks, model_config.num_features, scale, PATCH)


def describe(lowered, target: str, count: int) -> dict:
    """Compile ``lowered`` and read the program: the table row's numbers."""
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    stats = hlo_stats.program_stats(compiled.as_text())
    mem = compiled.memory_analysis()
    device = DEVICES[target]
    row = {
        "compile_s": compile_s,
        "arg_mib": mem.argument_size_in_bytes / 2**20,
        "out_mib": mem.output_size_in_bytes / 2**20,
        "alias_mib": mem.alias_size_in_bytes / 2**20,
        "temp_mib": mem.temp_size_in_bytes / 2**20,
        "kernels": len(stats.kernels),
        "cudnn": stats.kinds.get("cudnn", 0),
        "cublas": stats.kinds.get("cublas", 0),
        "fusions": stats.kinds.get("fusion", 0) + stats.kinds.get("triton", 0),
        "copies": stats.copies,
        "copy_bytes": stats.copy_bytes,
        "conditionals": stats.conditionals,
        "loops": stats.loops,
        "host_transfers": stats.host_transfers,
        "collectives": len(stats.collectives),
        "collective_bytes": stats.collective_bytes,
        "all_reduces": sum(op.startswith("all-reduce") for op, _ in stats.collectives),
        # per kind: [count, payload bytes] (hlo_stats.collective_payload)
        "collective_kinds": {kind: [sum(op.startswith(kind) for op, _ in stats.collectives),
                                    sum(b for op, b in stats.collectives if op.startswith(kind))]
                             for kind in ("all-reduce", "reduce-scatter", "all-gather")},
        "flops": sum(k.mxu_flops for k in stats.kernels),
        "est_s": hlo_stats.roofline_seconds(stats, device, devices=count),
        "est_no_launch_s": hlo_stats.roofline_seconds(stats, device, devices=count, launch_us=0.0),
    }
    if platform_of(target) == "tpu":
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        row["tpu_optimal_s"], row["tpu_uncosted_ops"] = tpu_estimate(
            float(cost.get("optimal_seconds", float("nan"))) if cost else float("nan"))
    return row


def tpu_estimate(optimal_seconds: float) -> tuple[float, int]:
    """The TPU compiler's ``optimal_seconds`` split into (seconds of the ops it costed, number
    of ops it did not cost). libtpu sums per-op estimates and an op it does not model counts
    -1 s: whole EDSR gradients came out as -1.9988 (1 block), -4.9978 (4 blocks), -29.993
    (EDSR-baseline, batch 16) and -34.992 s (its train step), while every convolution and the
    forward passes alone came out positive. A negative total is therefore read as
    ``-k + r``: k uncosted ops, r >= 0 the estimate of the rest (a lower bound)."""
    if not optimal_seconds < 0:
        return optimal_seconds, 0
    k = math.ceil(-optimal_seconds)
    return optimal_seconds + k, k


@dataclasses.dataclass
class Case:
    """One train-step configuration."""

    target: str
    devices: int
    preset: str
    scale: int
    dtype: str
    batch: int


def run_train_case(case: Case, formulations=False, damage_spec: str | None = None,
                   grad_reduce: str = "float32") -> list[dict]:
    """Rows for the train step and its plain-Adam baseline (``train_programs``); each row says
    where its LR is made (``degrade_on``, ``spec``), and ``train_step+damage`` its step time
    over the host-fed step's (``damage_ratio``)."""
    lowered = train_programs(case.target, case.devices, case.preset, case.scale, case.dtype,
                             case.batch, formulations, damage_spec, grad_reduce)
    rows = []
    for name, low in lowered.items():
        on_device = name == "train_step+damage"
        row = {"program": name, **dataclasses.asdict(case), "grad_reduce_dtype": grad_reduce,
               "degrade_on": "device" if on_device else "host",
               "spec": damage_spec if on_device else "", **describe(low, case.target, case.devices)}
        patches = case.batch * case.devices
        device = DEVICES[case.target]
        peak = device.matrix_tflops["bf16" if case.dtype == "bfloat16" else "f32"] * 1e12
        model_flops = train_model_flops(case.preset, case.scale, patches)
        row["patches_s"] = patches / row["est_s"]
        row["mfu"] = model_flops / case.devices / row["est_s"] / peak
        if "tpu_optimal_s" in row:
            row["tpu_patches_s"] = patches / row["tpu_optimal_s"] if row["tpu_optimal_s"] > 0 else float("nan")
        rows.append(row)
    host = next((r for r in rows if r["program"] == "train_step"), None)
    for r in rows:
        if r["program"] == "train_step+damage" and host:
            r["damage_ratio"] = r["est_s"] / host["est_s"]
    return rows


def run_forward_cases(target: str, preset: str, scale: int, dtype: str,
                      tile: int | None = None, hr_tail: bool = False, xla_layout: bool = False) -> list[dict]:
    """Rows for the inference forward passes (``forward_programs``)."""
    rows = []
    for name, (low, pixels) in forward_programs(target, preset, scale, dtype, tile, hr_tail,
                                                xla_layout).items():
        row = {"program": name, "target": target, "devices": 1, "preset": preset, "scale": scale,
               "dtype": dtype, "batch": 1, **describe(low, target, 1)}
        row["mpix_s"] = pixels * scale * scale / row["est_s"] / 1e6
        rows.append(row)
    return rows


@functools.lru_cache(maxsize=None)
def _train_step_bytes(target: str, preset: str, scale: int, dtype: str, batch: int) -> int:
    """Device memory of the train step on one device: arguments + outputs not aliased to
    them + temporaries (``memory_analysis``)."""
    low = train_programs(target, 1, preset, scale, dtype, batch)["train_step"]
    mem = low.compile().memory_analysis()
    return (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
            + mem.temp_size_in_bytes)


def max_batch(target: str, preset: str, scale: int, dtype: str, pool_fraction: float) -> tuple[int, float]:
    """Largest per-device batch (a power of two, then refined by halves) whose train step on
    one device fits ``pool_fraction`` of the device memory; returns (batch, GiB used)."""
    limit = DEVICES[target].memory_gib * 2**30 * pool_fraction
    used = functools.partial(_train_step_bytes, target, preset, scale, dtype)
    lo, hi = 0, 16
    while used(hi) <= limit:
        lo, hi = hi, hi * 2
    while hi - lo > max(1, lo // 16):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if used(mid) <= limit else (lo, mid)
    return lo, used(lo) / 2**30 if lo else 0.0


def _mib(b: float) -> str:
    return f"{b / 2**20:.2f}" if b < 2**30 else f"{b / 2**30:.2f} Gi"


def _collectives(r: dict) -> str:
    """"1 (5.2)": all-reduces and their MiB; with reduce-scatters or all-gathers, each kind
    named ("AR 1 (0.0), RS 1 (155.4), AG 1 (77.7)")."""
    kinds = {k: v for k, v in r.get("collective_kinds", {}).items() if v[0]}
    if set(kinds) <= {"all-reduce"}:
        return f"{r['all_reduces']} ({r['collective_bytes'] / 2**20:.1f})"
    short = {"all-reduce": "AR", "reduce-scatter": "RS", "all-gather": "AG"}
    return ", ".join(f"{short[k]} {n} ({b / 2**20:.1f})" for k, (n, b) in kinds.items())


def table(rows: list[dict]) -> str:
    """Markdown table of the rows."""
    head = ("| program | target | dev | model | dtype | batch/dev | compile s | arg / temp MiB | "
            "kernels (cuDNN, fusions) | copies (MiB) | cond | loops | host | collectives (MiB) | "
            "est ms | patches/s or MPix/s | MFU (no launch cost) | TPU compiler est ms |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        name = r["program"] + (f" ({r['damage_ratio']:.3f}x)" if "damage_ratio" in r else "")
        rate = f"{r['patches_s']:,.0f}" if "patches_s" in r else f"{r.get('mpix_s', 0):,.1f} MPix/s"
        mfu = (f"{100 * r['mfu']:.0f} % ({100 * r['mfu'] * r['est_s'] / r['est_no_launch_s']:.0f} %)"
               if "mfu" in r else "")
        tpu = f"{1e3 * r['tpu_optimal_s']:.2f}" if "tpu_optimal_s" in r else ""
        if r.get("tpu_uncosted_ops"):
            tpu += f" (+{r['tpu_uncosted_ops']} ops uncosted)"
        lines.append(
            f"| {name} | {r['target']} | {r['devices']} | {r['preset']} x{r['scale']} | {r['dtype']} | "
            f"{r['batch']} | {r['compile_s']:.1f} | {r['arg_mib']:.1f} / {r['temp_mib']:.0f} | "
            f"{r['kernels']} ({r['cudnn']}, {r['fusions']}) | {r['copies']} ({r['copy_bytes'] / 2**20:.2f}) | "
            f"{r['conditionals']} | {r['loops']} | {len(r['host_transfers'])} | "
            f"{_collectives(r)} | {1e3 * r['est_s']:.2f} | "
            f"{rate} | {mfu} | {tpu} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Compile the chosen programs and print the table (and ``--json`` rows)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", nargs="+", default=["h100"], choices=sorted(DEVICES))
    p.add_argument("--devices", nargs="+", type=int, default=[1, 8], help="devices per train step mesh")
    p.add_argument("--presets", nargs="+", default=["edsr_baseline", "edsr"],
                   choices=["tiny", "tiny_scaled", "edsr_baseline", "edsr"])
    p.add_argument("--scales", nargs="+", type=int, default=[2, 4], choices=[2, 3, 4])
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=["bfloat16", "float32"])
    p.add_argument("--batches", nargs="+", type=int, default=[16, 64, 256], help="per-device batch")
    p.add_argument("--programs", nargs="+", default=["train", "forward"], choices=["train", "forward"])
    p.add_argument("--tile", type=int, default=None,
                   help="Upscaler tile side in LR pixels (default: the Upscaler's own)")
    p.add_argument("--hr-tail", action="store_true",
                   help="inference programs with the tail after the last pixel shuffle on every "
                        "target (default: where xla_options.tail_on_lr_grid says, TPU)")
    p.add_argument("--xla-conv-layout", action="store_true",
                   help="inference programs with the convolution inputs in the layout XLA "
                        "chooses (default: xla_options.conv_input_layout's, on TPU (H, W, N, C))")
    p.add_argument("--formulations", nargs="*", choices=list(FORMULATIONS), default=None,
                   help="the train step in each formulation of xla_options.step_formulation "
                        "and plain Adam with and without the gradient layout constraint; with "
                        "names, only those formulations (no plain Adam)")
    p.add_argument("--max-batch", nargs=2, metavar=("PRESET", "SCALE"),
                   help="only search the largest per-device batch that fits one device")
    p.add_argument("--degrade-on", choices=["host", "device"], default="host",
                   help="device: also compile the train step that makes its LR from HR crops with --spec "
                        "(data.degrade_on='device'), beside the step fed host pairs")
    p.add_argument("--spec", default="nearest > jpeg(30,60)",
                   help="the degradation of --degrade-on device (an open factor takes the scale); "
                        "default: the seed's poster damage")
    p.add_argument("--grad-reduce-dtype", choices=["float32", "compute"], default="float32",
                   help="train.grad_reduce_dtype of the train step (bfloat16 on several devices: the "
                        "dtype the gradients are all-reduced in)")
    p.add_argument("--json", help="also write the rows as JSON to this file ('-': stdout)")
    p.add_argument("--from-json", nargs="+", metavar="FILE",
                   help="print the table of rows written before by --json, compiling nothing")
    args = p.parse_args(argv)
    rows: list[dict] = []
    if args.from_json:
        for path in args.from_json:
            rows += json.loads(Path(path).read_text())
        print(table(rows))
        return 0
    if args.max_batch:
        preset, scale = args.max_batch[0], int(args.max_batch[1])
        print("| target | model | dtype | pool | largest batch/device | GiB |")
        print("| --- | --- | --- | --- | --- | --- |")
        for target in args.targets:
            for dtype in args.dtypes:
                for fraction in (0.75, 0.95):
                    b, gib = max_batch(target, preset, scale, dtype, fraction)
                    print(f"| {target} | {preset} x{scale} | {dtype} | {fraction:.0%} | {b} | {gib:.1f} |",
                          flush=True)
        return 0
    for target in args.targets:
        for preset in args.presets:
            for scale in args.scales:
                for dtype in args.dtypes:
                    if "forward" in args.programs:
                        rows += run_forward_cases(target, preset, scale, dtype, args.tile, args.hr_tail,
                                                  args.xla_conv_layout)
                    if "train" not in args.programs:
                        continue
                    for count in args.devices:
                        for batch in args.batches:
                            new = run_train_case(Case(target, count, preset, scale, dtype, batch),
                                                 (True if args.formulations == [] else
                                                  args.formulations or False),
                                                 args.spec if args.degrade_on == "device" else None,
                                                 args.grad_reduce_dtype)
                            rows += new
                            print("\n".join(table(new).splitlines()[2:]), file=sys.stderr, flush=True)
    if args.json:
        text = json.dumps(rows, indent=1)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text)
    if args.json != "-":
        print(table(rows))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    if os.environ["JAX_PLATFORMS"] == "cpu":  # compiling only: libtpu's one-process lock not needed
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    sys.exit(main())
