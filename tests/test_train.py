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
from edsr_jax.inference.infer import Upscaler
from edsr_jax.training import run
from edsr_jax.training.datasets import augmentation_note, training_spec
from edsr_jax.training.finetune import merge_params
from edsr_jax.training.loss import pixel_loss
from edsr_jax.training.restore import restore_params
from edsr_jax.training.state import create_train_state
from edsr_jax.training.step import NonFiniteError, check_finite, train_step
from edsr_jax.training import checkpoint
from edsr_jax.nets import onednn_conv
from edsr_jax.nets.edsr import ModelConfig

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
    _, params, _ = restore_params(Path(workdir), prefer_ema=False)
    return jax.tree_util.tree_map(np.asarray, params)


def assert_close(a, b, rtol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * max(1.0, float(np.abs(y).max())))


# ---------------------------------------------------------------- pure step


def test_pixel_losses_against_numpy():
    rng = np.random.default_rng(0)
    sr, hr = rng.uniform(0, 255, (2, 4, 4, 3)), rng.uniform(0, 255, (2, 4, 4, 3))
    d = sr - hr
    assert np.isclose(pixel_loss(sr, hr, "l1"), np.abs(d).mean(), rtol=1e-6)
    assert np.isclose(pixel_loss(sr, hr, "l2"), (d * d).mean(), rtol=1e-5)
    eps = 1e-3 * 255
    assert np.isclose(pixel_loss(sr, hr, "charbonnier"), np.sqrt(d * d + eps * eps).mean(), rtol=1e-6)


def _tiny_state(ema=0.0):
    model = ModelConfig(2, 1, 4).build()
    tx = optax.adam(1e-3)
    state = create_train_state(model, tx, jax.random.key(0), use_ema=ema > 0)
    return model, tx, state


def _batch(seed=0, b=2, p=6):
    """Learnable pairs: smooth random HR images and their MATLAB-bicubic LR."""
    from edsr_jax.degradation.imresize import imresize

    rng = np.random.default_rng(seed)
    hr = [imresize(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8), output_shape=(2 * p, 2 * p))
          for _ in range(b)]
    return {"lr": np.stack([imresize(h, 0.5) for h in hr]), "hr": np.stack(hr)}


def test_loss_falls_on_a_fixed_batch():
    model, tx, state = _tiny_state()
    step = jax.jit(lambda s, b: train_step(s, b, model=model, tx=tx))
    batch = _batch()
    losses = []
    for _ in range(40):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.75 * losses[0]
    assert int(state.step) == 40 and int(state.nonfinite) == 0


def test_nonfinite_step_is_not_applied_and_counted():
    model, tx, state = _tiny_state(ema=0.9)
    step = jax.jit(lambda s, b: train_step(s, b, model=model, tx=tx, ema_decay=0.9))
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
    with pytest.raises(NonFiniteError, match="step 2"):
        check_finite(state, "stop")
    assert check_finite(state, "skip") == 1


@pytest.mark.slow
def test_ema_follows_params():
    model, tx, state = _tiny_state(ema=0.5)
    p0 = jax.tree_util.tree_map(np.asarray, state.params)
    state, _ = train_step(state, _batch(), model=model, tx=tx, ema_decay=0.5)
    expect = jax.tree_util.tree_map(lambda a, b: 0.5 * a + 0.5 * np.asarray(b), p0, state.params)
    assert_close(state.ema, expect, 1e-6)


def test_merge_params_for_finetuning_x2_to_x4():
    x2 = ModelConfig(2, 2, 8).build().init(jax.random.key(1), jnp.zeros((1, 8, 8, 3)))
    x4 = ModelConfig(4, 2, 8).build().init(jax.random.key(2), jnp.zeros((1, 8, 8, 3)))
    merged, took, kept = merge_params(x4, x2, skip=("upsample_", "tail"))
    assert sorted(kept) == ["params/tail/bias", "params/tail/kernel",
                            "params/upsample_0/bias", "params/upsample_0/kernel",
                            "params/upsample_1/bias", "params/upsample_1/kernel"]
    assert len(took) == 2 + 2 * 2 * 2 + 2  # head, 2 blocks x 2 convs, body conv (kernel + bias)
    np.testing.assert_array_equal(merged["params"]["head"]["kernel"], x2["params"]["head"]["kernel"])
    np.testing.assert_array_equal(merged["params"]["tail"]["kernel"], x4["params"]["tail"]["kernel"])
    # Without skipping, every same-shaped array is taken (x2's upsample_0 fits x4's first stage).
    _, took_all, kept_all = merge_params(x4, x2)
    assert "params/upsample_0/kernel" in took_all and "params/upsample_1/kernel" in kept_all


# ---------------------------------------------------------------- the CLI, end to end


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """6 steps in one go on 1 device (checkpoints at 3 and 6)."""
    workdir = tmp_path_factory.mktemp("straight")
    r = run_train(workdir)
    assert r.returncode == 0, r.stderr
    return workdir


