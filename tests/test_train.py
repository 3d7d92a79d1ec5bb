"""The trainer: pure step, sharding equivalence, multi-process, exact resume, fine-tuning, errors."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import ROOT
from edsr_jax import checkpoint, train
from edsr_jax.config import base_config
from edsr_jax.model import ModelConfig

TINY = str(ROOT / "tests" / "configs" / "tiny.py")
CACHE = str(ROOT / ".cache" / "test-decoded")


def run_train(workdir, *overrides, devices=1, extra_env=None, timeout=300, args=()):
    """Run the training CLI in a fresh process with ``devices`` CPU devices."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env.update(extra_env or {})
    cmd = [sys.executable, "-m", "edsr_jax.train", f"--config={TINY}", f"--workdir={workdir}",
           f"--config.data.cache_dir={CACHE}", *args, *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def final_params(workdir):
    _, params, _ = checkpoint.restore_params(Path(workdir), prefer_ema=False)
    return jax.tree_util.tree_map(np.asarray, params)


def assert_close(a, b, rtol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * max(1.0, float(np.abs(y).max())))


# ---------------------------------------------------------------- pure step


def test_pixel_losses_against_numpy():
    rng = np.random.default_rng(0)
    sr, hr = rng.uniform(0, 255, (2, 4, 4, 3)), rng.uniform(0, 255, (2, 4, 4, 3))
    d = sr - hr
    assert np.isclose(train.pixel_loss(sr, hr, "l1"), np.abs(d).mean(), rtol=1e-6)
    assert np.isclose(train.pixel_loss(sr, hr, "l2"), (d * d).mean(), rtol=1e-5)
    eps = 1e-3 * 255
    assert np.isclose(train.pixel_loss(sr, hr, "charbonnier"), np.sqrt(d * d + eps * eps).mean(), rtol=1e-6)


def _tiny_state(ema=0.0):
    model = ModelConfig(2, 1, 4).build()
    tx = optax.adam(1e-3)
    state = train.create_train_state(model, tx, jax.random.key(0), use_ema=ema > 0)
    return model, tx, state


def _batch(seed=0, b=2, p=6):
    """Learnable pairs: smooth random HR images and their MATLAB-bicubic LR."""
    from edsr_jax.imresize import imresize

    rng = np.random.default_rng(seed)
    hr = [imresize(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8), output_shape=(2 * p, 2 * p))
          for _ in range(b)]
    return {"lr": np.stack([imresize(h, 0.5) for h in hr]), "hr": np.stack(hr)}


def test_loss_falls_on_a_fixed_batch():
    model, tx, state = _tiny_state()
    step = jax.jit(lambda s, b: train.train_step(s, b, model=model, tx=tx))
    batch = _batch()
    losses = []
    for _ in range(40):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.75 * losses[0]
    assert int(state.step) == 40 and int(state.nonfinite) == 0


def test_nonfinite_step_is_not_applied_and_counted():
    model, tx, state = _tiny_state(ema=0.9)
    step = jax.jit(lambda s, b: train.train_step(s, b, model=model, tx=tx, ema_decay=0.9))
    state, _ = step(state, _batch())
    before = jax.tree_util.tree_map(np.asarray, (state.params, state.ema))
    bad = _batch(1)
    bad = {"lr": bad["lr"].astype(np.float32), "hr": bad["hr"].astype(np.float32)}
    bad["hr"][0, 0, 0, 0] = np.nan
    state, m = step(state, bad)
    assert not np.isfinite(float(m["loss"]))
    after = jax.tree_util.tree_map(np.asarray, (state.params, state.ema))
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, after)
    assert int(state.nonfinite) == 1 and int(state.first_nonfinite) == 2
    with pytest.raises(train.NonFiniteError, match="step 2"):
        train._check_finite(state, "stop")
    assert train._check_finite(state, "skip") == 1


def test_ema_follows_params():
    model, tx, state = _tiny_state(ema=0.5)
    p0 = jax.tree_util.tree_map(np.asarray, state.params)
    state, _ = train.train_step(state, _batch(), model=model, tx=tx, ema_decay=0.5)
    expect = jax.tree_util.tree_map(lambda a, b: 0.5 * a + 0.5 * np.asarray(b), p0, state.params)
    assert_close(state.ema, expect, 1e-6)


def test_merge_params_for_finetuning_x2_to_x4():
    x2 = ModelConfig(2, 2, 8).build().init(jax.random.key(1), jnp.zeros((1, 8, 8, 3)))
    x4 = ModelConfig(4, 2, 8).build().init(jax.random.key(2), jnp.zeros((1, 8, 8, 3)))
    merged, took, kept = train.merge_params(x4, x2, skip=("upsample_", "tail"))
    assert sorted(kept) == ["params/tail/bias", "params/tail/kernel",
                            "params/upsample_0/bias", "params/upsample_0/kernel",
                            "params/upsample_1/bias", "params/upsample_1/kernel"]
    assert len(took) == 2 + 2 * 2 * 2 + 2  # head, 2 blocks x 2 convs, body conv (kernel + bias)
    np.testing.assert_array_equal(merged["params"]["head"]["kernel"], x2["params"]["head"]["kernel"])
    np.testing.assert_array_equal(merged["params"]["tail"]["kernel"], x4["params"]["tail"]["kernel"])
    # Without skipping, every same-shaped array is taken (x2's upsample_0 fits x4's first stage).
    _, took_all, kept_all = train.merge_params(x4, x2)
    assert "params/upsample_0/kernel" in took_all and "params/upsample_1/kernel" in kept_all
