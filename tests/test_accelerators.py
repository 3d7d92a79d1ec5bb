"""GPU and TPU dry-run: the programs our users' accelerators run, compiled here without one.

``benchmarks/accelerators.py`` runs in a virtualenv with ``jax[cuda12]`` (``.venv-cuda``) or
``jax[tpu]`` (``.venv-tpu``) at the project's jax version; ``.ci/run`` makes both. A tiny
EDSR's train step (2 H100s; a TPU v5e 2x2 slice), Upscaler tile and evaluation forward pass
are compiled and read (``benchmarks/hlo_stats.py``). The train step must have no conditional,
no host transfer, no more copied bytes than a plain optax Adam step with donated state, and
its gradient all-reduce. Another interpreter can be named with EDSR_JAX_CUDA_PYTHON /
EDSR_JAX_TPU_PYTHON; where none exists the tests skip and say so.

The reader itself (``hlo_stats``) is checked on CPU programs whose counts are known.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import hlo_stats  # noqa: E402

SCRIPT = ROOT / "benchmarks" / "accelerators.py"
BATCH = 4  # per device


def _python(kind: str) -> Path:
    found = os.environ.get(f"EDSR_JAX_{kind.upper()}_PYTHON") or ROOT / f".venv-{kind}" / "bin" / "python"
    path = Path(found)
    if not path.exists():
        pytest.skip(f"{path} not found: the {kind} dry-run needs a virtualenv with jax[{kind}"
                    f"{'12' if kind == 'cuda' else ''}]=={jax.__version__} (.ci/run makes it)")
    return path


def _dry_run(kind: str, *args: str) -> list[dict]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_SKIP_CUDA_CONSTRAINTS_CHECK": "1",
           "PYTHONPATH": str(ROOT), "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([str(_python(kind)), str(SCRIPT), "--presets", "tiny", "--scales", "2",
                          "--batches", str(BATCH), "--tile", "64", "--json", "-", *args],
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def _by_program(rows: list[dict], dtype: str) -> dict[str, dict]:
    return {r["program"].split()[0]: r for r in rows if r["dtype"] == dtype}


def _check_train_step(rows: list[dict], dtype: str) -> dict:
    progs = _by_program(rows, dtype)
    step, plain = progs["train_step"], progs["plain_adam"]
    assert step["conditionals"] == 0, step
    assert step["loops"] == 0, step
    assert step["host_transfers"] == [], step
    assert step["copy_bytes"] <= plain["copy_bytes"], (step["copy_bytes"], plain["copy_bytes"])
    assert step["all_reduces"] >= 1, step  # the gradient (and loss) reduction over the mesh
    for name in ("upscale_tile", "upscale_tile_inside", "evaluate_image"):
        fwd = progs[name]
        assert fwd["conditionals"] == 0 and fwd["host_transfers"] == [] and fwd["collectives"] == 0
        assert fwd["kernels"] > 0 and fwd["est_s"] > 0
    # a tile inside the image skips the padding mask's kernels on GPU and TPU
    assert progs["upscale_tile_inside"]["kernels"] < progs["upscale_tile"]["kernels"]
    return step


# One test per platform: each compiles its programs once (xdist would otherwise run a shared
# fixture in each worker).


@pytest.mark.slow
def test_gpu_dry_run_train_step_upscaler_and_evaluation():
    """2 H100s, bfloat16 and float32: no conditional, host transfer or state copy (the flat
    state is updated in place: nothing to copy but a scalar); fewer kernels than plain Adam; every
    convolution in cuDNN; and the convolution FLOPs read from the optimised HLO equal the
    architecture's (forward, input and weight gradients of every convolution, less the head's
    input gradient: the images need none)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from model_flops import train_flops

    rows = _dry_run("cuda", "--targets", "h100", "--devices", "2", "--dtypes", "bfloat16", "float32")
    for dtype in ("bfloat16", "float32"):
        step = _check_train_step(rows, dtype)
        assert step["cudnn"] >= 3 * 6 - 1
        assert step["copy_bytes"] <= 16, step["copy_bytes"]
        # The flat state's one update (and no kernel transposes) against plain Adam's per-array
        # updates and their copies: the guarded step launches fewer kernels than unguarded Adam.
        assert step["kernels"] < _by_program(rows, dtype)["plain_adam"]["kernels"]
        expected = BATCH * (train_flops(2, 8, 2, 48) - 2 * 48 * 48 * 9 * 3 * 8)
        assert step["flops"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.slow
def test_gpu_dry_run_folds_res_scale_without_kernels_of_its_own():
    """One H100, bfloat16, a tiny EDSR with EDSR's res_scale (0.1, 2 blocks): with the fold
    (``StepFormulation.fold_res_scale``) the step launches at least one kernel fewer per block
    (the ``res_scale * branch + residual`` kernels go into cuDNN's conv + bias + side input)
    and the same cuDNN calls: the factor vector fuses into the weight casts and the gradient's
    readers (per array it was 2 kernels a block more, forward and backward)."""
    rows = _dry_run("cuda", "--targets", "h100", "--devices", "1", "--dtypes", "bfloat16",
                    "--presets", "tiny_scaled", "--programs", "train", "--formulations",
                    "select+layout+flatstate+ohwi+relu", "select+layout+flatstate+ohwi+relu+fold")
    before, after = (next(r for r in rows if r["program"].endswith(name)) for name in ("+relu", "+fold"))
    assert after["cudnn"] == before["cudnn"]
    assert after["kernels"] <= before["kernels"] - 2, (before["kernels"], after["kernels"])
    assert after["copy_bytes"] <= before["copy_bytes"]


@pytest.mark.slow
def test_gpu_dry_run_splits_the_flat_state_over_the_devices():
    """2 H100s, bfloat16, a tiny EDSR with res_scale 0.1 (5699 parameters, padded to 5700): with
    ``StepFormulation.shard_update`` the gradient is reduce-scattered in float32 (the whole
    gradient's 22800 bytes), the parameters all-gathered in bfloat16 (11400 bytes), and the only
    all-reduce left is the loss and the norm's scalars; the state's arguments are smaller and the
    gathered parameters' slices fuse into the weight casts (no kernel per parameter array: 16
    arrays, at most 4 kernels more); the estimate charges the two halves of a ring all-reduce."""
    rows = _dry_run("cuda", "--targets", "h100", "--devices", "2", "--dtypes", "bfloat16",
                    "--presets", "tiny_scaled", "--programs", "train", "--formulations",
                    "select+layout+flatstate+ohwi+relu+fold", "select+layout+flatstate+ohwi+relu+fold+shard")
    before, after = (next(r for r in rows if r["program"].endswith(name)) for name in ("+fold", "+shard"))
    assert before["collective_kinds"] == {"all-reduce": [1, 22800], "reduce-scatter": [0, 0], "all-gather": [0, 0]}
    assert after["collective_kinds"]["reduce-scatter"] == [1, 22800], after["collective_kinds"]
    assert after["collective_kinds"]["all-gather"] == [1, 11400], after["collective_kinds"]
    assert after["collective_kinds"]["all-reduce"][1] <= 8, after["collective_kinds"]
    assert after["arg_mib"] < before["arg_mib"]
    assert after["cudnn"] == before["cudnn"] and after["kernels"] <= before["kernels"] + 4
    assert after["copy_bytes"] <= before["copy_bytes"]


def test_collective_payloads_and_their_ring_cost():
    """``hlo_stats``: an all-reduce's payload is its result, a reduce-scatter's its whole
    operand, an all-gather's its whole result (sync, or async with a tuple shape); on 8
    devices the estimate moves 2 * 7/8 of an all-reduce's payload and 7/8 of the others'."""
    text = "\n".join([
        "HloModule m", "",
        "%add (a: f32[], b: f32[]) -> f32[] {", "  %a = f32[] parameter(0)", "  %b = f32[] parameter(1)",
        "  ROOT %s = f32[] add(%a, %b)", "}", "",
        "ENTRY %main (p: f32[800], q: bf16[100]) -> (f32[800], f32[100], bf16[800]) {",
        "  %p = f32[800]{0} parameter(0)", "  %q = bf16[100]{0} parameter(1)",
        "  %ar = f32[800]{0} all-reduce(%p), replica_groups={}, to_apply=%add",
        "  %rs = ((f32[800]{0}), f32[100]{0}) reduce-scatter-start(%p), dimensions={0}, to_apply=%add",
        "  %rsd = f32[100]{0} reduce-scatter-done(%rs)",
        "  %ag = (bf16[100]{0}, bf16[800]{0}) all-gather-start(%q), dimensions={0}",
        "  %agd = bf16[800]{0} all-gather-done(%ag)",
        "  ROOT %t = (f32[800]{0}, f32[100]{0}, bf16[800]{0}) tuple(%ar, %rsd, %agd)", "}"])
    stats = hlo_stats.program_stats(text)
    assert stats.collectives == [("all-reduce", 3200), ("reduce-scatter-start", 3200), ("all-gather-start", 1600)]
    device = hlo_stats.Device("d", {"bf16": 1.0, "f32": 1.0}, 1.0, 1e9, 1.0, 0.0, 1.0)  # 1 GB/s links
    want = (2 * 3200 + 3200 + 1600) * 7 / 8 / 1e9
    assert hlo_stats.roofline_seconds(stats, device, devices=8) == pytest.approx(want, rel=1e-9)


@pytest.mark.slow
def test_tpu_dry_run_train_step_upscaler_and_evaluation():
    """A TPU v5e 2x2 slice, bfloat16: the same checks, and the TPU compiler's own estimate."""
    rows = _dry_run("tpu", "--targets", "v5e", "--devices", "4", "--dtypes", "bfloat16")
    step = _check_train_step(rows, "bfloat16")
    assert step["tpu_optimal_s"] > 0



@pytest.mark.slow
def test_tpu_dry_run_masks_inside_the_convolutions_layout():
    """TPU v5e, bfloat16: with every convolution input in ``xla_options.conv_input_layout`` the
    padding mask's multiplies fuse into the convolutions, so the masked tile and the evaluation
    image launch fewer ops than with the inputs in the layout XLA chooses (tiny model: 72 and
    71 against 103 and 101), and copy no more."""
    args = ("--targets", "v5e", "--dtypes", "bfloat16", "--programs", "forward")
    ours = _by_program(_dry_run("tpu", *args), "bfloat16")
    xla = _by_program(_dry_run("tpu", *args, "--xla-conv-layout"), "bfloat16")
    for name in ("upscale_tile", "evaluate_image"):
        assert ours[name]["kernels"] < xla[name]["kernels"], (name, ours[name]["kernels"], xla[name]["kernels"])
        assert ours[name]["copy_bytes"] <= xla[name]["copy_bytes"]

# ------------------------------------------------------------------ the reader, on CPU


def _cpu_text(f, *args) -> str:
    return jax.jit(f).lower(*args).compile().as_text()


def test_reader_counts_conditionals_loops_and_their_kernels():
    def f(x):
        y = jax.lax.cond(x.sum() > 0, lambda v: v * 2.0, lambda v: v - 1.0, x)
        return jax.lax.fori_loop(0, 3, lambda i, v: jnp.sin(v) + i, y)

    stats = hlo_stats.program_stats(_cpu_text(f, jnp.ones((64,))))
    assert stats.conditionals == 1
    assert stats.loops == 1
    assert stats.host_transfers == []
    plain = hlo_stats.program_stats(_cpu_text(lambda x: jnp.sin(x) * 2, jnp.ones((64,))))
    assert plain.conditionals == plain.loops == 0


def test_reader_counts_convolution_flops_and_bytes():
    x = jnp.ones((2, 10, 12, 5), jnp.float32)
    w = jnp.ones((3, 3, 5, 7), jnp.float32)

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    stats = hlo_stats.program_stats(_cpu_text(conv, x, w))
    assert sum(k.mxu_flops for k in stats.kernels) == 2 * 2 * 10 * 12 * 7 * 9 * 5
    assert hlo_stats.nbytes("(f32[2,3]{1,0}, bf16[4]{0}, s32[])") == 24 + 8 + 4


def test_reader_counts_copies_and_their_bytes():
    text = """HloModule m

ENTRY %main (p: f32[4,8]) -> f32[4,8] {
  %p = f32[4,8]{1,0} parameter(0)
  %copy.1 = f32[4,8]{0,1} copy(%p)
  ROOT %copy.2 = f32[4,8]{1,0} copy(%copy.1)
}
"""
    stats = hlo_stats.program_stats(text)
    assert stats.copies == 2 and stats.copy_bytes == 2 * 4 * 8 * 4
    assert len(stats.kernels) == 2


# ------------------------------------------------------------------ the per-platform formulations


def _tiny_step_inputs():
    import optax

    from conftest import tiny_state_and_batch
    from edsr_jax.training.step import train_step

    tx = optax.adam(1e-3)
    model, state, batch = tiny_state_and_batch(tx)
    return train_step, model, tx, state, batch


@pytest.mark.parametrize("grads_in_param_layout,flat_norm", [(False, False), (True, False), (True, True)])
def test_select_guard_steps_as_the_cond_guard(grads_in_param_layout, flat_norm):
    """GPU/TPU's formulation (select, gradients in the parameters' layout) and CPU's (cond)
    compute the same step: same params, Adam moments, EMA and counters (float32 rounding of
    differently fused kernels allowed: rtol 1e-6), on CPU where both compile."""
    import functools

    train_step, model, tx, state, batch = _tiny_step_inputs()
    step = functools.partial(train_step, model=model, tx=tx, ema_decay=0.9)
    a, ma = jax.jit(functools.partial(step, guard="cond"))(state, batch)
    b, mb = jax.jit(functools.partial(step, guard="select", grads_in_param_layout=grads_in_param_layout,
                                      flat_norm=flat_norm))(state, batch)
    assert float(ma["loss"]) == pytest.approx(float(mb["loss"]), rel=1e-6)
    assert float(ma["grad_norm"]) == pytest.approx(float(mb["grad_norm"]), rel=1e-6)
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9),
                           (a.params, a.opt_state, a.ema), (b.params, b.opt_state, b.ema))
    assert int(b.step) == 1 and int(b.nonfinite) == 0


