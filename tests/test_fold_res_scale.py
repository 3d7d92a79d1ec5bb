"""EDSR's ``res_scale`` folded into its residual blocks' second convolutions (``nets.edsr.
fold_res_scale``, ``Flat.unravel``'s factors, the GPU step's ``StepFormulation.fold_res_scale``):
the same parameters and function, another rounding order. In float32 the step agrees with
today's to float32 rounding; in bfloat16 it is no less accurate than today's against a float32
reference; at ``res_scale`` 1 the program is today's."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from edsr_jax.nets import xla_options
from edsr_jax.nets.edsr import ModelConfig, ResBlock, fold_res_scale, res_scale_factors
from edsr_jax.training import config as config_lib
from edsr_jax.training.state import Flat, factor_vector, ravel, to_flat, to_tree
from edsr_jax.training.step import compile_train_step, leaf_factors, train_step
from conftest import tiny_state_and_batch

OHWI = xla_options.CUDNN_FILTER_ORDER
B1 = 0.9  # Adam's first-moment decay: after one step from zero, mu = (1 - B1) * gradient


def test_res_scale_factors_pick_each_blocks_second_convolution():
    """``res_scale`` for ``block_<i>/conv1``'s kernel and bias, 1.0 for every other parameter;
    folding at 1.0 returns the parameters themselves."""
    params = ModelConfig(2, 3, 8, 0.1).build().init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    factors = res_scale_factors(params, 0.1)
    flat = jax.tree_util.tree_flatten_with_path(factors)[0]
    scaled = {jax.tree_util.keystr(path) for path, f in flat if f != 1.0}
    assert scaled == {f"['params']['block_{i}']['conv1']['{leaf}']" for i in range(3)
                      for leaf in ("kernel", "bias")}
    assert all(f == 0.1 for _, f in flat if f != 1.0) and len(flat) == 4 * 3 + 8
    assert fold_res_scale(params, 1.0) is params
    folded = fold_res_scale(params, 0.1)
    np.testing.assert_array_equal(folded["params"]["block_1"]["conv1"]["kernel"],
                                  params["params"]["block_1"]["conv1"]["kernel"] * np.float32(0.1))
    np.testing.assert_array_equal(folded["params"]["block_1"]["conv0"]["kernel"],
                                  params["params"]["block_1"]["conv0"]["kernel"])


# (leaf sizes, factors): one range; ranges of one width at one stride (an EDSR's blocks); ranges
# of other widths; two factors; none
LAYOUTS = [((3, 5, 2), (1.0, 0.5, 1.0)),
           ((2, 4, 2, 4, 2, 4, 7), (1.0, 0.1, 1.0, 0.1, 1.0, 0.1, 1.0)),
           ((4, 3, 5, 1, 2), (0.1, 1.0, 0.1, 0.1, 1.0)),
           ((2, 3, 4, 5), (0.25, 3.0, 1.0, 3.0)),
           ((2, 3), (1.0, 1.0))]


@pytest.mark.parametrize("sizes,factors", LAYOUTS)
def test_factor_vector_and_the_scaled_unravel(sizes, factors):
    """``factor_vector`` holds each leaf's factor over its range (every way it is built);
    ``Flat.unravel(factors)`` gives each leaf times its factor, and its gradient is each leaf's
    cotangent times its factor, stored in the flat order (exact: products of float32 numbers)."""
    rng = np.random.default_rng(0)
    tree = [jnp.asarray(rng.standard_normal(n), jnp.float32) for n in sizes]
    flat = ravel(tree)
    want = np.repeat(np.asarray(factors, np.float32), sizes)
    np.testing.assert_array_equal(jax.jit(factor_vector, static_argnums=(0, 1))(flat.layout, factors), want)
    leaves = jax.jit(lambda a: Flat(a, flat.layout).unravel(factors))(flat.array)
    for got, x, f in zip(leaves, tree, factors):
        np.testing.assert_array_equal(got, x * np.float32(f))
    weights = [jnp.asarray(rng.standard_normal(n), jnp.float32) for n in sizes]
    grad = jax.grad(lambda a: sum(jnp.sum(w * x) for w, x in zip(weights, Flat(a, flat.layout).unravel(factors))))
    np.testing.assert_array_equal(grad(flat.array), np.concatenate(weights) * want)


def _close(x, y):
    """Equal to float32 rounding: within 1e-5 of each other relative to the array's largest
    magnitude (a gradient element summed from terms of both signs keeps only the absolute error)."""
    x, y = np.asarray(x), np.asarray(y)
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(y), initial=0.0)) + 1e-30)


def _step(model, tx, state, batch, fold, guard="select", loss="l1"):
    return jax.jit(functools.partial(train_step, model=model, tx=tx, ema_decay=0.9, guard=guard,
                                     loss=loss, fold_scale=fold))(state, batch)


@pytest.mark.parametrize("form", ["tree", "flat"])
def test_float32_step_with_the_fold_matches_todays(form):
    """float32, res_scale 0.1: one step with the fold (the tree form: ``fold_res_scale``; the flat
    form with OHWI kernels, as on a GPU: ``Flat.unravel``'s factors) gives the loss, gradient
    norm, parameters, Adam moments and EMA of today's step to float32 rounding (``_close``: 1e-5
    of each array's scale, a few float32 roundings through 3 blocks; the two differ, so the fold
    ran)."""
    tx = optax.adam(1e-3)
    model, state, batch = tiny_state_and_batch(tx, num_blocks=3, res_scale=0.1)
    if form == "flat":
        state = to_flat(state, OHWI)
    (a, ma), (b, mb) = _step(model, tx, state, batch, False), _step(model, tx, state, batch, True)
    assert float(mb["loss"]) == pytest.approx(float(ma["loss"]), rel=1e-5)
    assert float(mb["grad_norm"]) == pytest.approx(float(ma["grad_norm"]), rel=1e-5)
    a, b = to_tree(a), to_tree(b)
    mu_a, mu_b = a.opt_state[0].mu, b.opt_state[0].mu
    jax.tree_util.tree_map(_close, (a.params, a.opt_state, a.ema), (b.params, b.opt_state, b.ema))
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(mu_a),
                                                        jax.tree_util.tree_leaves(mu_b)))


def _rel(x, ref) -> float:
    return float(jnp.linalg.norm(x - ref) / jnp.linalg.norm(ref))


def _grads(model, tx, state, batch, fold):
    """The step's gradient, every parameter end to end (float32): Adam's first moment after one
    step from zero over (1 - b1); the step's own loss, L2 (smooth: the error measured is the
    arithmetic's, not the sign flips of an L1 loss at near-equal pixels)."""
    new, _ = _step(model, tx, state, batch, fold, loss="l2")
    mu = to_tree(new).opt_state[0].mu
    return jnp.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(mu)]) / (1.0 - B1)


