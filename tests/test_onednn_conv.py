"""oneDNN convolutions (edsr_jax/onednn_conv.py) against XLA's convolution and float64 NumPy.

Tolerances: both sides compute in float32 with different summation orders; the reference
values are float64. Relative to the largest magnitude of each output: 2e-6 for the small
shapes (sums of at most a few hundred terms), 5e-6 at training size (sums of 36,864 terms,
measured 1-2e-6), 1e-4 through a whole EDSR (two float32 computations compared).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edsr_jax import config as config_lib
from edsr_jax import onednn_conv
from edsr_jax.model import ModelConfig

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
    # Measured: dx 1.6e-6 (XLA 1.5e-6), dkernel 1.1e-6 (XLA 9.7e-6), dbias 1e-7 (XLA's own sum;
    # oneDNN's fused bias gradient, not used, was 2.9e-5).
    for name, a, b, ref in zip(("dx", "dkernel", "dbias"), ours, xla, refs):
        assert rel_err(a, ref) < 5e-6, (name, rel_err(a, ref), rel_err(b, ref))
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

    from edsr_jax import train

    config = ModelConfig(scale=2, num_blocks=1, num_features=8)
    model = config.build(conv_backend="onednn")
    tx = optax.adam(1e-4)
    cfg = config_lib.base_config()
    cfg.data.batch_size = 2
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=jax.devices()[:1])
    shape = jax.eval_shape(lambda k: train.create_train_state(model, tx, k, use_ema=False),
                           jax.random.key(0))
    batch = {"lr": jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.uint8),
             "hr": jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.uint8)}
    text = train.compile_train_step(model, tx, cfg, mesh, shape).lower(shape, batch).compile().as_text()
    count = lambda target: text.count(f'custom_call_target="{target}"')  # noqa: E731
    assert " convolution(" not in text
    assert (count("edsr_conv_forward"), count("edsr_conv_backward_data"),
            count("edsr_conv_backward_weights")) == (6, 5, 6)
