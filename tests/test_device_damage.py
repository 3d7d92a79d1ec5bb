"""The trainer making its LR on the device (data.degrade_on): the step's damage against the
host's, keys as a function of (seed, patch index), where a run decides, and resume."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from edsr_jax.data import blocks, sources
from edsr_jax.degradation import degrade
from edsr_jax.degradation.degrade import SpecError
from edsr_jax.io import cli
from edsr_jax.nets.edsr import ModelConfig
from edsr_jax.training import config as config_lib
from edsr_jax.training.datasets import device_damage, resolve_input
from edsr_jax.training.optim import make_optimizer
from edsr_jax.training.state import create_train_state
from edsr_jax.training.step import DeviceDamage, batch_pairs, train_step

TINY = str(ROOT / "tests" / "configs" / "tiny.py")
CACHE = str(ROOT / ".cache" / "test-decoded")


def _crops(n=6, size=24, seed=0):
    rng = np.random.default_rng(seed)
    hr = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    hr[:, size // 2:] = np.linspace(0, 255, size, dtype=np.uint8)[None, None, :, None]  # smooth half
    return hr, rng.integers(0, 8, n).astype(np.int32)


def _batch(hr, k, index):
    return {"hr": jnp.asarray(hr), "symmetry": jnp.asarray(k),
            "index": jnp.asarray(blocks.index_words(np.asarray(index, np.int64)))}


@pytest.mark.parametrize("spec", ["bicubic(2)", "bilinear(2)", "nearest(2)", "bicubic(3)"])
def test_device_damage_is_the_hosts_degradation_bit_for_bit(spec):
    """Deterministic resizes: the step's (LR, HR) equal the host's pipeline applied to each crop
    under its flip or turn (sources.symmetry), bit for bit."""
    hr, k = _crops(size=24)
    scale = degrade.parse(spec).scale
    lr, hr_t = jax.jit(DeviceDamage(spec, scale, seed=3))(_batch(hr, k, np.arange(6)))
    pipe = degrade.parse(spec)
    for i in range(len(hr)):
        want_hr = np.ascontiguousarray(sources.symmetry(hr[i], int(k[i])))
        np.testing.assert_array_equal(np.asarray(hr_t[i]), want_hr)
        np.testing.assert_array_equal(np.asarray(lr[i]), pipe(want_hr, np.random.default_rng(0)))


def test_device_damage_depends_on_seed_and_patch_index_only():
    """A random chain: a patch's LR is the same in any batch position and batch size (keys from
    the global index), differs between indices and between seeds."""
    spec = "blur(0.5,1.5) > bicubic(2) > noise(1,8) > jpeg(30,90)"
    hr, k = _crops(n=8, size=32, seed=1)
    hr[:] = hr[0]  # one crop, so only the keys make rows differ
    k[:] = 0
    index = np.array([5, 2**32 + 5, 7, 9, 2**40, 11, 12, 13])
    damage = jax.jit(DeviceDamage(spec, 2, seed=0))
    lr = np.asarray(damage(_batch(hr, k, index))[0])
    perm = np.array([3, 1, 7, 0, 2, 6, 5, 4])
    lr_perm = np.asarray(damage(_batch(hr[perm], k[perm], index[perm]))[0])
    np.testing.assert_array_equal(lr_perm, lr[perm])
    half = np.asarray(damage(_batch(hr[:4], k[:4], index[:4]))[0])
    np.testing.assert_array_equal(half, lr[:4])
    assert not np.array_equal(lr[0], lr[1])  # index 5 and 2**32 + 5: the high word counts
    assert len({lr[i].tobytes() for i in range(8)}) == 8
    other_seed = np.asarray(jax.jit(DeviceDamage(spec, 2, seed=1))(_batch(hr, k, index))[0])
    assert not np.array_equal(other_seed[0], lr[0])


def test_host_pairs_with_symmetry_are_flipped_together():
    hr, k = _crops(n=4, size=16)
    lr = hr[:, ::2, ::2]
    got_lr, got_hr = batch_pairs({"lr": jnp.asarray(lr), "hr": jnp.asarray(hr), "symmetry": jnp.asarray(k)})
    for i in range(4):
        np.testing.assert_array_equal(np.asarray(got_lr[i]), sources.symmetry(lr[i], int(k[i])))
        np.testing.assert_array_equal(np.asarray(got_hr[i]), sources.symmetry(hr[i], int(k[i])))


def test_a_step_on_hr_crops_equals_the_step_on_the_hosts_pairs():
    """The whole train step: damage made in it (bicubic, exact) gives the state the same step
    reaches on the host's pairs of the same crops, bit for bit."""
    model = ModelConfig(2, 1, 8).build()
    tx, _ = make_optimizer(config_lib.base_config().optim, 10)
    state = create_train_state(model, tx, jax.random.key(0), use_ema=False)
    hr, k = _crops(n=4, size=16)
    pipe = degrade.parse("bicubic(2)")
    hr_t = np.stack([sources.symmetry(h, int(s)) for h, s in zip(hr, k)])
    pairs = {"lr": jnp.asarray(np.stack([pipe(h, None) for h in hr_t])), "hr": jnp.asarray(hr_t)}
    a, ma = jax.jit(lambda s, b: train_step(s, b, model=model, tx=tx))(state, pairs)
    b, mb = jax.jit(lambda s, b: train_step(s, b, model=model, tx=tx,
                                            damage=DeviceDamage("bicubic(2)", 2, 0)))(state, _batch(hr, k, range(4)))
    assert float(ma["loss"]) == float(mb["loss"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, a.params, b.params)


def test_a_spec_the_device_cannot_run_is_named_before_compiling(monkeypatch):
    from edsr_jax.degradation import device

    monkeypatch.delitem(device.RUNNERS, "aniso_blur")
    device.validate_spec.cache_clear()
    try:
        with pytest.raises(SpecError, match=r"^aniso_blur: the device path \(degrade_batch\) has no such operator"):
            DeviceDamage("aniso_blur(1,2,0) > bicubic(2)", 2, 0)
        c = config_lib.base_config()
        c.data.spec, c.data.degrade_on = "aniso_blur(1,2,0) > bicubic", "device"
        with pytest.raises(cli.UsageError, match=r"^config\.data\.spec: aniso_blur: the device path"):
            resolve_input(c, None, "cpu")
    finally:
        device.validate_spec.cache_clear()


def test_resolve_input_fresh_resumed_and_asked():
    c = config_lib.base_config()
    line = resolve_input(c, None, "gpu")
    assert (c.data.loader, c.data.degrade_on) == ("block", "device")
    assert line.startswith("damage: 'bicubic(2)' made on the device inside the train step")
    assert "data.degrade_on=auto on gpu" in line and device_damage(c) == DeviceDamage("bicubic(2)", 2, 0)
    # prepared pairs stay on the host
    c = config_lib.base_config()
    c.data.source, c.data.train, c.data.lr_name = "paired", "nowhere", "bicubic"
    line = resolve_input(c, None, "tpu")
    assert c.data.degrade_on == "host" and line.startswith("damage: prepared pairs LR_bicubic of nowhere")
    assert device_damage(c) is None
    # a run made before these fields existed keeps its loader and host damage
    c = config_lib.base_config()
    old = config_lib.base_config().to_dict()
    del old["data"]["loader"], old["data"]["degrade_on"]
    line = resolve_input(c, old, "gpu")
    assert (c.data.loader, c.data.degrade_on) == ("patch", "host")
    assert "as the run being resumed" in line and "made on the host by the loader" in line
    # a run that chose the device keeps it; what is asked explicitly wins
    stored = {**old, "data": {**old["data"], "loader": "block", "degrade_on": "device"}}
    c = config_lib.base_config()
    resolve_input(c, stored, "cpu")
    assert (c.data.loader, c.data.degrade_on) == ("block", "device")
    c = config_lib.base_config()
    c.data.degrade_on = "host"
    assert "data.degrade_on=host" in resolve_input(c, stored, "cpu") and c.data.degrade_on == "host"


def test_mdsr_scales_each_get_their_stream():
    c = config_lib.mdsr_paper_config("mdsr_baseline")
    c.data.source, c.data.degrade_on = "hr", "device"
    resolve_input(c, None, "cpu")
    got = {s: device_damage(c, s) for s in (2, 3, 4)}
    assert [g.spec for g in got.values()] == ["bicubic(2)", "bicubic(3)", "bicubic(4)"]
    assert len({g.seed for g in got.values()}) == 3


def test_stored_meaning_fills_what_old_runs_used():
    old = {"data": {"source": "hr"}, "train": {"seed": 1}}
    assert config_lib.stored_meaning(old)["data"] == {"source": "hr", "loader": "patch", "degrade_on": "host"}
    assert old == {"data": {"source": "hr"}, "train": {"seed": 1}}  # not changed in place
    new = {"data": {"loader": "block", "degrade_on": "device"}}
    assert config_lib.stored_meaning(new) == new


def _train(workdir, *overrides):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.run([sys.executable, "-m", "edsr_jax.train", f"--config={TINY}", f"--workdir={workdir}",
                           f"--config.data.cache_dir={CACHE}", *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_resume_keeps_where_the_damage_was_made_and_announces_a_change(tmp_path):
    first = _train(tmp_path, "--config.train.steps=3", "--config.data.degrade_on=host", "--config.data.loader=patch")
    assert first.returncode == 0, first.stderr
    assert "damage: 'bicubic(2)' made on the host by the loader, per patch (data.degrade_on=host); patch loader" \
        in first.stderr
    kept = _train(tmp_path, "--config.train.steps=4")  # auto: as the run being resumed
    assert kept.returncode == 0, kept.stderr
    assert "(data.degrade_on=auto, as the run being resumed); patch loader" in kept.stderr
    assert "config changed since the checkpoint: data." not in kept.stderr and "starts afresh" not in kept.stderr
    moved = _train(tmp_path, "--config.train.steps=5", "--config.data.degrade_on=device", "--config.data.loader=block")
    assert moved.returncode == 0, moved.stderr
    assert "config changed since the checkpoint: data.degrade_on: 'host' -> 'device'" in moved.stderr
    assert "config changed since the checkpoint: data.loader: 'patch' -> 'block'" in moved.stderr
    assert "data order starts afresh" in moved.stderr and "made on the device" in moved.stderr
    bad = _train(tmp_path / "p", "--config.data.degrade_on=device", "--config.data.source=paired")
    assert bad.returncode == 2 and "error: config.data.degrade_on = 'device'" in bad.stderr


def test_the_feed_refuses_64_bit_integers_it_would_truncate():
    from edsr_jax.data.feed import DeviceFeed

    class It:
        def __init__(self):
            self.n = 0

        def __next__(self):
            return {"index": np.array([2**40, 1], dtype=np.int64)}

        def get_state(self):
            return {"n": self.n}

    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    feed = DeviceFeed(It(), sharding)
    try:
        with pytest.raises(TypeError, match=r"batch\['index'\] is int64: .*index_words"):
            next(feed)
    finally:
        feed.close()
