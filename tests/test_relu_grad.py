"""The ReLU differentiated from its output (``nets.edsr.relu_from_output``, the GPU step's
``StepFormulation.relu_from_output``): the same values and derivative as ``jax.nn.relu``, the
same parameters, and the same train step as the ReLU JAX differentiates from its input."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from edsr_jax.nets import xla_options
from edsr_jax.nets.edsr import ModelConfig, relu_from_output
from edsr_jax.training import config as config_lib
from conftest import tiny_state_and_batch
from edsr_jax.training.step import compile_train_step, train_step

# 0, -0, the smallest subnormals and normals either side, +-inf, NaN and ordinary values
SPECIAL = [0.0, -0.0, 1e-45, -1e-45, 1.2e-38, -1.2e-38, 1.0, -1.0, 3.5, -2.25, np.inf, -np.inf, np.nan]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_relu_from_output_is_jax_relu_and_its_derivative_bit_for_bit(dtype):
    """Values and vector-Jacobian products equal ``jax.nn.relu``'s bit for bit, at 0 (and -0,
    subnormals, infinities, NaN) too: the derivative passes ``g`` exactly where x > 0."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(np.concatenate([SPECIAL, rng.standard_normal(200)]), dtype)
    g = jnp.asarray(rng.standard_normal(x.shape) * 3.0, dtype)
    y_ref, vjp_ref = jax.vjp(jax.nn.relu, x)
    y, vjp = jax.vjp(relu_from_output, x)
    as_bits = lambda a: np.asarray(a).view(np.uint16 if a.dtype == jnp.bfloat16 else np.uint32)  # noqa: E731
    np.testing.assert_array_equal(as_bits(y), as_bits(y_ref))
    np.testing.assert_array_equal(as_bits(vjp(g)[0]), as_bits(vjp_ref(g)[0]))
    # under jit too (XLA may simplify the comparison; the barrier keeps it on the output)
    jitted = jax.jit(lambda x, g: jax.vjp(relu_from_output, x)[1](g)[0])
    np.testing.assert_array_equal(as_bits(jitted(x, g)), as_bits(vjp_ref(g)[0]))
    grad_at_zero = jax.grad(lambda x: relu_from_output(x).sum())(jnp.zeros(3, dtype))
    np.testing.assert_array_equal(np.asarray(grad_at_zero, np.float32), 0.0)


def test_the_option_keeps_the_parameters():
    """``relu_grad_from_output`` adds no parameter: the same tree, shapes and initial values."""
    config = ModelConfig(2, 2, 8, 1.0)
    x = jnp.zeros((1, 8, 8, 3))
    a = config.build().init(jax.random.key(0), x)
    b = config.build().clone(relu_grad_from_output=True).init(jax.random.key(0), x)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def _inputs():
    tx = optax.adam(1e-3)
    return (tx, *tiny_state_and_batch(tx, num_blocks=2))


@pytest.mark.parametrize("guard", ["cond", "select"])
def test_train_step_with_the_relu_from_output_matches_todays(guard):
    """One train step with the blocks' ReLUs differentiated from their output gives the same
    loss, gradient norm, gradients, parameters, Adam moments and EMA as with ``nn.relu``, to
    float32 rounding of differently fused kernels (rtol 1e-6, atol 1e-9), on CPU."""
    tx, model, state, batch = _inputs()
    other = model.clone(relu_grad_from_output=True)
    lr, hr = batch["lr"].astype(np.float32), batch["hr"].astype(np.float32)
    grad = lambda m: jax.jit(jax.grad(lambda p: jnp.mean(jnp.abs(m.apply(p, lr) - hr))))(state.params)  # noqa: E731
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9),
                           grad(model), grad(other))
    step = lambda m: jax.jit(functools.partial(train_step, model=m, tx=tx, ema_decay=0.9, guard=guard))  # noqa: E731
    a, ma = step(model)(state, batch)
    b, mb = step(other)(state, batch)
    assert float(mb["loss"]) == pytest.approx(float(ma["loss"]), rel=1e-6)
    assert float(mb["grad_norm"]) == pytest.approx(float(ma["grad_norm"]), rel=1e-6)
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9),
                           (a.params, a.opt_state, a.ema), (b.params, b.opt_state, b.ema))


def test_compile_train_step_threads_the_formulation_to_the_model():
    """``compile_train_step`` with a formulation asking for it runs the ReLU differentiated from
    its output (its forward's barrier is in the program), CPU's own formulation does not, and both
    steps compute the same state (rtol 1e-6)."""
    tx, model, state, batch = _inputs()
    cfg = config_lib.base_config()
    cfg.data.batch_size, cfg.train.ema = 2, 0.9
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    shape = jax.eval_shape(lambda: state)
    cpu = xla_options.step_formulation("cpu")
    forced = xla_options.StepFormulation(cpu.guard, cpu.grads_in_param_layout, relu_from_output=True)
    results = []
    for form in (cpu, forced):
        step = compile_train_step(model, tx, cfg, mesh, shape, formulation=form)
        jaxpr = str(step.trace(shape, batch).jaxpr)
        assert ("optimization_barrier" in jaxpr) == form.relu_from_output, form
        results.append(step(jax.tree_util.tree_map(jnp.copy, state), batch))
    (a, ma), (b, mb) = results
    assert float(mb["loss"]) == pytest.approx(float(ma["loss"]), rel=1e-6)
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9),
                           (a.params, a.opt_state, a.ema), (b.params, b.opt_state, b.ema))