def test_select_guard_keeps_the_state_after_a_non_finite_step():
    train_step, model, tx, state, batch = _tiny_step_inputs()
    bad = state.replace(params=jax.tree_util.tree_map(lambda p: p.at[(0,) * p.ndim].set(jnp.inf), state.params))
    new, metrics = jax.jit(lambda s, b: train_step(s, b, model=model, tx=tx, ema_decay=0.9,
                                                   guard="select"))(bad, batch)
    assert not np.isfinite(float(metrics["loss"]))
    jax.tree_util.tree_map(np.testing.assert_array_equal, (new.params, new.opt_state, new.ema),
                           (bad.params, bad.opt_state, bad.ema))
    assert int(new.nonfinite) == 1 and int(new.first_nonfinite) == 1 and int(new.step) == 1


def test_step_formulation_is_chosen_per_platform():
    from edsr_jax.nets import xla_options

    assert xla_options.step_formulation("cpu").guard == "cond"
    for platform in ("gpu", "tpu"):
        assert xla_options.step_formulation(platform).guard == "select"
    assert xla_options.step_formulation("gpu").grads_in_param_layout
    assert not xla_options.step_formulation("tpu").grads_in_param_layout
    assert xla_options.step_formulation("gpu").flat_norm
    assert not xla_options.step_formulation("cpu").flat_norm
    gpu = xla_options.step_formulation("gpu")
    assert gpu.flat_state and gpu.kernel_order == xla_options.CUDNN_FILTER_ORDER == (3, 0, 1, 2)
    for platform in ("cpu", "tpu"):
        assert not xla_options.step_formulation(platform).flat_state
    assert gpu.relu_from_output
    for platform in ("cpu", "tpu"):
        assert not xla_options.step_formulation(platform).relu_from_output
    assert gpu.fold_res_scale
    for platform in ("cpu", "tpu"):
        assert not xla_options.step_formulation(platform).fold_res_scale


