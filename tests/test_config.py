"""Experiment configs: every file loads and validates; the paper's recipes hold its numbers."""

import importlib.util

import pytest

from conftest import ROOT
from edsr_jax.training import config as config_lib
from edsr_jax.nets.edsr import preset

EXPERIMENTS = sorted((ROOT / "experiments").glob("*.py"))


def load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


CONFIGS = [p for p in EXPERIMENTS if "def get_config" in p.read_text()]


def test_all_paper_recipes_and_the_quickstart_are_there():
    names = {p.stem for p in CONFIGS}
    assert {"quickstart", "sun80_x2"} | {f"{n}_x{s}" for n in ("edsr", "edsr_baseline")
                                         for s in (2, 3, 4)} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_experiment_validates(path):
    c = load(path)
    config_lib.validate(c, device_count=1)
    assert c.name


@pytest.mark.parametrize("name", ["edsr_baseline", "edsr"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_paper_recipes(name, scale):
    c = load(ROOT / "experiments" / f"{name}_x{scale}.py")
    assert config_lib.model_config(c) == preset(name, scale)
    assert (c.data.patch_size, c.data.batch_size) == (48, 16)
    assert (c.optim.b1, c.optim.b2, c.optim.eps, c.optim.lr) == (0.9, 0.999, 1e-8, 1e-4)
    assert (c.optim.decay_every, c.optim.decay_factor, c.train.steps) == (200_000, 0.5, 300_000)
    assert c.optim.loss == "l1"
    assert c.train.init_from == ("runs/edsr_x2" if name == "edsr" and scale > 2 else "")


@pytest.mark.parametrize("field, value, message", [
    ("data.patch_size", 0, "positive integer"),
    ("optim.loss", "l3", "must be one of"),
    ("train.ema", 1.0, "[0, 1)"),
    ("model.dtype", "float16", "must be one of"),
    ("optim.schedule", "linear", "must be one of"),
    ("optim.warmup_steps", -1, "integer >= 0"),
])
def test_validate_names_the_field(field, value, message):
    c = config_lib.base_config()
    section, key = field.split(".")
    c[section][key] = value
    with pytest.raises(ValueError, match=rf"config\.{field} = .*{message}".replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        config_lib.validate(c)


def test_cosine_schedule_warms_up_then_ends_at_zero():
    import numpy as np

    from edsr_jax.training.optim import make_optimizer

    c = config_lib.base_config()
    c.optim.lr, c.optim.schedule, c.optim.warmup_steps = 1e-3, "cosine", 100
    c.train.steps = 1100
    config_lib.validate(c)
    _, schedule = make_optimizer(c.optim, c.train.steps)
    lr = lambda step: float(schedule(step))  # noqa: E731
    assert lr(0) == 0.0 and np.isclose(lr(50), 5e-4) and np.isclose(lr(100), 1e-3)
    assert np.isclose(lr(600), 5e-4, rtol=1e-4)  # half way down the cosine
    assert lr(1100) == 0.0 and lr(2000) == 0.0
    c.optim.cosine_steps = 300  # its own length, independent of train.steps
    _, schedule = make_optimizer(c.optim, c.train.steps)
    assert np.isclose(float(schedule(200)), 5e-4, rtol=1e-4) and float(schedule(300)) == 0.0
    _, step = make_optimizer(config_lib.base_config().optim, 300_000)  # the paper's default
    assert np.isclose(float(step(199_999)), 1e-4) and np.isclose(float(step(200_000)), 5e-5)


def test_cosine_warmup_must_be_shorter_than_the_schedule():
    c = config_lib.base_config()
    c.optim.schedule, c.optim.warmup_steps, c.train.steps = "cosine", 500, 500
    with pytest.raises(ValueError, match="optim.warmup_steps"):
        config_lib.validate(c)
