"""Shared test set-up: a persistent XLA compile cache, paths to ../shared datasets, PyTorch
for the reference tests when it is installed (``torch_or_skip``), and the check that
docs/bad_inputs.md holds a row for every event a test covers (``assert_documented_rows``)."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


TORCH_SKIP = ('PyTorch reference test: torch is not installed; to run these: pip install "torch==2.13.0" '
              '--index-url https://download.pytorch.org/whl/cpu (the CPU build), or pip install -e ".[torch]"')


def torch_or_skip():
    """``torch``, or skip the calling test with one line saying how to run it (every such skip
    is raised here, so ``-ra`` folds them into one line). ``EDSR_JAX_REQUIRE_TORCH=1`` (CI)
    fails the test instead."""
    try:
        import torch
    except ImportError:
        if os.environ.get("EDSR_JAX_REQUIRE_TORCH") == "1":
            pytest.fail("EDSR_JAX_REQUIRE_TORCH=1 but torch is not installed", pytrace=False)
        pytest.skip(TORCH_SKIP)
    return torch


def pytest_runtest_setup(item):
    """Tests marked ``torch`` (those whose fixtures need it) skip through ``torch_or_skip``."""
    if item.get_closest_marker("torch") is not None:
        torch_or_skip()


def shared_dataset(name: str) -> Path:
    """Path to ../shared/datasets/NAME, or skip the test when it is absent."""
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return path


def assert_documented_rows(events) -> None:
    """docs/bad_inputs.md holds a table row starting with each of ``events`` (their tests exist)."""
    doc = (ROOT / "docs" / "bad_inputs.md").read_text()
    for event in events:
        assert f"\n| {event} | " in doc, f"docs/bad_inputs.md lacks the row for: {event}"


def pack_tiny_model(folder, name: str, scale: int, spec: str, seed: int) -> None:
    """Pack a tiny EDSR (1 block, 8 features) at ``scale`` as built-in model ``name`` into
    ``folder`` (``pretrained.pack``; weights from ``jax.random.key(seed)``), its card naming the
    training damage ``spec``."""
    import jax
    import jax.numpy as jnp

    from edsr_jax.inference import pretrained
    from edsr_jax.nets.edsr import ModelConfig

    config = ModelConfig(scale=scale, num_blocks=1, num_features=8)
    variables = config.build().init(jax.random.key(seed), jnp.zeros((1, 8, 8, 3)))
    pretrained.pack(variables, config, name, {"summary": f"tiny, trained on {spec}"}, folder, spec=spec)


def tiny_state_and_batch(tx, num_blocks: int = 1, use_ema: bool = True, res_scale: float = 1.0,
                         dtype: str = "float32", seed: int = 0):
    """``(model, state, batch)`` for train-step tests: an EDSR x2 of ``num_blocks`` blocks and 8
    features (``res_scale``, compute ``dtype`` "float32" or "bfloat16"), its train state under
    optimiser ``tx`` (key ``seed``, EMA with ``use_ema``), and a batch ``{"lr": (2, 6, 6, 3),
    "hr": (2, 12, 12, 3)}`` uint8 in [0, 255] (NumPy ``seed``)."""
    import jax
    import numpy as np

    from edsr_jax.nets.edsr import DTYPES, ModelConfig
    from edsr_jax.training.state import create_train_state

    model = ModelConfig(2, num_blocks, 8, res_scale).build(dtype=DTYPES[dtype])
    state = create_train_state(model, tx, jax.random.key(seed), use_ema=use_ema)
    rng = np.random.default_rng(seed)
    batch = {"lr": rng.integers(0, 256, (2, 6, 6, 3), dtype=np.uint8),
             "hr": rng.integers(0, 256, (2, 12, 12, 3), dtype=np.uint8)}
    return model, state, batch
