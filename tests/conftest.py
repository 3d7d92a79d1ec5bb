"""Shared test set-up: a persistent XLA compile cache and paths to ../shared datasets."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def shared_dataset(name: str) -> Path:
    """Path to ../shared/datasets/NAME, or skip the test when it is absent."""
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return path
