"""edsr-jax: EDSR single-image super-resolution in JAX/Flax.

What research code needs, at the top (resolved on first use, so that ``import edsr_jax`` and the
commands' ``--help`` stay light; docs/ARCHITECTURE.md draws where each lives)::

    import edsr_jax
    config = edsr_jax.preset("edsr_baseline", 2)          # ModelConfig
    params = edsr_jax.EDSR(config).init(key, lr)          # Flax Linen: model.apply(params, x)
    sr = edsr_jax.apply(params, lr, config)               # (N, H, W, 3) float32 in [0, 255]
    up = edsr_jax.Upscaler.from_pretrained("photo-x2")    # tiles, ensemble, any image size
    choice = edsr_jax.choose_model("poster.jpg", 2)       # the built-in model for its damage, and why
    sr, choice = edsr_jax.AutoUpscaler(2).upscale("poster.jpg")  # chosen and run (each model loaded once)
    lr = edsr_jax.degrade_batch("nearest > jpeg(30,60)", hr, key)  # damage on the device
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

SCALES = (2, 3, 4)  # the upscaling factors every model, degradation and tool supports

# name -> the module that defines it
_PUBLIC = {
    "EDSR": "edsr_jax.nets.edsr",
    "ModelConfig": "edsr_jax.nets.edsr",
    "preset": "edsr_jax.nets.edsr",
    "MDSR": "edsr_jax.nets.mdsr",
    "MDSRConfig": "edsr_jax.nets.mdsr",
    "apply": "edsr_jax.inference.infer",
    "Upscaler": "edsr_jax.inference.infer",
    "AutoUpscaler": "edsr_jax.inference.choice",
    "choose_model": "edsr_jax.inference.choice",
    "restore_for_inference": "edsr_jax.training.restore",
    "base_config": "edsr_jax.training.config",
    "make_optimizer": "edsr_jax.training.optim",
    "create_train_state": "edsr_jax.training.state",
    "compile_train_step": "edsr_jax.training.step",
    "degrade_batch": "edsr_jax.degradation.device",
}

__all__ = ["SCALES", "__version__", *_PUBLIC]


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'edsr_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