@pytest.fixture(scope="module")
def straight_host_run(tmp_path_factory):
    """As ``straight_run``, the LR made on the host by the block loader."""
    workdir = tmp_path_factory.mktemp("straight-host")
    r = run_train(workdir, "--config.data.degrade_on=host")
    assert r.returncode == 0, r.stderr
    return workdir


def _iter_state(workdir, step, process=0, count=1):
    return json.loads((Path(workdir) / "checkpoints" / str(step) / "data_iter"
                       / f"process_{process}-of-{count}.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("where", ["device", "host"])
def test_stop_and_resume_gives_identical_params_and_batches(where, straight_run, straight_host_run, tmp_path):
    """Both places the damage is made (data.degrade_on; "auto" is the device on CPU)."""
    straight_run = straight_run if where == "device" else straight_host_run
    first = run_train(tmp_path, "--config.train.steps=3", f"--config.data.degrade_on={where}")
    assert first.returncode == 0, first.stderr
    assert f"made on the {where}" in first.stderr
    second = run_train(tmp_path)
    assert second.returncode == 0, second.stderr
    assert "resuming from step 3" in second.stderr
    a, b = final_params(straight_run), final_params(tmp_path)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    assert _iter_state(straight_run, 6) == _iter_state(tmp_path, 6)
    assert _iter_state(straight_run, 3) == _iter_state(tmp_path, 3)
    assert (tmp_path / "metrics.jsonl").exists() and list((tmp_path / "tb").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("where", ["device", "host"])
def test_four_devices_match_one_device(tmp_path, where):
    one = run_train(tmp_path / "one", "--config.train.steps=3", f"--config.data.degrade_on={where}", devices=1)
    four = run_train(tmp_path / "four", "--config.train.steps=3", f"--config.data.degrade_on={where}", devices=4)
    assert one.returncode == 0 and four.returncode == 0, one.stderr + four.stderr
    # One CPU device in float32 takes oneDNN's convolutions where built, four devices XLA's:
    # the two computations agree to float32 summation order.
    one_conv = "oneDNN" if onednn_conv.available() else "XLA"
    assert f"1 cpu device(s), float32, convolutions by {one_conv}" in one.stderr
    assert "4 cpu device(s), float32, convolutions by XLA" in four.stderr
    assert_close(final_params(tmp_path / "four"), final_params(tmp_path / "one"), 1e-5)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process_with_four_devices(tmp_path):
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen(
        [sys.executable, "-m", "edsr_jax.train", f"--config={TINY}", f"--workdir={tmp_path / 'multi'}",
         f"--config.data.cache_dir={CACHE}", "--config.train.steps=3",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
         "--cpu_collectives"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    single = run_train(tmp_path / "single", "--config.train.steps=3", devices=4)
    assert single.returncode == 0, single.stderr
    assert_close(final_params(tmp_path / "multi"), final_params(tmp_path / "single"), 1e-5)
    # each process saved its own data position (3 batches of its own share consumed)
    for i in range(2):
        assert _iter_state(tmp_path / "multi", 3, i, 2)["next_index"] == 3


@pytest.mark.slow
def test_finetune_x2_to_x4_from_checkpoint(straight_run, tmp_path):
    r = run_train(tmp_path, "--config.model.scale=4", "--config.train.steps=1",
                  f"--config.train.init_from={straight_run}")
    assert r.returncode == 0, r.stderr
    assert "loaded 12 arrays" in r.stderr  # head, 2 blocks x 2 convs, body conv (kernel + bias)
    assert "params/upsample_1/kernel" in r.stderr and "params/tail/kernel" in r.stderr


@pytest.mark.parametrize("override, devices, message", [
    ("--config.optim.lrr=1", 1, "lrr"),
    ("--config.data.patch_size=0", 1, "config.data.patch_size = 0"),
    ("--config.data.batch_size=8", 3, "divisible by the number of devices (3)"),
    ("--config.data.train=/nonexistent/folder", 1, "/nonexistent/folder"),
    ("--config.model.scale=5", 1, "config.model.scale = 5"),
    ("--config.train.conv_backend=mkl", 1, "config.train.conv_backend = 'mkl'"),
    pytest.param("--config.train.conv_backend=onednn", 2,
                 "'onednn' cannot be used: it runs on one device, the mesh has 2", marks=pytest.mark.slow),
])
def test_bad_config_stops_with_one_clear_message(tmp_path, override, devices, message):
    r = run_train(tmp_path, override, devices=devices, timeout=120)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error:") and not (tmp_path / "checkpoints").exists()


def test_resume_refuses_a_checkpoint_of_another_architecture(straight_run):
    r = run_train(straight_run, "--config.model.num_features=16", "--config.train.steps=7", timeout=120)
    assert r.returncode == 2 and "num_features: checkpoint=8, config=16" in r.stderr, r.stderr


@pytest.mark.slow
def test_time_budget_stops_with_a_checkpoint(tmp_path):
    r = run_train(tmp_path, "--config.train.max_minutes=0.0001", "--config.train.steps=1000")
    assert r.returncode == 0, r.stderr
    assert "time budget" in r.stderr
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and steps[-1] == 2  # the first log step (log_every = 2) after the budget ran out


def test_full_disk_is_refused_before_training(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from edsr_jax.io import cli

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10 * 2**20, 9 * 2**20, 2**20))
    with pytest.raises(cli.UsageError, match=r"only 1 MiB free, checkpoints need about 48 MiB"):
        run.check_workdir(tmp_path / "w", need_bytes=48 * 2**20)
    run.check_workdir(tmp_path / "w2", need_bytes=2**19)  # enough room: no error


# ---------------------------------------------------------------- the run in-process


def _tiny_config(**train_fields):
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_config", TINY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.data.cache_dir = CACHE
    for k, v in train_fields.items():
        c.train[k] = v
    return c


def test_an_exception_in_the_loop_closes_the_feed_manager_and_logger(tmp_path, monkeypatch):
    """Any way out of the loop closes what the set-up opened: here a failure at step 4, after
    the async checkpoint of step 3 was started."""
    import threading

    from edsr_jax.data import feed
    from edsr_jax.training import run_log

    before = set(threading.enumerate())
    opened = {}

    def spy(name, cls_or_fn, attr):
        def wrapped(*args, **kwargs):
            obj = cls_or_fn(*args, **kwargs)
            opened[name] = {"obj": obj, "closed": False}
            close = getattr(obj, attr)

            def closing(*a, **k):
                opened[name]["closed"] = True
                return close(*a, **k)

            setattr(obj, attr, closing)
            return obj
        return wrapped

    logger_cls = run_log.Logger
    real_train = logger_cls.train

    def failing(self, step, scalars, advanced):
        if step == 4:
            raise RuntimeError("boom at step 4")
        return real_train(self, step, scalars, advanced)

    monkeypatch.setattr(logger_cls, "train", failing)
    monkeypatch.setattr(checkpoint, "make_manager", spy("manager", checkpoint.make_manager, "close"))
    monkeypatch.setattr(feed, "DeviceFeed", spy("feed", feed.DeviceFeed, "close"))
    monkeypatch.setattr(run, "Logger", spy("logger", logger_cls, "close"))
    config = _tiny_config(steps=6, log_every=1, checkpoint_every=3)
    with pytest.raises(RuntimeError, match="boom at step 4"):
        run.train(config, tmp_path / "run", upscaler=Upscaler)
    assert set(opened) == {"manager", "feed", "logger"}
    assert all(o["closed"] for o in opened.values()), opened
    for t in set(threading.enumerate()) - before:  # closed pools' threads end on their own
        t.join(timeout=5)
    # tqdm_monitor: tqdm's process-wide watchdog, shared by every bar, not the run's.
    left = [t.name for t in threading.enumerate()
            if t not in before and t.is_alive() and t.name != "tqdm_monitor"]
    assert left == [], left
    # The checkpoint of step 3 finished writing before the manager closed.
    assert (tmp_path / "run" / "checkpoints" / "3").is_dir()


def _write_val(folder, sizes):
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"v{i}_{h}x{w}.png")
    return folder


def test_a_validation_image_too_small_to_score_is_skipped_or_refused_at_set_up(tmp_path, capsys):
    """A 12x12 image cannot be scored at x2 (SSIM's 11x11 window after a 2-pixel border): the
    trainer skips it with a message naming it, like the evaluate CLI, and refuses a validation
    set with nothing else before it writes the workdir or compiles."""
    from edsr_jax.io import cli

    tiny_only = _write_val(tmp_path / "tiny", [(12, 12)])
    config = _tiny_config(steps=1, log_every=1)
    config.data.val = str(tiny_only)
    with pytest.raises(cli.UsageError, match=r"config\.data\.val: .*tiny: no image can be scored at x2"):
        run.train(config, tmp_path / "refused", upscaler=Upscaler)
    assert "v0_12x12.png: 12x12 pixels is too small to score at x2" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()

    mixed = _write_val(tmp_path / "mixed", [(12, 12), (40, 36)])
    config.data.val, config.data.val_max_images = str(mixed), 2
    result = run.train(config, tmp_path / "run", upscaler=Upscaler)
    assert result["images"] == 1 and np.isfinite(result["psnr"])
    assert "skipped: " in capsys.readouterr().err


def test_augmentation_note_names_the_symmetries_a_phase_keeps():
    """Decimated LR keeps its alignment only under the identity and the transpose: the run
    says so (and the data pipeline draws only those, tests/test_data.py); centred
    degradations use all 8 and say nothing."""
    from edsr_jax.training.config import base_config

    c = base_config()
    c.data.source = "hr"
    c.data.spec = "nearest > jpeg(30,60)"
    note = augmentation_note(c, 2)
    assert "'nearest(2) > jpeg(30,60)'" in note and "2 of the 8" in note and "identity, transpose" in note
    assert training_spec(c, 3) == "nearest > jpeg(30,60)"
    c.data.spec = ""
    assert augmentation_note(c, 2) is None and training_spec(c, 2) == "bicubic(2)"
