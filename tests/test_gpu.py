"""On a real NVIDIA GPU only (``pytest -m gpu``; ``python benchmarks/run_all.py --device gpu``
runs them): the trainer's step as the GPU compiles and runs it, and inference against the CPU.

Elsewhere every test here skips: the same programs are checked without a device by
``tests/test_accelerators.py`` (compiled for H100s and TPUs from this CPU).
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs an NVIDIA GPU")]

sys.path.insert(0, str(ROOT / "benchmarks"))


def _step_and_state(dtype: str, batch_per_device: int = 4, flat: bool | None = None):
    """The trainer's step and a fresh state, in the form the trainer keeps it on the GPU
    (``flat`` None: ``StepFormulation.flat_state``), and a batch."""
    from edsr_jax.nets import xla_options
    from edsr_jax.training import config as config_lib
    from edsr_jax.training.optim import make_optimizer
    from edsr_jax.training.sharding import make_mesh, make_shardings
    from edsr_jax.training.state import create_train_state
    from edsr_jax.training.step import compile_train_step
    from edsr_jax.nets.edsr import DTYPES, ModelConfig

    model = ModelConfig(2, 2, 16, 1.0).build(dtype=DTYPES[dtype])
    cfg = config_lib.base_config()
    mesh = make_mesh()
    cfg.data.batch_size = batch_per_device * mesh.size
    tx, _ = make_optimizer(cfg.optim)
    form = xla_options.step_formulation()
    flat = form.flat_state if flat is None else flat
    init = lambda key: create_train_state(model, tx, key, use_ema=False, flat=flat,  # noqa: E731
                                          kernel_order=form.kernel_order)
    shardings = make_shardings(mesh, jax.eval_shape(init, jax.random.key(0)))
    step = compile_train_step(model, tx, cfg, mesh, jax.eval_shape(init, jax.random.key(0)),
                              shardings=shardings)
    state = jax.jit(init, out_shardings=shardings[2])(jax.random.key(0))
    rng = np.random.default_rng(0)
    n = cfg.data.batch_size
    batch = jax.device_put({"lr": rng.integers(0, 256, (n, 24, 24, 3), dtype=np.uint8),
                            "hr": rng.integers(0, 256, (n, 48, 48, 3), dtype=np.uint8)}, shardings[1])
    return step, state, batch


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_train_step_on_the_gpu_has_no_conditional_host_transfer_or_state_copy(dtype):
    import hlo_stats

    step, state, batch = _step_and_state(dtype)
    stats = hlo_stats.program_stats(step.lower(state, batch).compile().as_text())
    assert stats.conditionals == 0 and stats.host_transfers == []
    assert stats.copy_bytes <= 16 * 1024, stats.copy_bytes  # no parameter-sized copy
    assert stats.kinds.get("cudnn", 0) > 0
    losses = []
    for _ in range(5):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert int(state.step) == 5 and int(state.nonfinite) == 0


def test_the_flat_state_steps_as_the_tree_state_on_the_gpu():
    """The GPU's flat state (one update over all parameters) and the tree state: the same loss
    and, after 3 steps, the same parameters to float32 rounding of differently fused kernels
    (rtol 1e-5; Adam's first steps move each weight by about lr whatever its gradient)."""
    from edsr_jax.training.state import to_tree

    (sf, stf, b), (st, stt, _) = _step_and_state("float32", flat=True), _step_and_state("float32", flat=False)
    for _ in range(3):
        stf, mf = sf(stf, b)
        stt, mt = st(stt, b)
        assert float(mf["loss"]) == pytest.approx(float(mt["loss"]), rel=1e-5)
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7),
                           to_tree(stf).params, stt.params)


def test_bfloat16_and_float32_steps_agree():
    """bfloat16 compute with float32 params: the first loss within 1 % of float32's (8 bits of
    mantissa in the activations; a mean over many pixels)."""
    (s16, st16, b16), (s32, st32, b32) = _step_and_state("bfloat16"), _step_and_state("float32")
    _, m16 = s16(st16, b16)
    _, m32 = s32(st32, b32)
    assert float(m16["loss"]) == pytest.approx(float(m32["loss"]), rel=1e-2)


def test_upscaler_on_the_gpu_matches_the_cpu():
    """The same weights upscale alike on GPU and CPU at full float32 precision ('highest':
    no TF32), to 1e-3 of the [0, 255] range after rounding to uint8 at most 1 level."""
    from edsr_jax.inference import infer
    from edsr_jax.nets.edsr import ModelConfig

    config = ModelConfig(2, 2, 16, 1.0)
    params = config.build().init(jax.random.key(1), jnp.zeros((1, 8, 8, 3)))
    lr = np.random.default_rng(1).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    with jax.default_matmul_precision("highest"):
        gpu = infer.Upscaler(config, params).predict(lr)
        with jax.default_device(jax.devices("cpu")[0]):
            cpu = np.asarray(infer.apply(jax.device_put(params, jax.devices("cpu")[0]),
                                         lr[None].astype(np.float32), config))[0]
    np.testing.assert_allclose(gpu, cpu, atol=0.255)