def _body(model, params, lr, fold, blocks):
    """The last residual block's output (float32), the quantity the fold changes."""
    if fold:
        model, params = model.clone(res_scale=1.0), fold_res_scale(params, model.res_scale)
    _, seen = model.apply(params, lr, capture_intermediates=lambda m, _: isinstance(m, ResBlock))
    return seen["intermediates"][f"block_{blocks - 1}"]["__call__"][0].astype(jnp.float32)


@pytest.mark.slow
def test_bfloat16_fold_is_no_less_accurate_than_todays():
    """bfloat16 compute, res_scale 0.1, 4 blocks, 5 seeds: the relative error of the last block's
    output and of the step's gradients (tree and flat forms), each against the float32 model's
    (highest precision; its own rounding ~1e-7 is 4 orders below bfloat16's ~5e-3, so it serves
    as the exact value), is per seed at most 1.1x today's (the seeds' ratios measured 0.96-1.03:
    both orders round every activation to bfloat16 the same way; the fold drops one rounding of
    each branch and applies 0.1 in float32, where today's bfloat16 multiply uses 0.10009765625),
    and on average over the seeds at most 1.03x. A wrong fold (other factors, other leaves, the
    gradient left unscaled) is off by far more, and the float32 test pins it."""
    tx = optax.adam(1e-3)
    blocks, ratios = 4, {"body": [], "tree": [], "flat": []}
    with jax.default_matmul_precision("highest"):
        for seed in range(5):
            m32, state, batch = tiny_state_and_batch(tx, blocks, res_scale=0.1, seed=seed)
            m16 = m32.clone(dtype=jnp.bfloat16)
            lr = jnp.asarray(batch["lr"], jnp.float32)
            ref = _body(m32, state.params, lr, False, blocks)
            errors = [_rel(_body(m16, state.params, lr, fold, blocks), ref) for fold in (False, True)]
            ratios["body"].append(errors[1] / errors[0])
            g_ref = _grads(m32, tx, state, batch, False)
            for form, st in (("tree", state), ("flat", to_flat(state, OHWI))):
                errors = [_rel(_grads(m16, tx, st, batch, fold), g_ref) for fold in (False, True)]
                assert 1e-4 < errors[0] < 5e-2, errors  # bfloat16's error, not a broken reference
                ratios[form].append(errors[1] / errors[0])
    for name, r in ratios.items():
        assert max(r) <= 1.1 and np.mean(r) <= 1.03, (name, r)


def test_the_fold_is_nothing_at_res_scale_one():
    """res_scale 1 (EDSR-baseline): the step lowers to the same program with the fold asked for
    or not, in the tree form and the flat one."""
    tx = optax.adam(1e-3)
    model, state, batch = tiny_state_and_batch(tx, num_blocks=2)
    for st in (state, to_flat(state, OHWI)):
        texts = [jax.jit(functools.partial(train_step, model=model, tx=tx, guard="select", fold_scale=fold))
                 .lower(st, batch).as_text() for fold in (False, True)]
        assert texts[0] == texts[1]


def test_compile_train_step_folds_only_where_the_formulation_says():
    """``compile_train_step`` with ``fold_res_scale`` (flat state, OHWI: the GPU's form on CPU)
    scales the flat parameters by a vector made from an iota (in the program) and computes
    today's state to float32 rounding (``_close``); CPU's own formulation does not fold."""
    tx = optax.adam(1e-3)
    model, state, batch = tiny_state_and_batch(tx, num_blocks=2, res_scale=0.1)
    cfg = config_lib.base_config()
    cfg.data.batch_size, cfg.train.ema = 2, 0.9
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    flat = to_flat(state, OHWI)
    cpu = xla_options.step_formulation("cpu")
    assert not cpu.fold_res_scale
    results = []
    for fold in (False, True):
        form = xla_options.StepFormulation("select", True, True, True, OHWI, fold_res_scale=fold)
        shape = jax.eval_shape(lambda: flat)
        step = compile_train_step(model, tx, cfg, mesh, shape, formulation=form)
        assert ("iota" in str(step.trace(shape, batch).jaxpr)) == fold
        results.append(step(jax.tree_util.tree_map(jnp.copy, flat), batch))
    (a, ma), (b, mb) = results
    assert float(mb["loss"]) == pytest.approx(float(ma["loss"]), rel=1e-5)
    jax.tree_util.tree_map(_close, to_tree(a).params, to_tree(b).params)
    assert leaf_factors(flat.params.layout, 0.1).count(0.1) == 4  # 2 blocks x (kernel, bias)
