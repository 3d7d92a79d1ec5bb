"""The train state's flat form (``training.state.to_flat``; the GPU's, ``StepFormulation.flat_state``):
a step over it computes today's step, its tree form round-trips bit for bit, and the trainer's
checkpoints are the tree form whichever form trained, so a run resumes under the other."""

import functools
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from conftest import ROOT, tiny_state_and_batch
from edsr_jax.nets.xla_options import CUDNN_FILTER_ORDER
from edsr_jax.training.restore import restore_params
from edsr_jax.training.state import Flat, to_flat, to_tree, tree_of
from edsr_jax.training.step import train_step
from test_train import CACHE, TINY, assert_close, final_params


def _inputs(tx, use_ema=True):
    return tiny_state_and_batch(tx, use_ema=use_ema)


@pytest.mark.parametrize("order", [None, CUDNN_FILTER_ORDER])
def test_flat_form_round_trips_bit_for_bit(order):
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    _, state, _ = _inputs(tx)
    flat = to_flat(state, order)
    assert isinstance(flat.params, Flat) and isinstance(flat.ema, Flat)
    mu = flat.opt_state[1][0].mu
    assert isinstance(mu, Flat) and mu.array.shape == (sum(x.size for x in jax.tree_util.tree_leaves(state.params)),)
    leaves = jax.tree_util.tree_leaves(state.params)
    at = sum(x.size for x in leaves[:1])  # leaves: conv0's bias (8,), then its HWIO kernel (3, 3, 8, 8)
    kernel = np.asarray(leaves[1])
    stored = np.asarray(flat.params.array[at:at + kernel.size])
    # the kernel kept as OHWI (output feature first) in cuDNN's order, else as it is
    np.testing.assert_array_equal(stored, np.ravel(np.transpose(kernel, order) if order else kernel))
    back = to_tree(flat)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(state)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, state)
    assert to_flat(flat) is flat and to_tree(state).params is not None
    jax.tree_util.tree_map(np.testing.assert_array_equal, tree_of(flat.params), state.params)


@pytest.mark.parametrize("guard,clip,order", [("cond", 0.0, None), ("select", 0.0, CUDNN_FILTER_ORDER),
                                               ("select", 1.0, CUDNN_FILTER_ORDER)])
def test_a_step_over_the_flat_form_is_the_tree_step(guard, clip, order):
    """Same loss, gradient norm, params, Adam moments, EMA and counters as the tree step (the
    CPU's cond guard): the same elementwise Adam, run as one fused kernel instead of one per
    array, may round its multiply-adds differently, and the gradient norm is summed in another
    order, so rtol 1e-6 (a few float32 ulps) with atol 1e-9 for moments near zero. ``clip``:
    ``optax.clip_by_global_norm`` chained before Adam (its norm over the one flat array);
    ``order``: the kernels stored in cuDNN's order (the GPU's form)."""
    adam = optax.adam(1e-3)
    tx = optax.chain(optax.clip_by_global_norm(clip), adam) if clip else adam
    model, state, batch = _inputs(tx)
    step = functools.partial(train_step, model=model, tx=tx, ema_decay=0.9)
    a, ma = jax.jit(functools.partial(step, guard="cond"))(state, batch)
    b, mb = jax.jit(functools.partial(step, guard=guard))(to_flat(state, order), batch)
    assert isinstance(b.params, Flat)  # the state comes back in the form it came in
    for k in ("loss", "grad_norm"):
        assert float(ma[k]) == pytest.approx(float(mb[k]), rel=1e-6)
    b = to_tree(b)
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9), a, b)
    assert int(b.step) == 1 and int(b.nonfinite) == 0


def test_the_flat_step_keeps_the_state_after_a_non_finite_step():
    tx = optax.adam(1e-3)
    model, state, batch = _inputs(tx)
    bad = state.replace(params=jax.tree_util.tree_map(lambda p: p.at[(0,) * p.ndim].set(np.inf), state.params))
    new, metrics = jax.jit(lambda s, b: train_step(s, b, model=model, tx=tx, ema_decay=0.9,
                                                   guard="select"))(to_flat(bad, CUDNN_FILTER_ORDER), batch)
    assert not np.isfinite(float(metrics["loss"]))
    jax.tree_util.tree_map(np.testing.assert_array_equal, to_tree(new).params, bad.params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, to_tree(new).opt_state, bad.opt_state)
    assert int(new.nonfinite) == 1 and int(new.first_nonfinite) == 1


# The trainer on CPU with the flat form forced (the GPU's choice), through the CLI in a fresh process.
FLAT = ("import dataclasses, sys; from edsr_jax.nets import xla_options as x; f = x.step_formulation; "
        "x.step_formulation = lambda p=None: dataclasses.replace(f(p), flat_state=True, "
        "kernel_order=x.CUDNN_FILTER_ORDER); "
        "from edsr_jax.io import cli; from edsr_jax.train import main; sys.exit(cli.run(main))")


def _train(workdir, form: str, *overrides):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    program = ["-c", FLAT] if form == "flat" else ["-m", "edsr_jax.train"]
    cmd = [sys.executable, *program, f"--config={TINY}", f"--workdir={workdir}",
           f"--config.data.cache_dir={CACHE}", *overrides]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert ("train state kept flat" in r.stderr) == (form == "flat"), r.stderr
    return r


@pytest.mark.slow
@pytest.mark.parametrize("first,second", [("flat", "tree"), ("tree", "flat")])
def test_a_checkpoint_of_one_form_resumes_under_the_other(first, second, tmp_path):
    """3 steps in one form, checkpointed; 3 more resumed in the other; against 6 straight steps
    in the tree form (CPU's own): equal to float32 rounding of the differently fused update
    (rtol 1e-5 after 6 steps, the tolerance of the 4-device test). The flat run's checkpoint
    is the tree form: the plain restore (``restore_params``) reads it, params and EMA."""
    ema = "--config.train.ema=0.9"  # evaluation and checkpoints read the EMA weights too
    _train(tmp_path / "straight", "tree", ema)
    _train(tmp_path / "resumed", first, ema, "--config.train.steps=3")
    assert "resuming from step 3" in _train(tmp_path / "resumed", second, ema).stderr
    assert_close(final_params(tmp_path / "resumed"), final_params(tmp_path / "straight"), 1e-5)
    ema_of = lambda w: restore_params(w, prefer_ema=True)[1]  # noqa: E731
    assert_close(ema_of(tmp_path / "resumed"), ema_of(tmp_path / "straight"), 1e-5)
