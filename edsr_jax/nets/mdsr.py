"""MDSR, the EDSR paper's multi-scale network (Lim et al., 2017, section 3.2), as a Flax module.

One network for x2, x3 and x4. Layout as in the official release (``EDSR-PyTorch``
``src/model/mdsr.py``) so its weights convert one to one (``torch_convert.mdsr_*``):

    mean shift -> head conv -> pre-processing of the scale (two 5x5 residual blocks)
    -> N shared 3x3 residual blocks -> body conv (+ long skip from the pre-processing output)
    -> upsampler of the scale (conv + pixel shuffle stages) -> shared tail conv -> mean shift back

The scale is chosen per call: ``model.apply(params, x, scale)`` with ``scale`` a Python int
(static under ``jax.jit``); the parameters hold every scale's branches.

A module of its own, not part of ``model.py``: EDSR's ``ModelConfig`` (a single ``scale``, a
``res_scale``) is what checkpoints, the trainer and every tool record, and MDSR's description
differs (a tuple of scales, no residual scaling); the building blocks (``Conv``, ``ResBlock``,
``pixel_shuffle``, ``upsample_stages``) are ``model.py``'s, shared and unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from edsr_jax import SCALES
from edsr_jax.nets.edsr import (CONV_BACKENDS, DIV2K_RGB_MEAN, Conv, ResBlock, pixel_shuffle,
                            upsample_stages)

# name -> (num_blocks, num_features) of the official release (mdsr_baseline-a00cab12.pt,
# mdsr-4a78bedf.pt); every preset covers the scales (2, 3, 4).
PRESETS: dict[str, tuple[int, int]] = {
    "mdsr_baseline": (16, 64),
    "mdsr": (80, 64),
}
PRE_PROCESS_BLOCKS = 2  # residual blocks per scale before the shared body
PRE_PROCESS_KERNEL = 5  # their kernel size: a wider view of the LR image per scale


class PreProcess(nn.Module):
    """A scale's pre-processing: two residual blocks with 5x5 kernels ``block_0``, ``block_1``
    (each ``conv0``, ``conv1``). (N, H, W, features) in and out."""

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_backend: str = "xla"

    @nn.compact
    def __call__(self, x):
        for j in range(PRE_PROCESS_BLOCKS):
            x = ResBlock(self.features, 1.0, self.dtype, self.param_dtype, self.conv_backend,
                         PRE_PROCESS_KERNEL, name=f"block_{j}")(x)
        return x


class Upsampler(nn.Module):
    """A scale's upsampler: 3x3 conv to ``features * r * r`` channels then pixel shuffle by r,
    per stage ``stage_{k}`` (x2, x3: one stage; x4: two x2 stages).
    (N, H, W, features) -> (N, H*scale, W*scale, features)."""

    scale: int
    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_backend: str = "xla"

    @nn.compact
    def __call__(self, x):
        for k, r in enumerate(upsample_stages(self.scale)):
            x = Conv(self.features * r * r, self.features, self.dtype, self.param_dtype,
                     self.conv_backend, name=f"stage_{k}")(x)
            x = pixel_shuffle(x, r)
        return x


class MDSR(nn.Module):
    """MDSR super-resolution network: ``apply(params, x, scale)``.

    Input ``(N, H, W, 3)`` float in [0, 255]; ``scale`` one of ``scales`` (a Python int: it
    picks the branches, so it is static under ``jax.jit``); output ``(N, H*scale, W*scale, 3)``
    float32 in about [0, 255] (not clipped). Parameters: ``head``, ``pre_process_x{s}``,
    ``block_{i}``, ``body_conv``, ``upsample_x{s}``, ``tail``. ``init`` creates the branches of
    every scale in ``scales`` whichever ``scale`` it is given (it runs them all once), so one
    parameter tree serves all scales. Weights are initialised as PyTorch's ``nn.Conv2d`` (see
    ``model.Conv``); ``dtype``, ``param_dtype`` and ``conv_backend`` as in ``model.EDSR``.
    """

    scales: tuple[int, ...] = SCALES
    num_blocks: int = 16
    num_features: int = 64
    rgb_mean: tuple[float, float, float] = DIV2K_RGB_MEAN
    rgb_range: float = 255.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv_backend: str = "xla"

    @nn.compact
    def __call__(self, x, scale: int):
        if isinstance(scale, jax.core.Tracer):
            raise TypeError("MDSR's scale must be a Python int, not a traced value: pass it as "
                            "a static argument (jax.jit(..., static_argnames=...) or "
                            "functools.partial)")
        if scale not in self.scales:
            raise ValueError(f"scale must be one of this MDSR's scales {tuple(self.scales)}, "
                             f"got {scale!r}")
        f, dt, pdt, be = self.num_features, self.dtype, self.param_dtype, self.conv_backend
        # While initialising, run every scale's branches so that all their parameters exist.
        branches = tuple(self.scales) if self.is_initializing() else (scale,)
        mean = jnp.asarray(self.rgb_mean, jnp.float32) * self.rgb_range
        x = (x.astype(jnp.float32) - mean).astype(dt)
        x = Conv(f, x.shape[-1], dt, pdt, be, name="head")(x)
        pre = {s: PreProcess(f, dt, pdt, be, name=f"pre_process_x{s}")(x) for s in branches}
        x = pre[scale]
        res = x
        for i in range(self.num_blocks):
            res = ResBlock(f, 1.0, dt, pdt, be, name=f"block_{i}")(res)
        res = Conv(f, f, dt, pdt, be, name="body_conv")(res)
        x = x + res
        up = {s: Upsampler(s, f, dt, pdt, be, name=f"upsample_x{s}")(x) for s in branches}
        x = Conv(3, f, dt, pdt, be, name="tail")(up[scale])
        return x.astype(jnp.float32) + mean


@dataclasses.dataclass(frozen=True)
class MDSRConfig:
    """Plain description of an MDSR architecture: the scales it serves (in the official
    release's branch order, ``pre_process.{i}`` / ``upsample.{i}`` for ``scales[i]``), the
    number of shared residual blocks and the feature width."""

    scales: tuple[int, ...] = SCALES
    num_blocks: int = 16
    num_features: int = 64

    def build(self, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
              conv_backend: str = "xla") -> MDSR:
        """The Linen module for this architecture with the given dtypes and convolution
        backend ("xla" or "onednn": float32 compute on CPU only, see ``model.Conv``)."""
        if conv_backend not in CONV_BACKENDS:
            raise ValueError(f"conv_backend must be one of {CONV_BACKENDS}, got {conv_backend!r}")
        if conv_backend == "onednn" and jnp.dtype(dtype) != jnp.float32:
            raise ValueError(f"conv_backend 'onednn' computes in float32, got dtype {jnp.dtype(dtype)}")
        return MDSR(scales=tuple(self.scales), num_blocks=self.num_blocks,
                    num_features=self.num_features, dtype=dtype, param_dtype=param_dtype,
                    conv_backend=conv_backend)

    def to_dict(self) -> dict:
        """The fields as plain data (``scales`` a list), e.g. for a checkpoint's config."""
        d = dataclasses.asdict(self)
        d["scales"] = list(self.scales)
        return d

    def validate(self) -> "MDSRConfig":
        """Raise ValueError naming the first bad field; return self."""
        scales = tuple(self.scales)
        if not scales or any(s not in SCALES for s in scales) or len(set(scales)) != len(scales):
            raise ValueError(f"mdsr scales must be distinct values from {SCALES}, got {self.scales!r}")
        if int(self.num_blocks) != self.num_blocks or self.num_blocks < 0:
            raise ValueError(f"model.num_blocks must be an integer >= 0, got {self.num_blocks!r}")
        if int(self.num_features) != self.num_features or self.num_features < 1:
            raise ValueError(f"model.num_features must be an integer >= 1, got {self.num_features!r}")
        return self


def preset(name: str) -> MDSRConfig:
    """Named MDSR architecture, scales (2, 3, 4): ``preset("mdsr_baseline")``; names in
    ``PRESETS``."""
    if name not in PRESETS:
        raise ValueError(f"unknown MDSR preset {name!r}; choose from {sorted(PRESETS)}")
    blocks, features = PRESETS[name]
    return MDSRConfig(SCALES, blocks, features).validate()


def receptive_radius(config: MDSRConfig, scale: int) -> int:
    """LR pixels on each side that influence one output pixel at ``scale`` (an upper bound):
    head 1, pre-processing 2 blocks x 2 convs x 2 (5x5), 1 per body conv, 1 per upsampler
    stage, tail 1."""
    pre = PRE_PROCESS_BLOCKS * 2 * (PRE_PROCESS_KERNEL // 2)
    return 1 + pre + 2 * config.num_blocks + 1 + len(upsample_stages(scale)) + 1
