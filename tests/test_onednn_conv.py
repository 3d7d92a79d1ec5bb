"""oneDNN convolutions (edsr_jax/nets/onednn_conv.py) against XLA's convolution and float64 NumPy.

Tolerances: both sides compute in float32 with different summation orders; the reference
values are float64. Relative to the largest magnitude of each output: 2e-6 for the small
shapes (sums of at most a few hundred terms), 5e-6 at training size (sums of 36,864 terms,
measured 1-2e-6), 1e-4 through a whole EDSR (two float32 computations compared).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edsr_jax.training import config as config_lib
from edsr_jax.nets import onednn_conv
from edsr_jax.nets.edsr import ModelConfig

needs_onednn = pytest.mark.skipif(not onednn_conv.available(),
                                  reason=f"oneDNN convolution: {onednn_conv.load_error()}")


def numpy_conv(x, k):
    """float64 'SAME' stride-1 convolution, NHWC x HWIO (direct sum over the taps)."""
    x, k = np.asarray(x, np.float64), np.asarray(k, np.float64)
    r = k.shape[0] // 2
    n, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (r, r), (r, r), (0, 0)))
    y = np.zeros((n, h, w, k.shape[3]))
    for i in range(k.shape[0]):
        for j in range(k.shape[1]):
            y += np.einsum("nhwc,co->nhwo", xp[:, i:i + h, j:j + w], k[i, j])
    return y


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def xla_conv(x, k, b):
    return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + b


SHAPES = [  # (N, H, W, C_in, C_out, k): EDSR's layers in small, odd sizes, 3 channels, 5x5
    (2, 9, 11, 3, 8, 3),
    (3, 7, 6, 16, 48, 3),
    (1, 12, 10, 8, 3, 3),
    (2, 6, 9, 4, 5, 5),
    (1, 1, 1, 4, 4, 3),
]


@needs_onednn
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_gradients_match_float64_and_xla(shape):
    n, h, w, ci, co, k = shape
    rng = np.random.default_rng(sum(shape))
    x = jnp.asarray(rng.uniform(-1, 1, (n, h, w, ci)), jnp.float32)
    kernel = jnp.asarray(rng.uniform(-1, 1, (k, k, ci, co)), jnp.float32)
    bias = jnp.asarray(rng.uniform(-1, 1, (co,)), jnp.float32)
    dy = jnp.asarray(rng.uniform(-1, 1, (n, h, w, co)), jnp.float32)

    def value_and_grads(conv):
        y, vjp = jax.vjp(conv, x, kernel, bias)
        return (y, *vjp(dy))

    ours = jax.jit(lambda: value_and_grads(onednn_conv.conv))()
    xla = jax.jit(lambda: value_and_grads(xla_conv))()
    # float64 references: y = conv(x, k) + b; dx = conv(dy, flipped k^T); dk, db = sums.
    y64 = numpy_conv(x, kernel) + np.asarray(bias, np.float64)
    dx64 = numpy_conv(dy, np.asarray(kernel)[::-1, ::-1].transpose(0, 1, 3, 2))
    r = k // 2
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (r, r), (r, r), (0, 0)))
    dk64 = np.stack([np.stack([np.einsum("nhwc,nhwo->co", xp[:, i:i + h, j:j + w], np.asarray(dy, np.float64))
                               for j in range(k)]) for i in range(k)])
    db64 = np.asarray(dy, np.float64).sum(axis=(0, 1, 2))
    for name, a, b, ref in zip(("y", "dx", "dkernel", "dbias"), ours, xla, (y64, dx64, dk64, db64)):
        assert a.shape == ref.shape and a.dtype == jnp.float32, name
        assert rel_err(a, ref) < 2e-6, (name, rel_err(a, ref))
        assert rel_err(b, ref) < 2e-6, (name, "xla", rel_err(b, ref))


@needs_onednn
def test_training_size_gradients_match_float64():
    # EDSR-baseline's body layer at training size: 16 x 48 x 48, 64 -> 64; the weight and bias
    # gradients are sums of 36,864 terms. Loss sum(sin(y)): dy = cos(y), computed in float64.
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (16, 48, 48, 64)).astype(np.float32)
    kernel = rng.uniform(-0.05, 0.05, (3, 3, 64, 64)).astype(np.float32)
    bias = np.zeros((64,), np.float32)
    loss = lambda conv: lambda *a: jnp.sum(jnp.sin(conv(*a)))  # noqa: E731
    ours = jax.jit(jax.grad(loss(onednn_conv.conv), argnums=(0, 1, 2)))(x, kernel, bias)
    xla = jax.jit(jax.grad(loss(xla_conv), argnums=(0, 1, 2)))(x, kernel, bias)
    dy = np.cos(numpy_conv(x, kernel))
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    refs = (numpy_conv(dy, kernel[::-1, ::-1].transpose(0, 1, 3, 2)),
            np.stack([np.stack([np.einsum("nhwc,nhwo->co", xp[:, i:i + 48, j:j + 48], dy)
                                for j in range(3)]) for i in range(3)]),
            dy.sum(axis=(0, 1, 2)))
    # Measured: dx 1.6e-6 (XLA 1.5e-6), dkernel 1.1e-6 on an AVX-512 Xeon and 1.0e-5 on an AMD
    # EPYC (oneDNN picks its accumulation order per ISA; XLA 9.7e-6), dbias 1e-7 (XLA's own sum;
    # oneDNN's fused bias gradient, not used, was 2.9e-5). A float32 sum of 36,864 terms in some
    # order errs by ~sqrt(36864) * 2^-24 = 1.1e-5 relative: the bound is 2x that for both.
    for name, a, b, ref in zip(("dx", "dkernel", "dbias"), ours, xla, refs):
        assert rel_err(a, ref) < 2.5e-5, (name, rel_err(a, ref), rel_err(b, ref))
        assert rel_err(b, ref) < 5e-5, (name, "xla", rel_err(b, ref))


@needs_onednn
def test_edsr_with_onednn_equals_edsr_with_xla():
    config = ModelConfig(scale=3, num_blocks=2, num_features=16)
    x = jnp.asarray(np.random.default_rng(1).uniform(0, 255, (2, 10, 9, 3)), jnp.float32)
    xla_model, ours_model = config.build(), config.build(conv_backend="onednn")
    params = xla_model.init(jax.random.key(0), x)
    # Same parameter tree from either module.
    assert jax.tree.structure(ours_model.init(jax.random.key(0), x)) == jax.tree.structure(params)
    loss = lambda m: lambda p: jnp.mean(jnp.abs(m.apply(p, x) - 128.0))  # noqa: E731
    (l0, g0), (l1, g1) = (jax.jit(jax.value_and_grad(loss(m)))(params) for m in (xla_model, ours_model))
    assert abs(float(l0) - float(l1)) < 1e-4 * abs(float(l0))
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        assert rel_err(b, a) < 1e-4


def test_choose_backend_rules():
    choose = onednn_conv.choose_backend
    assert choose("xla", "cpu", 1, jnp.float32) == "xla"
    assert choose("auto", "gpu", 1, jnp.float32) == "xla"
    assert choose("auto", "cpu", 4, jnp.float32) == "xla"
    assert choose("auto", "cpu", 1, jnp.bfloat16) == "xla"
    assert choose("auto", "cpu", 1, jnp.float32) == ("onednn" if onednn_conv.available() else "xla")
    with pytest.raises(ValueError, match="train.conv_backend 'onednn'.*mesh has 2"):
        choose("onednn", "cpu", 2, jnp.float32)
    with pytest.raises(ValueError, match="model.dtype is bfloat16"):
        choose("onednn", "cpu", 1, jnp.bfloat16)


def test_bad_backend_values_are_refused():
    with pytest.raises(ValueError, match="conv_backend must be one of"):
        ModelConfig(num_blocks=1, num_features=4).build(conv_backend="mkl")
    with pytest.raises(ValueError, match="computes in float32"):
        ModelConfig(num_blocks=1, num_features=4).build(dtype=jnp.bfloat16, conv_backend="onednn")
    config = config_lib.base_config()
    config.train.conv_backend = "cudnn"
    with pytest.raises(ValueError, match="train.conv_backend"):
        config_lib.validate(config)


@needs_onednn
def test_train_step_runs_every_convolution_through_onednn():
    """The trainer's step with oneDNN convolutions: no XLA convolution left; per conv layer one
    forward and one weight-gradient call, an input-gradient call for all but the head (its input
    is data: XLA drops the unused call)."""
    import optax

    from edsr_jax.training.state import create_train_state
    from edsr_jax.training.step import compile_train_step

    config = ModelConfig(scale=2, num_blocks=1, num_features=8)
    model = config.build(conv_backend="onednn")
    tx = optax.adam(1e-4)
    cfg = config_lib.base_config()
    cfg.data.batch_size = 2
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=jax.devices()[:1])
    shape = jax.eval_shape(lambda k: create_train_state(model, tx, k, use_ema=False),
                           jax.random.key(0))
    batch = {"lr": jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.uint8),
             "hr": jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.uint8)}
    text = compile_train_step(model, tx, cfg, mesh, shape).lower(shape, batch).compile().as_text()
    count = lambda target: text.count(f'custom_call_target="{target}"')  # noqa: E731
    assert " convolution(" not in text
    assert (count("edsr_conv_forward"), count("edsr_conv_backward_data"),
            count("edsr_conv_backward_weights")) == (6, 5, 6)


def test_choose_backend_refuses_unknown_values_and_names_the_option():
    with pytest.raises(ValueError, match=r"train.conv_backend must be one of \('auto', 'xla', 'onednn'\), got 'mkl'"):
        onednn_conv.choose_backend("mkl", "cpu", 1, jnp.float32)
    with pytest.raises(ValueError, match="^conv_backend 'onednn' cannot be used: it runs on CPU only, the devices are gpu"):
        onednn_conv.choose_backend("onednn", "gpu", 1, jnp.float32, option="conv_backend")


# ------------------------------------------------------------- the extension's own guards


@pytest.mark.slow
@needs_onednn
def test_plan_cache_is_bounded_and_rebuilds_evicted_shapes():
    """Each new shape adds one plan until the LRU cache is full; beyond that it stays at its
    capacity, and a shape evicted long ago is rebuilt and still computes the right thing."""
    size0, capacity = onednn_conv.plan_cache_info()
    assert capacity == 64 and 0 <= size0 <= capacity
    kernel, bias = jnp.full((1, 1, 1, 1), 2.0), jnp.full((1,), 0.5)
    conv = jax.jit(onednn_conv.conv)
    # (1, 1, W, 1) for W = 1000, 1001, ...: shapes no other test uses.
    xs = [jnp.arange(w, dtype=jnp.float32).reshape(1, 1, w, 1) for w in range(1000, 1000 + capacity + 8)]
    conv(xs[0], kernel, bias).block_until_ready()
    size1 = onednn_conv.plan_cache_info()[0]
    assert size1 == min(size0 + 1, capacity)
    conv(xs[0], kernel, bias).block_until_ready()  # a cached shape adds nothing
    assert onednn_conv.plan_cache_info()[0] == size1
    for x in xs[1:]:
        conv(x, kernel, bias).block_until_ready()
    assert onednn_conv.plan_cache_info()[0] == capacity
    y = conv(xs[0], kernel, bias)  # evicted (capacity + 7 newer shapes since): rebuilt
    np.testing.assert_array_equal(np.asarray(y), 2.0 * np.asarray(xs[0]) + 0.5)
    assert onednn_conv.plan_cache_info()[0] == capacity


def _raw_call(target, out_shape, *shapes):
    """Call an FFI target directly (as onednn_conv would never do) with arrays of ``shapes``
    and a declared result of ``out_shape``, so that the C++ shape checks are what stands."""
    onednn_conv.require()
    args = [jnp.ones(s, jnp.float32) for s in shapes]
    out = jax.ShapeDtypeStruct(out_shape, jnp.float32)
    return jax.block_until_ready(jax.jit(jax.ffi.ffi_call(target, out))(*args))


@needs_onednn
@pytest.mark.parametrize("target, out, args, message", [
    ("edsr_conv_forward", (1, 4, 4, 8), [(1, 4, 4, 3), (3, 3, 5, 8), (8,)], "input channels differ"),
    ("edsr_conv_forward", (1, 4, 4, 7), [(1, 4, 4, 5), (3, 3, 5, 8), (8,)], "output channels differ"),
    ("edsr_conv_forward", (1, 5, 4, 8), [(1, 4, 4, 5), (3, 3, 5, 8), (8,)], "N, H and W must agree"),
    ("edsr_conv_forward", (2, 4, 4, 8), [(1, 4, 4, 5), (3, 3, 5, 8), (8,)], "N, H and W must agree"),
    ("edsr_conv_forward", (1, 4, 4, 8), [(1, 4, 4, 5), (3, 3, 5, 8), (7,)], r"bias \(7\) must be \(C_out,\) = \(8\)"),
    ("edsr_conv_forward", (1, 4, 4, 8), [(1, 4, 4, 5), (2, 2, 5, 8), (8,)], "square with an odd size"),
    ("edsr_conv_forward", (1, 4, 4, 8), [(4, 4, 5), (3, 3, 5, 8), (8,)], "rank 4 each"),
    ("edsr_conv_backward_data", (1, 4, 4, 6), [(1, 4, 4, 8), (3, 3, 5, 8)], r"\(backward data\): the input channels"),
    ("edsr_conv_backward_data", (1, 4, 4, 5), [(1, 4, 4, 9), (3, 3, 5, 8)], "output channels differ"),
    ("edsr_conv_backward_data", (1, 4, 3, 5), [(1, 4, 4, 8), (3, 3, 5, 8)], "N, H and W must agree"),
    ("edsr_conv_backward_weights", (3, 3, 5, 8), [(1, 4, 4, 6), (1, 4, 4, 8)], r"\(backward weights\): the input channels"),
    ("edsr_conv_backward_weights", (3, 3, 5, 8), [(1, 4, 4, 5), (1, 4, 4, 9)], "output channels differ"),
    ("edsr_conv_backward_weights", (3, 3, 5, 8), [(1, 4, 4, 5), (2, 4, 4, 8)], "N, H and W must agree"),
])
def test_mismatched_shapes_are_a_clear_error_not_a_crash(target, out, args, message):
    # Before the checks covered channels and outputs, these read or wrote past the buffers.
    with pytest.raises(jax.errors.JaxRuntimeError, match=f"edsr oneDNN conv .*{message}"):
        _raw_call(target, out, *args)


# ------------------------------------------------------------- inference opt-out


def test_upscaler_conv_backend_opt_out_same_output_and_no_custom_call():
    """``Upscaler(conv_backend="xla")`` compiles without the oneDNN custom call and gives the
    same output as "auto" (oneDNN where available) within float32 rounding; bad choices stop
    with the trainer's messages, naming ``conv_backend``."""
    from edsr_jax.inference import infer

    config = ModelConfig(scale=2, num_blocks=2, num_features=8)
    params = config.build().init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
    lr = np.random.default_rng(3).integers(0, 256, (2, 13, 11, 3), dtype=np.uint8)
    xla = infer.Upscaler(config, params, conv_backend="xla")
    auto = infer.Upscaler(config, params)
    assert xla.conv_backend == "xla"
    assert auto.conv_backend == ("onednn" if onednn_conv.available() else "xla")
    a, b = xla.predict(lr), auto.predict(lr)
    assert a.shape == (2, 26, 22, 3)
    assert rel_err(b, a) < 1e-5, rel_err(b, a)

    x = np.zeros((1, 16, 16, 3), np.float32)
    bounds = np.array([[0, 13, 0, 11]], np.int32)
    text = xla._fn.lower(xla.params, x, bounds).compile().as_text()
    assert "edsr_conv" not in text and " convolution(" in text
    if onednn_conv.available():
        text = auto._fn.lower(auto.params, x, bounds).compile().as_text()
        assert 'custom_call_target="edsr_conv_forward"' in text

    with pytest.raises(ValueError, match="conv_backend must be one of .*got 'mkl'"):
        infer.Upscaler(config, params, conv_backend="mkl")
    with pytest.raises(ValueError, match="^conv_backend 'onednn' cannot be used: it computes in float32, dtype is bfloat16"):
        infer.Upscaler(config, params, dtype="bfloat16", conv_backend="onednn")
