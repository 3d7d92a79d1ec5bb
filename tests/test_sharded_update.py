"""The flat state split over the devices (``StepFormulation.shard_update``; ``step.ShardedUpdate``):
on 4 CPU devices (fresh processes) its step computes the replicated flat step's loss, gradient
norm, parameters, moments and EMA; the guard skips a non-finite step on every device; the
trainer's checkpoints (the tree form) resume across the two layouts and device counts."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import ROOT
from test_flat_state import FLAT
from test_train import CACHE, TINY, assert_close, final_params

SCRIPT = textwrap.dedent(r'''
    import dataclasses, re
    import jax, jax.numpy as jnp, numpy as np
    from edsr_jax.nets import xla_options
    from edsr_jax.nets.edsr import ModelConfig
    from edsr_jax.training import config as config_lib
    from edsr_jax.training.optim import make_optimizer
    from edsr_jax.training.sharding import make_mesh, make_shardings
    from edsr_jax.training.state import Flat, create_train_state, to_flat, to_tree
    from edsr_jax.training.step import compile_train_step

    def flats(state):  # params, EMA, Adam's mu and nu
        return [x for x in jax.tree_util.tree_leaves(state, is_leaf=lambda v: isinstance(v, Flat))
                if isinstance(x, Flat)]

    assert jax.device_count() == 4
    mesh = make_mesh()
    P = jax.sharding.PartitionSpec
    rng = np.random.default_rng(0)
    batch = {"lr": rng.integers(0, 256, (8, 12, 12, 3), dtype=np.uint8),
             "hr": rng.integers(0, 256, (8, 24, 24, 3), dtype=np.uint8)}
    gpu = xla_options.step_formulation("gpu")  # flat, OHWI, select, res_scale folded
    for dtype, res_scale, clip in [("float32", 1.0, 0.0), ("bfloat16", 0.1, 1.0)]:
        model = ModelConfig(2, 2, 8, res_scale).build(dtype=getattr(jnp, dtype), conv_backend="xla")
        c = config_lib.base_config()
        c.model.dtype, c.data.batch_size, c.train.ema, c.optim.clip_norm = dtype, 8, 0.9, clip
        tx, _ = make_optimizer(c.optim, 10)
        tree = create_train_state(model, tx, jax.random.key(0), use_ema=True)
        runs = {}
        for shard in (False, True):
            form = dataclasses.replace(gpu, grads_in_param_layout=False, relu_from_output=False,
                                       shard_update=shard)
            flat = to_flat(tree, form.kernel_order, 4 if shard else 1)
            shape = jax.eval_shape(lambda: flat)
            step = compile_train_step(model, tx, c, mesh, shape, formulation=form)
            state = jax.device_put(jax.tree_util.tree_map(np.asarray, flat),
                                   make_shardings(mesh, shape, shard_flat=shard).state)
            metrics = []
            for _ in range(2):
                state, m = step(state, batch)
                metrics.append({k: float(v) for k, v in m.items()})
            want = P("data") if shard else P()
            assert len(flats(state)) == 4 and all(x.array.sharding.spec == want for x in flats(state))
            runs[shard] = (metrics, jax.tree_util.tree_map(np.asarray, to_tree(jax.device_get(state))))
            if shard:  # the gradient reduce-scattered, the parameters all-gathered (in bfloat16 for a bfloat16 model)
                text = step.lower(shape, batch).compile().as_text()
                ops = {op: [re.findall(r"(\w+)\[([\d,]*)\]", line.split(f" {op}(")[0].split(" = ", 1)[1])
                            for line in text.splitlines() if f" {op}(" in line]
                       for op in ("reduce-scatter", "all-gather", "all-reduce")}  # results: dtype, shape
                n = flat.params.array.size
                assert ops["reduce-scatter"] == [[("f32", str(n // 4))]], ops
                assert ops["all-gather"] == [[("f32", str(n))]], ops  # XLA:CPU gathers bfloat16 as float32
                gathered = "bf16" if dtype == "bfloat16" else "f32"  # what the step asks for
                lowered = [l for l in step.lower(shape, batch).as_text().splitlines() if "stablehlo.all_gather" in l]
                assert len(lowered) == 1 and f"(tensor<{n // 4}x{gathered}>) -> tensor<{n}x{gathered}>" in lowered[0], lowered
                assert all(size in ("", "1", "2") for r in ops["all-reduce"] for _, size in r), ops  # scalars only
        (ma, a), (mb, b) = runs[False], runs[True]
        for x, y in zip(ma, mb):
            for k in ("loss", "grad_norm"):
                assert abs(x[k] - y[k]) <= 1e-6 * abs(x[k]), (dtype, k, x[k], y[k])
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
            np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-6 * float(np.abs(x).max()) + 1e-12)
        assert int(b.step) == 2 and int(b.nonfinite) == 0

        # the guard: an infinity in one device's share makes every device keep its share
        bad = to_flat(tree, gpu.kernel_order, 4)
        at = bad.params.array.size - 5  # in the last device's share (the 4 last are the pad, or params)
        bad = bad.replace(params=Flat(bad.params.array.at[at].set(np.inf), bad.params.layout))
        form = dataclasses.replace(gpu, shard_update=True)
        shape = jax.eval_shape(lambda: bad)
        step = compile_train_step(model, tx, c, mesh, shape, formulation=form)
        host = jax.tree_util.tree_map(np.asarray, bad)
        new, m = step(jax.device_put(host, make_shardings(mesh, shape, shard_flat=True).state), batch)
        assert not np.isfinite(float(m["loss"])) and int(new.nonfinite) == 1 and int(new.first_nonfinite) == 1
        for got, old in zip(flats(new), flats(host)):
            shards = got.array.addressable_shards
            assert len(shards) == 4
            for s in shards:
                np.testing.assert_array_equal(np.asarray(s.data), old.array[s.index])
    print("OK")
''')


def _devices(n: int) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")


def test_the_sharded_step_is_the_replicated_flat_step():
    """Two steps, float32 (res_scale 1) and bfloat16 (res_scale 0.1 folded, clipping on): the
    same loss and gradient norm (rel 1e-6), parameters, Adam's moments and EMA (rtol 1e-6 and
    atol 1e-6 of each array's largest value: float32 rounding, the sums of the norm and of the
    devices' gradients running in another order); the state stays split; the
    compiled step reduce-scatters the gradient in float32 and all-gathers the parameters in the
    compute dtype. A non-finite step leaves every device's share as it was."""
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=_devices(4), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr[-3000:]


