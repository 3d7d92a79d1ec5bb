"""EDSR's tail convolution on the grid before its last pixel shuffle (``nets.edsr.lr_grid_kernel``,
``Conv``'s ``input_shuffle``, ``EDSR.tail_on_lr_grid``; the TPU's ``StepFormulation.tail_on_lr_grid``
and ``xla_options.tail_on_lr_grid``): the same parameters and function, the HR kernel remapped to
a kernel over the un-shuffled channels so that only the 3 r r-channel result is shuffled (by a
transposed convolution, ``pixel_shuffle_conv``). The remap is exact (float64 reference), the
shuffle bit for bit; the model, its gradients and the masked inference agree with
today's to float32 rounding at x2, x3, x4; CPU and GPU keep today's program."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from edsr_jax.inference import infer
from edsr_jax.nets import xla_options
from edsr_jax.nets.edsr import (EDSR, Conv, ModelConfig, lr_grid_kernel, pixel_shuffle,
                                 pixel_shuffle_conv)
from edsr_jax.training import config as config_lib
from edsr_jax.training.step import compile_train_step
from conftest import tiny_state_and_batch


def _shuffle64(u: np.ndarray, r: int) -> np.ndarray:
    """PyTorch's pixel shuffle in NumPy: (N, H, W, C r r) -> (N, H r, W r, C)."""
    n, h, w, crr = u.shape
    return u.reshape(n, h, w, crr // (r * r), r, r).transpose(0, 1, 4, 2, 5, 3).reshape(
        n, h * r, w * r, crr // (r * r))


def _conv64(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """'SAME' zero-padded stride-1 convolution in float64, tap by tap: (N, H, W, C) with
    (k, k, C, O) -> (N, H, W, O)."""
    k = kernel.shape[0]
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    h, w = x.shape[1:3]
    return sum(np.einsum("nhwc,co->nhwo", xp[:, dy:dy + h, dx:dx + w], kernel[dy, dx])
               for dy in range(k) for dx in range(k))


@pytest.mark.parametrize("k,r", [(3, 1), (3, 2), (3, 3), (5, 2)])
def test_lr_grid_kernel_is_the_shuffled_convolution_exactly(k, r):
    """float64 NumPy: the HR convolution of ``pixel_shuffle(u, r)`` equals the pixel shuffle of
    the convolution of ``u`` with ``lr_grid_kernel`` to 1e-12 of the output's scale (float64
    rounding of sums of ~100 terms in another order; a misplaced tap is off by O(1)). The
    remapped kernel holds each entry r r times and zeros elsewhere (a gather: exact)."""
    rng = np.random.default_rng(r * 10 + k)
    c, o = 4, 3
    kernel = rng.standard_normal((k, k, c, o)).astype(np.float32)
    big = np.asarray(lr_grid_kernel(jnp.asarray(kernel), r), np.float64)
    m = 2 * -(-(k // 2) // r) + 1
    assert big.shape == (m, m, c * r * r, o * r * r)
    values, counts = np.unique(big[big != 0], return_counts=True)
    np.testing.assert_array_equal(np.sort(values), np.sort(kernel.ravel().astype(np.float64)))
    assert set(counts) == {r * r}
    u = rng.standard_normal((2, 5, 6, c * r * r))
    want = _conv64(_shuffle64(u, r), kernel.astype(np.float64))
    got = _shuffle64(_conv64(u, big), r)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("r", [2, 3])
def test_pixel_shuffle_as_a_transposed_convolution_is_the_pixel_shuffle(dtype, r):
    """``pixel_shuffle_conv`` (the LR tail's shuffle) gives ``pixel_shuffle``'s values and input
    gradient bit for bit (one input times 1 per output), large values included."""
    rng = np.random.default_rng(r)
    x = jnp.asarray(rng.standard_normal((2, 5, 7, 3 * r * r)) * 1e3, dtype)
    g = jnp.asarray(rng.standard_normal((2, 5 * r, 7 * r, 3)), dtype)
    (a, vjp_a), (b, vjp_b) = (jax.vjp(lambda v: f(v, r), x) for f in (pixel_shuffle_conv, pixel_shuffle))
    assert a.dtype == b.dtype == dtype
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    np.testing.assert_array_equal(np.asarray(vjp_a(g)[0], np.float32), np.asarray(vjp_b(g)[0], np.float32))


def _close(x, y):
    """Equal to float32 rounding: within 1e-5 of the reference array's largest magnitude (the
    two orders sum up to 9 C r r products differently; through 2 blocks the float32 error is
    ~1e-6 of the scale, while a wrong remap is off by the scale itself)."""
    x, y = np.asarray(x), np.asarray(y)
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-5 * float(np.abs(y).max()) + 1e-30)


@pytest.mark.parametrize("r", [2, 3])
def test_conv_with_input_shuffle_is_conv_of_the_shuffled_input(r):
    """``Conv(input_shuffle=r)`` on ``u`` equals ``Conv`` on ``pixel_shuffle(u, r)`` with the same
    parameters (float32, ``_close``), and takes the same parameter tree."""
    u = jnp.asarray(np.random.default_rng(r).standard_normal((2, 5, 7, 8 * r * r)), jnp.float32)
    plain, lr = Conv(3, 8), Conv(3, 8, input_shuffle=r)
    shuffled = u.reshape(2, 5, 7, 8, r, r).transpose(0, 1, 4, 2, 5, 3).reshape(2, 5 * r, 7 * r, 8)
    params = plain.init(jax.random.key(0), shuffled)
    assert jax.tree_util.tree_structure(lr.init(jax.random.key(0), u)) == jax.tree_util.tree_structure(params)
    _close(lr.apply(params, u), plain.apply(params, shuffled))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_edsr_tail_on_the_lr_grid_forward_and_gradients(scale):
    """float32, 2 blocks of 8 features, res_scale 0.1: the same parameters (tree and initial
    values); the output and the gradient of an L2 loss with respect to every parameter equal
    today's to float32 rounding (``_close``). At x4 the remap takes the second x2 stage (the
    first stays a shuffle of the upsampler's output). The LR-grid program does gather the
    kernel (so it ran); today's does not."""
    model = EDSR(scale=scale, num_blocks=2, num_features=8, res_scale=0.1)
    other = model.clone(tail_on_lr_grid=True)
    rng = np.random.default_rng(scale)
    x = jnp.asarray(rng.uniform(0, 255, (2, 7, 9, 3)), jnp.float32)
    target = jnp.asarray(rng.uniform(0, 255, (2, 7 * scale, 9 * scale, 3)), jnp.float32)
    params = model.init(jax.random.key(0), x)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, other.init(jax.random.key(0), x))
    _close(other.apply(params, x), model.apply(params, x))

    def grads(m):
        return jax.jit(jax.grad(lambda p: jnp.mean((m.apply(p, x) - target) ** 2)))(params)

    jax.tree_util.tree_map(_close, grads(other), grads(model))
    assert "gather" in str(jax.make_jaxpr(other.apply)(params, x))
    assert "gather" not in str(jax.make_jaxpr(model.apply)(params, x))


@pytest.mark.parametrize("scale", [2, 4])
def test_masked_inference_with_the_tail_on_the_lr_grid(scale):
    """``infer.apply_masked`` with the tail on the LR grid (its input masked on that grid) on an
    image in a frame of large values equals ``infer.apply`` on the image alone (float32,
    ``_close``), as today's tail does."""
    config = ModelConfig(scale, 2, 8, 1.0)
    rng = np.random.default_rng(scale)
    img = rng.uniform(0, 255, (1, 13, 17, 3)).astype(np.float32)
    x = np.full((1, 24, 28, 3), 255.0, np.float32)
    x[:, 5:18, 7:24] = img
    params = config.build().init(jax.random.key(1), jnp.asarray(img))["params"]
    want = np.asarray(infer.apply(params, img, config))
    for lr_tail in (False, True):
        got = np.asarray(infer.apply_masked(params, x, np.array([[5, 18, 7, 24]], np.int32), config,
                                            tail_on_lr_grid=lr_tail))
        _close(got[:, 5 * scale:18 * scale, 7 * scale:24 * scale], want)


def test_the_tail_is_chosen_per_platform():
    """TPU runs the tail on the LR grid in the train step and in inference; CPU and GPU do not."""
    assert xla_options.step_formulation("tpu").tail_on_lr_grid
    assert xla_options.tail_on_lr_grid("tpu")
    for platform in ("cpu", "gpu", "cuda"):
        assert not xla_options.step_formulation(platform).tail_on_lr_grid
        assert not xla_options.tail_on_lr_grid(platform)


def test_cpu_programs_keep_the_tail_after_the_shuffle():
    """On CPU the train step (``compile_train_step`` with CPU's formulation) and the Upscaler's
    jitted forward pass (``infer.jitted``, platform default) gather no kernel: today's programs;
    the step with ``tail_on_lr_grid`` asked for (the TPU's choice, on CPU) gathers it and computes
    the same state to float32 rounding (``_close``)."""
    tx = optax.adam(1e-3)
    model, state, batch = tiny_state_and_batch(tx, num_blocks=2)
    cfg = config_lib.base_config()
    cfg.data.batch_size, cfg.train.ema = 2, 0.9
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    shape = jax.eval_shape(lambda: state)
    cpu = xla_options.step_formulation("cpu")
    results = []
    for form in (cpu, xla_options.StepFormulation(cpu.guard, cpu.grads_in_param_layout,
                                                  tail_on_lr_grid=True)):
        step = compile_train_step(model, tx, cfg, mesh, shape, formulation=form)
        assert ("gather" in str(step.trace(shape, batch).jaxpr)) == form.tail_on_lr_grid, form
        results.append(step(jax.tree_util.tree_map(jnp.copy, state), batch))
    (a, ma), (b, mb) = results
    assert float(mb["loss"]) == pytest.approx(float(ma["loss"]), rel=1e-5)
    jax.tree_util.tree_map(_close, (b.params, b.opt_state, b.ema), (a.params, a.opt_state, a.ema))
    config = ModelConfig(2, 2, 8, 1.0)
    x, bounds = np.zeros((1, 16, 16, 3), np.float32), np.array([[0, 16, 0, 16]], np.int32)
    for lr_tail in (None, True):
        text = infer.jitted(config, conv_backend="xla", tail_on_lr_grid=lr_tail).lower(
            state.params, x, bounds).as_text()
        assert ("gather" in text) == bool(lr_tail), lr_tail