def test_reader_counts_what_a_fusion_reads_by_parameter_index():
    """A fusion that only slices its big operand reads the slice; the operands are matched to
    the fused parameters by their index, not their order in the body."""
    text = """HloModule m

%fused (param_1.7: f32[4], param_0.3: f32[1000]) -> f32[4] {
  %param_1.7 = f32[4]{0} parameter(1)
  %param_0.3 = f32[1000]{0} parameter(0)
  %slice.1 = f32[4]{0} slice(%param_0.3), slice={[0:4]}
  ROOT %add.1 = f32[4]{0} add(%slice.1, %param_1.7)
}

ENTRY %main (a: f32[1000], b: f32[4]) -> f32[4] {
  %a = f32[1000]{0} parameter(0)
  %b = f32[4]{0} parameter(1)
  ROOT %fusion.1 = f32[4]{0} fusion(%a, %b), kind=kLoop, calls=%fused
}
"""
    (kernel,) = hlo_stats.program_stats(text).kernels
    assert kernel.bytes == 16 + 16 + 16  # the 4-element slice, b, and the output
    assert kernel.vpu_flops == 4


def test_reader_counts_a_fused_parameter_read_through_a_convert_and_slices_by_its_slices():
    """The flat train state's parameters (f32[1000]) are converted and sliced inside the fusions
    that cast each weight: only the slices are read, at the parameter's dtype."""
    text = """HloModule m

%fused (param_0.1: f32[1000]) -> (bf16[2,2], bf16[8]) {
  %param_0.1 = f32[1000]{0} parameter(0)
  %convert.1 = bf16[1000]{0} convert(%param_0.1)
  %slice.1 = bf16[4]{0} slice(%convert.1), slice={[0:4]}
  %bitcast.1 = bf16[2,2]{1,0} bitcast(%slice.1)
  %slice.2 = bf16[8]{0} slice(%convert.1), slice={[4:12]}
  ROOT %tuple.1 = (bf16[2,2]{1,0}, bf16[8]{0}) tuple(%bitcast.1, %slice.2)
}

ENTRY %main (a: f32[1000]) -> (bf16[2,2], bf16[8]) {
  %a = f32[1000]{0} parameter(0)
  ROOT %fusion.1 = (bf16[2,2]{1,0}, bf16[8]{0}) fusion(%a), kind=kLoop, calls=%fused
}
"""
    (kernel,) = hlo_stats.program_stats(text).kernels
    assert kernel.bytes == (4 + 8) * 4 + (4 + 8) * 2  # 12 f32 elements read, 12 bf16 written


