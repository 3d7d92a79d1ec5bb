"""Training MDSR (issue 19): one scale per step, per-scale streams and validation, exact resume,
sharding, fine-tuning from MDSR (and EDSR) weights, config errors.

A tiny MDSR (2 shared blocks, 8 features, scales 2, 3 and 4) on the built-in images, as the
EDSR tests do (tests/configs/tiny.py with the MDSR fields overridden)."""

import json
import os
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
from edsr_jax.training.datasets import resolve_lr_name, train_dataset
from edsr_jax.training.finetune import merge_params, upsamplers_as
from edsr_jax.training.loss import pixel_loss
from edsr_jax.training.restore import restore_for_inference, restore_params
from edsr_jax.training.state import create_train_state, init_variables
from edsr_jax.training.step import train_step
from edsr_jax import train
from edsr_jax.training import checkpoint
from edsr_jax.io import cli
from edsr_jax.data import sources as data
from edsr_jax.training import config as config_lib
from edsr_jax.nets.mdsr import MDSRConfig
from edsr_jax.nets.edsr import ModelConfig

TINY = str(ROOT / "tests" / "configs" / "tiny.py")
CACHE = str(ROOT / ".cache" / "test-decoded")
MDSR = ["--config.model.arch=mdsr", "--config.model.scale=0", "--config.model.scales=(2,3,4)"]
SCALES = (2, 3, 4)


