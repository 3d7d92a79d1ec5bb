"""Convert weights between our parameter tree and the official PyTorch EDSR ``state_dict``.

Official layout (``EDSR-PyTorch`` release files such as ``edsr_baseline_x2-*.pt``):

=========================  ======================================
PyTorch key                ours
=========================  ======================================
``head.0``                 ``head``
``body.{i}.body.0`` / ``.2``  ``block_{i}/conv0`` / ``conv1``
``body.{N}``               ``body_conv`` (N = number of blocks)
``tail.0.{2k}``            ``upsample_{k}`` (PixelShuffle modules sit between)
``tail.1``                 ``tail``
``sub_mean`` / ``add_mean``  fixed mean shifts (identity 1x1 conv, bias -/+ 255 * mean)
=========================  ======================================

Conv kernels: ours ``(kh, kw, in, out)``, PyTorch ``(out, in, kh, kw)``; both compute
cross-correlation, so a transpose is all it takes. NumPy only: torch is needed just to
read or write ``.pt`` files (see ``export.py``).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from edsr_jax.model import DIV2K_RGB_MEAN, ModelConfig, preset, upsample_stages

RGB_RANGE = 255.0


class ConversionError(ValueError):
    """A state_dict that does not describe the expected EDSR; the message says what differs."""


def _pairs(config: ModelConfig) -> list[tuple[str, tuple[str, ...]]]:
    """(torch module prefix, our param path) for every learned conv, in forward order."""
    pairs = [("head.0", ("head",))]
    for i in range(config.num_blocks):
        pairs += [(f"body.{i}.body.0", (f"block_{i}", "conv0")),
                  (f"body.{i}.body.2", (f"block_{i}", "conv1"))]
    pairs.append((f"body.{config.num_blocks}", ("body_conv",)))
    for k in range(len(upsample_stages(config.scale))):
        pairs.append((f"tail.0.{2 * k}", (f"upsample_{k}",)))
    pairs.append(("tail.1", ("tail",)))
    return pairs


def mean_shift(sign: int) -> dict[str, np.ndarray]:
    """The fixed mean-shift conv: ``{"weight": (3, 3, 1, 1) identity, "bias": (3,)
    sign * 255 * DIV2K mean}``, float32."""
    return {"weight": np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1),
            "bias": (sign * RGB_RANGE * np.asarray(DIV2K_RGB_MEAN, np.float32)).astype(np.float32)}


def to_state_dict(params, config: ModelConfig) -> dict[str, np.ndarray]:
    """Our params (tree or ``{"params": tree}``) -> official EDSR ``state_dict`` as float32
    NumPy arrays (wrap with ``torch.from_numpy`` to load into the PyTorch model)."""
    if hasattr(params, "keys") and set(params.keys()) == {"params"}:
        params = params["params"]
    sd: dict[str, np.ndarray] = {}
    for name, sign in (("sub_mean", -1), ("add_mean", +1)):
        for k, v in mean_shift(sign).items():
            sd[f"{name}.{k}"] = v
    for prefix, path in _pairs(config):
        node = params
        for p in path:
            node = node[p]
        kernel = np.asarray(node["kernel"], np.float32)
        sd[f"{prefix}.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
        sd[f"{prefix}.bias"] = np.asarray(node["bias"], np.float32).copy()
    return sd


def infer_config(state_dict: Mapping[str, Any], res_scale: float = 1.0) -> ModelConfig:
    """Architecture of an official-layout ``state_dict``: blocks from ``body.{i}.body.0``
    keys, features from ``head.0.weight``, scale from the upsampler convs."""
    sd = _numpy(state_dict)
    if "head.0.weight" not in sd:
        raise ConversionError("not an EDSR state_dict: no 'head.0.weight' "
                              f"(first keys: {', '.join(list(sd)[:5]) or 'none'})")
    features = int(sd["head.0.weight"].shape[0])
    blocks = len({int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.body\.0\.weight$", k))})
    if "tail.0.2.weight" in sd:
        scale = 4
    elif "tail.0.0.weight" in sd:
        ratio = sd["tail.0.0.weight"].shape[0] // features
        scale = {4: 2, 9: 3}.get(ratio)
        if scale is None:
            raise ConversionError(f"tail.0.0.weight has {sd['tail.0.0.weight'].shape[0]} outputs for "
                                  f"{features} features: not an x2 or x3 upsampler")
    else:
        raise ConversionError("not an EDSR state_dict: no upsampler conv 'tail.0.0.weight'")
    return ModelConfig(scale, blocks, features, res_scale)


def from_state_dict(state_dict: Mapping[str, Any], scale: int, *, preset_name: str | None = None,
                    res_scale: float = 1.0) -> tuple[ModelConfig, dict]:
    """Official EDSR ``state_dict`` (torch tensors or arrays; a ``module.`` prefix is
    dropped) -> ``(ModelConfig, params tree)`` with float32 NumPy leaves.

    The architecture read from the keys must match ``scale`` and, when given, the preset
    (which also supplies ``res_scale``, not stored in the weights); otherwise
    ``ConversionError`` lists each mismatch. Mean shifts must be the standard DIV2K ones.
    """
    sd = _numpy(state_dict)
    if preset_name is not None:
        expected = preset(preset_name, scale)
        res_scale = expected.res_scale
    config = infer_config(sd, res_scale)
    wanted = expected if preset_name is not None else ModelConfig(scale, config.num_blocks,
                                                                  config.num_features, res_scale)
    label = f"preset {preset_name!r} x{scale}" if preset_name else f"--scale {scale}"
    diffs = [f"{f}: state_dict={getattr(config, f)!r}, {label}={getattr(wanted, f)!r}"
             for f in ("scale", "num_blocks", "num_features") if getattr(config, f) != getattr(wanted, f)]
    if diffs:
        raise ConversionError("the weights do not match the requested model:\n  " + "\n  ".join(diffs))
    for name, sign in (("sub_mean", -1), ("add_mean", +1)):
        for k, v in mean_shift(sign).items():
            got = sd.get(f"{name}.{k}")
            if got is not None and (got.shape != v.shape or not np.allclose(got, v, atol=1e-3)):
                raise ConversionError(
                    f"{name}.{k} is not the standard DIV2K mean shift (expected {v.ravel().tolist()}, "
                    f"got {np.asarray(got).ravel().tolist()}); these weights were trained with "
                    "another rgb_mean/rgb_range, which this model does not support")
    params: dict = {}
    used = {"sub_mean.weight", "sub_mean.bias", "add_mean.weight", "add_mean.bias"}
    for prefix, path in _pairs(config):
        w, b = sd.get(f"{prefix}.weight"), sd.get(f"{prefix}.bias")
        if w is None or b is None:
            raise ConversionError(f"state_dict lacks {prefix}.weight / {prefix}.bias")
        if w.ndim != 4 or w.shape[2:] != (3, 3) or b.shape != (w.shape[0],):
            raise ConversionError(f"{prefix}: expected a 3x3 conv, got weight {w.shape}, bias {b.shape}")
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = {"kernel": np.ascontiguousarray(w.transpose(2, 3, 1, 0)).astype(np.float32),
                          "bias": b.astype(np.float32)}
        used |= {f"{prefix}.weight", f"{prefix}.bias"}
    extra = sorted(set(sd) - used)
    if extra:
        raise ConversionError(f"state_dict has keys this EDSR does not use: {', '.join(extra[:8])}")
    return config, params


def _numpy(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if not hasattr(state_dict, "items"):
        raise ConversionError(f"expected a state_dict (a mapping), got {type(state_dict).__name__}")
    out = {}
    for k, v in state_dict.items():
        k = k[len("module."):] if k.startswith("module.") else k
        if hasattr(v, "detach"):  # a torch tensor
            v = v.detach().cpu().float().numpy()
        out[k] = np.asarray(v, np.float32)
    return out