def test_reader_counts_a_fused_parameter_scaled_then_sliced_by_its_slices():
    """The flat parameters multiplied by a factor vector made from an iota (``Flat.unravel``'s
    factors), converted and sliced: only the slices are read; a parameter read in full by an
    elementwise op whose result is not only sliced counts in full."""
    text = """HloModule m

%fused (param_0.1: f32[1000]) -> (bf16[4], bf16[8]) {
  %param_0.1 = f32[1000]{0} parameter(0)
  %iota.1 = s32[1000]{0} iota(), iota_dimension=0
  %c.1 = s32[] constant(4)
  %b.1 = s32[1000]{0} broadcast(%c.1), dimensions={}
  %lt.1 = pred[1000]{0} compare(%iota.1, %b.1), direction=LT
  %s.1 = f32[] constant(0.1)
  %bs.1 = f32[1000]{0} broadcast(%s.1), dimensions={}
  %o.1 = f32[] constant(1)
  %bo.1 = f32[1000]{0} broadcast(%o.1), dimensions={}
  %f.1 = f32[1000]{0} select(%lt.1, %bs.1, %bo.1)
  %mul.1 = f32[1000]{0} multiply(%param_0.1, %f.1)
  %convert.1 = bf16[1000]{0} convert(%mul.1)
  %slice.1 = bf16[4]{0} slice(%convert.1), slice={[0:4]}
  %slice.2 = bf16[8]{0} slice(%convert.1), slice={[4:12]}
  ROOT %tuple.1 = (bf16[4]{0}, bf16[8]{0}) tuple(%slice.1, %slice.2)
}

%fused.2 (param_0.2: f32[1000]) -> f32[] {
  %param_0.2 = f32[1000]{0} parameter(0)
  %mul.2 = f32[1000]{0} multiply(%param_0.2, %param_0.2)
  %z.2 = f32[] constant(0)
  ROOT %r.2 = f32[] reduce(%mul.2, %z.2), dimensions={0}, to_apply=%add
}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %s = f32[] add(%x, %y)
}

ENTRY %main (a: f32[1000]) -> ((bf16[4], bf16[8]), f32[]) {
  %a = f32[1000]{0} parameter(0)
  %fusion.1 = (bf16[4]{0}, bf16[8]{0}) fusion(%a), kind=kLoop, calls=%fused
  %fusion.2 = f32[] fusion(%a), kind=kInput, calls=%fused.2
  ROOT %t = ((bf16[4]{0}, bf16[8]{0}), f32[]) tuple(%fusion.1, %fusion.2)
}
"""
    first, second = hlo_stats.program_stats(text).kernels
    assert first.bytes == (4 + 8) * 4 + (4 + 8) * 2  # 12 f32 elements read, 12 bf16 written
    assert second.bytes == 1000 * 4 + 4
