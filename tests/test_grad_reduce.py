"""train.grad_reduce_dtype: a bfloat16 model's gradients summed over the devices in float32
(the default) or in bfloat16 ("compute"), checked on 4 CPU devices in a fresh process."""

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

SCRIPT = textwrap.dedent(r'''
    import re
    import jax, jax.numpy as jnp, numpy as np
    from edsr_jax.nets.edsr import ModelConfig
    from edsr_jax.training import config as config_lib
    from edsr_jax.training.loss import pixel_loss
    from edsr_jax.training.optim import make_optimizer
    from edsr_jax.training.sharding import make_mesh, make_shardings
    from edsr_jax.training.state import create_train_state
    from edsr_jax.training.step import compile_train_step, grad_reduce_dtype, reduced_in

    assert jax.device_count() == 4
    mesh = make_mesh()
    model = ModelConfig(2, 2, 8).build(dtype=jnp.bfloat16, conv_backend="xla")
    params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    rng = np.random.default_rng(0)
    lr = rng.integers(0, 256, (8, 12, 12, 3)).astype(np.float32)
    hr = rng.integers(0, 256, (8, 24, 24, 3)).astype(np.float32)
    loss_of = lambda p, lr, hr: pixel_loss(model.apply(p, lr), hr, "l1")

    # float32: the mean of the four devices' own gradients, summed in float32
    got_v, got = jax.jit(lambda p, a, b: reduced_in(mesh, jnp.float32)(loss_of, p, a, b))(params, lr, hr)
    parts = [jax.jit(jax.value_and_grad(loss_of))(params, lr[i:i + 2], hr[i:i + 2]) for i in range(0, 8, 2)]
    want = jax.tree_util.tree_map(lambda *g: np.mean(np.stack(g), 0, dtype=np.float64), *[g for _, g in parts])
    err = max(float(np.max(np.abs(np.asarray(a) - b)) / (np.max(np.abs(b)) + 1e-30))
              for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)))
    assert err < 1e-6, err
    assert abs(float(got_v) - np.mean([float(v) for v, _ in parts])) < 1e-4
    assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(got))

    # the compiled train step sums every gradient in float32 (on CPU XLA does so for "compute" too;
    # the GPU dry-run, tests/test_accelerators.py, shows the bfloat16 all-reduce it replaces)
    c = config_lib.base_config()
    c.model.dtype, c.data.batch_size = "bfloat16", 8
    tx, _ = make_optimizer(c.optim, 10)
    shape = jax.eval_shape(lambda: create_train_state(model, tx, jax.random.key(0), use_ema=False))
    step = compile_train_step(model, tx, c, mesh, shape, shardings=make_shardings(mesh, shape))
    batch = {"lr": jax.ShapeDtypeStruct((8, 12, 12, 3), jnp.uint8),
             "hr": jax.ShapeDtypeStruct((8, 24, 24, 3), jnp.uint8)}
    text = step.lower(shape, batch).compile().as_text()
    lines = [l for l in text.splitlines() if re.search(r"all-reduce(-start)?\(", l)]
    types = [t for l in lines for t in re.findall(r"\b(f32|bf16|f16)\[[\d,]+\]", l.split(" all-reduce")[0])]
    assert grad_reduce_dtype(c, mesh) == jnp.float32 and types and set(types) == {"f32"}, lines
    assert sum(1 for l in lines for _ in re.findall(r"f32\[\d", l.split(" all-reduce")[0])) >= 2 * 6
    print("OK", err)
''')


def test_bfloat16_gradients_are_summed_in_float32_by_default():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr[-3000:]


def test_the_choice_is_checked():
    from edsr_jax.training import config as config_lib

    c = config_lib.base_config()
    assert c.train.grad_reduce_dtype == "float32"
    c.train.grad_reduce_dtype = "bfloat16"
    with pytest.raises(ValueError, match=r"train\.grad_reduce_dtype = 'bfloat16': must be one of \('float32', 'compute'\)"):
        config_lib.validate(c)