def test_flat_arrays_must_split_evenly():
    import jax
    import optax

    from conftest import tiny_state_and_batch
    from edsr_jax.training.sharding import make_shardings
    from edsr_jax.training.state import to_flat

    _, state, _ = tiny_state_and_batch(optax.adam(1e-3))
    flat = to_flat(state)
    n = flat.params.array.size
    make_shardings(jax.sharding.AbstractMesh((1,), ("data",)), flat, shard_flat=True)  # any size splits once
    more = jax.sharding.AbstractMesh((n + 1,), ("data",))
    with pytest.raises(ValueError, match=rf"a flat array of {n} elements does not split over {n + 1} devices"):
        make_shardings(more, flat, shard_flat=True)
    padded = to_flat(state, multiple=n + 1)
    assert padded.params.array.size == n + 1 and float(padded.params.array[-1]) == 0.0
    make_shardings(more, padded, shard_flat=True)


# The trainer with the GPU's flat state and its update split over the devices, forced on CPU.
SHARDED = FLAT.replace("kernel_order=x.CUDNN_FILTER_ORDER", "kernel_order=x.CUDNN_FILTER_ORDER, shard_update=True")


def _train(workdir, sharded: bool, devices: int, *overrides):
    program = ["-c", SHARDED] if sharded else ["-m", "edsr_jax.train"]
    cmd = [sys.executable, *program, f"--config={TINY}", f"--workdir={workdir}",
           f"--config.data.cache_dir={CACHE}", "--config.train.ema=0.9", *overrides]
    r = subprocess.run(cmd, cwd=ROOT, env=_devices(devices), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert ("split over the" in r.stderr) == (sharded and devices > 1), r.stderr
    return r


def _last_psnr(workdir) -> float:
    records = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return [r for r in records if "psnr" in r][-1]["psnr"]


@pytest.mark.slow
def test_checkpoints_resume_across_layouts_and_device_counts(tmp_path):
    """3 steps split over 4 devices, resumed for 3 more replicated (CPU's tree form) on 2, and
    the reverse (1 device's tree, then split over 4); against 6 straight steps on one device:
    equal to float32 rounding (rtol 1e-5 after 6 steps, as the 4-device test), params and EMA,
    and the final evaluation's PSNR (1e-3 dB) whichever layout evaluated it. A run split over 4 devices starts from another's weights (``train.init_from``)."""
    from edsr_jax.training.restore import restore_params

    _train(tmp_path / "straight", False, 1)
    for name, first, second in [("a", (True, 4), (False, 2)), ("b", (False, 1), (True, 4))]:
        _train(tmp_path / name, *first, "--config.train.steps=3")
        assert "resuming from step 3" in _train(tmp_path / name, *second).stderr
        assert_close(final_params(tmp_path / name), final_params(tmp_path / "straight"), 1e-5)
        ema_of = lambda w: restore_params(w, prefer_ema=True)[1]  # noqa: E731
        assert_close(ema_of(tmp_path / name), ema_of(tmp_path / "straight"), 1e-5)
        # the last evaluation (b: of the split state's EMA, gathered) scores the same weights
        assert _last_psnr(tmp_path / name) == pytest.approx(_last_psnr(tmp_path / "straight"), abs=1e-3)
    r = _train(tmp_path / "tuned", True, 4, "--config.train.steps=1", "--config.model.scale=4",
               f"--config.train.init_from={tmp_path / 'straight'}")
    assert "loaded 12 arrays" in r.stderr