def run_train(workdir, *overrides, devices=1, timeout=300):
    """The training CLI on the tiny MDSR in a fresh process with ``devices`` CPU devices."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "edsr_jax.train", f"--config={TINY}", f"--workdir={workdir}",
           f"--config.data.cache_dir={CACHE}", *MDSR, *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def params_of(path):
    _, params, _ = restore_params(Path(path), prefer_ema=False)
    return jax.tree_util.tree_map(np.asarray, params)


def iter_state(workdir, step):
    return json.loads((Path(workdir) / "checkpoints" / str(step) / "data_iter"
                       / "process_0-of-1.json").read_text())


def tiny_config(**fields):
    """tests/configs/tiny.py as an MDSR; ``fields`` as {"train.steps": 1, ...}."""
    config = train.load_config(TINY, [f"--config.data.cache_dir={CACHE}", *MDSR])
    for key, value in fields.items():
        group, name = key.split(".")
        config[group][name] = value
    return config


# ---------------------------------------------------------------- pure parts


def test_scale_order_is_a_seeded_function_of_the_batch_number():
    order = data.ScaleOrder(SCALES, "random", seed=0)
    draws = [order(n) for n in range(3000)]
    assert set(draws) == set(SCALES)
    assert all(abs(draws.count(s) / 3000 - 1 / 3) < 0.05 for s in SCALES)  # uniform
    # The same function whatever the query order (a resumed run asks from n on).
    again = data.ScaleOrder(SCALES, "random", seed=0)
    assert [again(n) for n in reversed(range(3000))] == draws[::-1]
    assert [data.ScaleOrder(SCALES, "random", seed=1)(n) for n in range(50)] != draws[:50]
    assert [data.ScaleOrder(SCALES, "cycle")(n) for n in range(5)] == [2, 3, 4, 2, 3]
    with pytest.raises(ValueError, match="scale order must be one of"):
        data.ScaleOrder(SCALES, "shuffled")


def _batch(scale, seed=0, b=2, p=6):
    """Learnable pairs at ``scale``: smooth random HR images and their MATLAB-bicubic LR."""
    from edsr_jax.degradation.imresize import imresize

    rng = np.random.default_rng(seed)
    hr = [imresize(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8), output_shape=(scale * p, scale * p))
          for _ in range(b)]
    return {"lr": np.stack([imresize(h, 1 / scale) for h in hr]), "hr": np.stack(hr)}


def test_one_step_per_scale_trains_every_scale_and_only_its_branches():
    model = MDSRConfig(SCALES, 1, 8).build()
    tx = optax.adam(1e-3)
    state = create_train_state(model, tx, jax.random.key(0), use_ema=True)
    step = jax.jit(lambda s, b, scale: train_step(s, b, scale, model=model, tx=tx, ema_decay=0.5),
                   static_argnums=(2,))
    batches = {s: _batch(s, seed=s) for s in SCALES}
    p0 = jax.tree_util.tree_map(np.asarray, state.params["params"])
    state, _ = step(state, batches[3], 3)  # the first step moves only x3's branches (and the shared ones)
    p1 = jax.tree_util.tree_map(np.asarray, state.params["params"])
    for name in p0:
        moved = not all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(p0[name]),
                                                               jax.tree_util.tree_leaves(p1[name])))
        assert moved == (not name.endswith(("_x2", "_x4"))), name
    first = {s: float(pixel_loss(model.apply(state.params, batches[s]["lr"].astype(np.float32), s),
                                 batches[s]["hr"], "l1")) for s in SCALES}
    losses = {s: [] for s in SCALES}
    for n in range(60):
        s = SCALES[n % 3]
        state, m = step(state, batches[s], s)
        losses[s].append(float(m["loss"]))
    for s in SCALES:
        assert losses[s][-1] < 0.75 * first[s], (s, first[s], losses[s][-1])
    assert int(state.step) == 61 and int(state.nonfinite) == 0 and step._cache_size() == 3
    # EMA follows the params of every branch.
    assert jax.tree_util.tree_structure(state.ema) == jax.tree_util.tree_structure(state.params)


def test_bfloat16_step_is_finite_and_keeps_float32_params():
    model = MDSRConfig(SCALES, 1, 8).build(dtype=jnp.bfloat16)
    tx = optax.adam(1e-3)
    state = create_train_state(model, tx, jax.random.key(0), use_ema=False)
    state, m = jax.jit(lambda s, b: train_step(s, b, 4, model=model, tx=tx))(state, _batch(4))
    assert np.isfinite(float(m["loss"])) and int(state.nonfinite) == 0
    assert {a.dtype for a in jax.tree_util.tree_leaves(state.params)} == {jnp.dtype(jnp.float32)}


def test_upsamplers_carry_over_between_edsr_and_mdsr():
    m = MDSRConfig(SCALES, 1, 8)
    e4 = ModelConfig(4, 1, 8)
    mdsr_p = jax.device_get(init_variables(m.build(), jax.random.key(0)))
    edsr_p = jax.device_get(init_variables(e4.build(), jax.random.key(1)))
    as_edsr = upsamplers_as(mdsr_p, m, e4)
    merged, took, kept = merge_params(edsr_p, as_edsr)
    assert kept == []  # every EDSR x4 array comes from the MDSR: head, body, x4 upsampler, tail
    np.testing.assert_array_equal(merged["params"]["upsample_1"]["kernel"],
                                  mdsr_p["params"]["upsample_x4"]["stage_1"]["kernel"])
    as_mdsr = upsamplers_as(edsr_p, e4, m)
    merged, took, kept = merge_params(mdsr_p, as_mdsr)
    assert "params/upsample_x4/stage_0/kernel" in took and "params/tail/kernel" in took
    assert all(k.split("/")[1].startswith(("pre_process_", "upsample_x2", "upsample_x3")) for k in kept)


@pytest.mark.parametrize("name, blocks", [("mdsr_baseline", 16), ("mdsr", 80)])
def test_paper_experiments_are_the_released_models(name, blocks):
    config = train.load_config(str(ROOT / "experiments" / f"{name}.py"))
    config_lib.validate(config)
    assert config_lib.model_config(config) == MDSRConfig(SCALES, blocks, 64)
    assert (config.data.patch_size, config.data.batch_size, config.optim.lr) == (48, 16, 1e-4)
    assert (config.optim.decay_every, config.train.steps, config.train.scale_order) == (200_000, 650_000, "random")
    assert (config.data.source, config.data.train, config.optim.loss) == ("paired", "data/DIV2K", "l1")


def test_prepared_x2_x3_x4_folders_feed_each_scale(tmp_path):
    """``prepare --scales 2 3 4`` output as ``data.source = "paired"``: each scale reads its
    X<s> pairs, LR patch ``patch_size`` and HR ``patch_size * s``, with a seed of its own."""
    from edsr_jax import prepare, sample_data

    sample_data.main([str(tmp_path / "samples")])
    assert prepare.main([str(tmp_path / "samples" / "train"), "--out", str(tmp_path / "div2k"),
                         "--scales", "2", "3", "4", "--workers", "1", "--no-progress"]) == 0
    config = tiny_config(**{"data.source": "paired", "data.train": str(tmp_path / "div2k")})
    resolve_lr_name(config)
    firsts = {}
    for s in SCALES:
        batch = next(iter(train_dataset(config, 0, 1, s)))
        assert batch["lr"].shape == (8, 12, 12, 3) and batch["hr"].shape == (8, 12 * s, 12 * s, 3)
        firsts[s] = batch["lr"]
    assert not np.array_equal(firsts[2][:, :4, :4], firsts[3][:, :4, :4])


# ---------------------------------------------------------------- the CLI, end to end


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """6 steps of the tiny MDSR in one go (random scale order, seed 0; checkpoints at 3 and 6,
    EMA on, validated at the end)."""
    workdir = tmp_path_factory.mktemp("mdsr_straight")
    r = run_train(workdir, "--config.train.ema=0.5")
    assert r.returncode == 0, r.stderr
    return workdir


@pytest.mark.slow
def test_every_scale_is_drawn_and_validated(straight):
    drawn = [data.ScaleOrder(SCALES, "random", seed=0)(n) for n in range(6)]
    assert set(drawn) == set(SCALES)  # seed 0 draws every scale in the first 6 steps
    state = iter_state(straight, 6)
    assert state["batches"] == 6
    # each scale's stream advanced by the batches of that scale, and no further
    assert {int(s): v["next_index"] for s, v in state["scales"].items()} == {s: drawn.count(s) for s in SCALES}
    record = json.loads((straight / "metrics.jsonl").read_text().splitlines()[-1])
    for s in SCALES:
        for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "images"):
            assert f"x{s}/{k}" in record, (s, k)
    # the best-checkpoint ranking uses the mean PSNR over the scales
    assert record["psnr"] == pytest.approx(np.mean([record[f"x{s}/psnr"] for s in SCALES]))
    assert checkpoint.step_metrics(straight / "checkpoints" / "6")["psnr"] == pytest.approx(record["psnr"])
    config, params = restore_for_inference(straight)
    assert config == MDSRConfig(SCALES, 2, 8) and "upsample_x3" in params["params"]


@pytest.mark.slow
def test_stop_and_resume_continues_the_scale_sequence_exactly(straight, tmp_path):
    first = run_train(tmp_path, "--config.train.ema=0.5", "--config.train.steps=3")
    assert first.returncode == 0, first.stderr
    second = run_train(tmp_path, "--config.train.ema=0.5")
    assert second.returncode == 0, second.stderr
    assert "resuming from step 3" in second.stderr
    # the only change: the step count (model.scales compares equal to its stored JSON list)
    changed = [line for line in second.stderr.splitlines() if "config changed" in line]
    assert changed == ["config changed since the checkpoint: train.steps: 3 -> 6"], changed
    assert iter_state(tmp_path, 3) == iter_state(straight, 3)
    assert iter_state(tmp_path, 6) == iter_state(straight, 6)
    for prefer_ema in (False, True):
        a = restore_params(straight, prefer_ema=prefer_ema)[1]
        b = restore_params(tmp_path, prefer_ema=prefer_ema)[1]
        jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


@pytest.mark.slow
def test_two_devices_match_one_device(straight, tmp_path):
    r = run_train(tmp_path, "--config.train.ema=0.5", "--config.train.steps=3", devices=2)
    assert r.returncode == 0, r.stderr
    assert "2 cpu device(s), float32, convolutions by XLA" in r.stderr
    one = params_of(straight / "checkpoints" / "3")  # the 1-device run's step 3
    two = params_of(tmp_path)
    for x, y in zip(jax.tree_util.tree_leaves(two), jax.tree_util.tree_leaves(one)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(y).max())))
    assert iter_state(tmp_path, 3) == iter_state(straight, 3)


@pytest.mark.slow
def test_init_from_an_mdsr_checkpoint_finetunes(straight, tmp_path, capsys):
    config = tiny_config(**{"train.steps": 1, "train.log_every": 1, "train.init_from": str(straight)})
    result = run.train(config, tmp_path / "ft", upscaler=Upscaler)
    err = capsys.readouterr().err
    assert f"fine-tuning from {straight}" in err and "freshly initialised 0: none" in err, err
    assert np.isfinite(result["psnr"]) and all(f"x{s}/psnr" in result for s in SCALES)


@pytest.mark.slow
def test_each_scale_compiles_its_step_once(tmp_path):
    """One jit, the scale static: three executables however often each scale comes round,
    across epochs and an evaluation (test_compile.py's listener)."""
    from test_compile import CompileLog

    config = tiny_config(**{"train.steps": 8, "train.scale_order": "cycle", "train.eval_every": 4,
                            "train.checkpoint_every": 1000, "train.log_every": 4})
    with CompileLog() as log:
        run.train(config, tmp_path / "run", upscaler=Upscaler)
    assert log.count("train_step") == 3, log.names


@pytest.mark.parametrize("fields, message", [
    ({"model.scales": (2, 5)}, "config.model.scales = (2, 5): must be distinct values from"),
    ({"model.scales": (2, 2)}, "config.model.scales = (2, 2): must be distinct values from"),
    ({"model.scales": ()}, "config.model.scales = (): must be distinct values from"),
    ({"model.scale": 2}, "config.model.scale = 2: must be 0 for an MDSR"),
    ({"model.res_scale": 0.1}, "config.model.res_scale = 0.1: must be 1.0 for an MDSR"),
    ({"model.arch": "rdn"}, "config.model.arch = 'rdn': must be one of ('edsr', 'mdsr')"),
    ({"train.scale_order": "shuffle"}, "config.train.scale_order = 'shuffle': must be one of"),
    ({"data.spec": "bicubic(2)"}, "config.data.spec = 'bicubic(2)': not a valid degradation spec at x3"),
])
def test_bad_mdsr_config_is_refused_naming_the_option(tmp_path, fields, message):
    config = tiny_config(**fields)
    with pytest.raises(cli.UsageError) as e:
        run.train(config, tmp_path / "w", upscaler=Upscaler)
    assert message in str(e.value)
    assert not (tmp_path / "w").exists()


def test_edsr_config_refuses_mdsr_fields():
    config = config_lib.base_config()
    config.model.scales = (2, 3)
    with pytest.raises(ValueError, match=r"config.model.scales = \(2, 3\): is for an MDSR only"):
        config_lib.validate(config)


@pytest.mark.slow
def test_resume_refuses_an_mdsr_workdir_with_an_edsr_config(straight):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "edsr_jax.train", f"--config={TINY}", f"--workdir={straight}",
                        f"--config.data.cache_dir={CACHE}", "--config.train.steps=7"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "arch: checkpoint='mdsr', config=None" in r.stderr, r.stderr
