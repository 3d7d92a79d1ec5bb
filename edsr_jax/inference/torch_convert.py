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

MDSR (``edsr_jax.nets.mdsr``; official ``mdsr_baseline-*.pt`` / ``mdsr-*.pt``), scale ``s`` =
``scales[i]``:

================================  =========================================
PyTorch key                       ours
================================  =========================================
``head.0``                        ``head``
``pre_process.{i}.{j}.body.0/.2``  ``pre_process_x{s}/block_{j}/conv0/conv1`` (5x5)
``body.{b}.body.0`` / ``.2``      ``block_{b}/conv0`` / ``conv1``
``body.{N}``                      ``body_conv``
``upsample.{i}.{2k}``             ``upsample_x{s}/stage_{k}``
``tail.0``                        ``tail``
``sub_mean`` / ``add_mean``       fixed mean shifts, as for EDSR
================================  =========================================

Conv kernels: ours ``(kh, kw, in, out)``, PyTorch ``(out, in, kh, kw)``; both compute
cross-correlation, so a transpose is all it takes. NumPy only: torch is needed just to
read or write ``.pt`` files (see ``export.py``).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from edsr_jax.nets import mdsr
from edsr_jax.nets.edsr import DIV2K_RGB_MEAN, ModelConfig, preset, upsample_stages

RGB_RANGE = 255.0


class ConversionError(ValueError):
    """A state_dict that does not describe the expected EDSR or MDSR; the message says what
    differs."""


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
    return _write(params, _pairs(config))


def _write(params, pairs) -> dict[str, np.ndarray]:
    """The mean shifts and, per ``(torch prefix, our path)``, the conv's weight and bias."""
    if hasattr(params, "keys") and set(params.keys()) == {"params"}:
        params = params["params"]
    sd: dict[str, np.ndarray] = {}
    for name, sign in (("sub_mean", -1), ("add_mean", +1)):
        for k, v in mean_shift(sign).items():
            sd[f"{name}.{k}"] = v
    for prefix, path in pairs:
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
    if any(k.startswith("pre_process.") for k in sd):
        raise ConversionError("this is an MDSR state_dict (it has pre_process.* keys), not an EDSR "
                              "one: load it with torch_convert.mdsr_from_state_dict (or "
                              "python -m edsr_jax.export --from-torch)")
    features = int(sd["head.0.weight"].shape[0])
    blocks = _count_blocks(sd)
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
    _check_mean_shifts(sd)
    params: dict = {}
    used = set(MEAN_SHIFT_KEYS)
    for prefix, path in _pairs(config):
        w, b = sd.get(f"{prefix}.weight"), sd.get(f"{prefix}.bias")
        if w is None or b is None:
            raise ConversionError(f"state_dict lacks {prefix}.weight / {prefix}.bias")
        _put(params, path, _conv(prefix, w, b, 3))
        used |= {f"{prefix}.weight", f"{prefix}.bias"}
    extra = sorted(set(sd) - used)
    if extra:
        raise ConversionError(f"state_dict has keys this EDSR does not use: {', '.join(extra[:8])}")
    return config, params


MEAN_SHIFT_KEYS = ("sub_mean.weight", "sub_mean.bias", "add_mean.weight", "add_mean.bias")


def _count_blocks(sd: Mapping[str, np.ndarray]) -> int:
    """Number of shared residual blocks: distinct ``i`` in ``body.{i}.body.0.weight``."""
    return len({int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.body\.0\.weight$", k))})


def _check_mean_shifts(sd: Mapping[str, np.ndarray]) -> None:
    """Mean shifts, where present, must be the standard DIV2K ones (the model's are fixed)."""
    for name, sign in (("sub_mean", -1), ("add_mean", +1)):
        for k, v in mean_shift(sign).items():
            got = sd.get(f"{name}.{k}")
            if got is not None and (got.shape != v.shape or not np.allclose(got, v, atol=1e-3)):
                raise ConversionError(
                    f"{name}.{k} is not the standard DIV2K mean shift (expected {v.ravel().tolist()}, "
                    f"got {np.asarray(got).ravel().tolist()}); these weights were trained with "
                    "another rgb_mean/rgb_range, which this model does not support")


def _conv(prefix: str, w: np.ndarray, b: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """PyTorch ``(out, in, k, k)`` weight and ``(out,)`` bias -> our ``{"kernel": (k, k, in,
    out), "bias": (out,)}`` float32; ConversionError naming ``prefix`` on other shapes."""
    if w.ndim != 4 or w.shape[2:] != (k, k) or b.shape != (w.shape[0],):
        raise ConversionError(f"{prefix}: expected a {k}x{k} conv, got weight {w.shape}, bias {b.shape}")
    return {"kernel": np.ascontiguousarray(w.transpose(2, 3, 1, 0)).astype(np.float32),
            "bias": b.astype(np.float32)}


def _put(params: dict, path: tuple[str, ...], leaf) -> None:
    node = params
    for p in path[:-1]:
        node = node.setdefault(p, {})
    node[path[-1]] = leaf


# --- MDSR -------------------------------------------------------------------------------------

def _mdsr_pairs(config: mdsr.MDSRConfig) -> list[tuple[str, tuple[str, ...], int]]:
    """(torch module prefix, our param path, kernel size) for every learned conv of an MDSR."""
    pairs = [("head.0", ("head",), 3)]
    for i, s in enumerate(config.scales):
        for j in range(mdsr.PRE_PROCESS_BLOCKS):
            for t, conv in ((0, "conv0"), (2, "conv1")):
                pairs.append((f"pre_process.{i}.{j}.body.{t}",
                              (f"pre_process_x{s}", f"block_{j}", conv), mdsr.PRE_PROCESS_KERNEL))
    for b in range(config.num_blocks):
        pairs += [(f"body.{b}.body.0", (f"block_{b}", "conv0"), 3),
                  (f"body.{b}.body.2", (f"block_{b}", "conv1"), 3)]
    pairs.append((f"body.{config.num_blocks}", ("body_conv",), 3))
    for i, s in enumerate(config.scales):
        for k in range(len(upsample_stages(s))):
            pairs.append((f"upsample.{i}.{2 * k}", (f"upsample_x{s}", f"stage_{k}"), 3))
    pairs.append(("tail.0", ("tail",), 3))
    return pairs


def mdsr_state_dict_keys(config: mdsr.MDSRConfig) -> list[str]:
    """Every key of the official MDSR ``state_dict`` for ``config`` (mean shifts included)."""
    return [*MEAN_SHIFT_KEYS] + [f"{p}.{t}" for p, _, _ in _mdsr_pairs(config)
                                 for t in ("weight", "bias")]


def mdsr_to_state_dict(params, config: mdsr.MDSRConfig) -> dict[str, np.ndarray]:
    """Our MDSR params (tree or ``{"params": tree}``) -> official MDSR ``state_dict`` as
    float32 NumPy arrays (``torch.from_numpy`` each to ``load_state_dict`` the PyTorch model)."""
    return _write(params, [(prefix, path) for prefix, path, _ in _mdsr_pairs(config)])


def mdsr_infer_config(state_dict: Mapping[str, Any]) -> mdsr.MDSRConfig:
    """Architecture of an official-layout MDSR ``state_dict``: features from ``head.0.weight``,
    blocks from ``body.{b}.body.0`` keys, each branch's scale from its upsampler
    (``upsample.{i}.2`` present: x4; else ``upsample.{i}.0`` with 4 or 9 x features outputs)."""
    sd = _numpy(state_dict)
    if "head.0.weight" not in sd:
        raise ConversionError("not an MDSR state_dict: no 'head.0.weight' "
                              f"(first keys: {', '.join(list(sd)[:5]) or 'none'})")
    if not any(k.startswith("upsample.") for k in sd):
        hint = " (it has tail.0.0.*: an EDSR state_dict)" if "tail.0.0.weight" in sd else ""
        raise ConversionError(f"not an MDSR state_dict: no upsample.* keys{hint}")
    features = int(sd["head.0.weight"].shape[0])
    branches = sorted({int(m.group(1)) for k in sd if (m := re.match(r"upsample\.(\d+)\.", k))})
    if branches != list(range(len(branches))):
        raise ConversionError(f"upsample branches {branches} are not numbered 0..{len(branches) - 1}")
    scales = []
    for i in branches:
        w = sd.get(f"upsample.{i}.0.weight")
        if w is None:
            raise ConversionError(f"state_dict lacks upsample.{i}.0.weight")
        if f"upsample.{i}.2.weight" in sd:
            scales.append(4)
            continue
        scale = {4: 2, 9: 3}.get(w.shape[0] // features) if w.shape[0] % features == 0 else None
        if scale is None:
            raise ConversionError(f"upsample.{i}.0.weight has {w.shape[0]} outputs for {features} "
                                  "features: not an x2 or x3 upsampler")
        scales.append(scale)
    return mdsr.MDSRConfig(tuple(scales), _count_blocks(sd), features)


def mdsr_from_state_dict(state_dict: Mapping[str, Any], *, preset_name: str | None = None
                         ) -> tuple[mdsr.MDSRConfig, dict]:
    """Official MDSR ``state_dict`` (torch tensors or arrays; a ``module.`` prefix is dropped)
    -> ``(MDSRConfig, params tree)`` with float32 NumPy leaves.

    The architecture is read from the keys (``mdsr_infer_config``); with ``preset_name`` it
    must be that preset's, else ConversionError lists each mismatch. The keys must be exactly
    the official ones for that architecture: missing and unexpected keys are named together in
    one ConversionError (the fixed mean shifts may be absent; present, they must be DIV2K's).
    """
    sd = _numpy(state_dict)
    config = mdsr_infer_config(sd)
    if preset_name is not None:
        wanted = mdsr.preset(preset_name)
        diffs = [f"{f}: state_dict={getattr(config, f)!r}, preset {preset_name!r}={getattr(wanted, f)!r}"
                 for f in ("scales", "num_blocks", "num_features")
                 if getattr(config, f) != getattr(wanted, f)]
        if diffs:
            raise ConversionError("the weights do not match the requested model:\n  " + "\n  ".join(diffs))
    try:
        config.validate()
    except ValueError as e:
        raise ConversionError(f"the state_dict describes no valid MDSR: {e}") from None
    pairs = _mdsr_pairs(config)
    expected = {f"{p}.{t}" for p, _, _ in pairs for t in ("weight", "bias")}
    missing = sorted(expected - set(sd))
    extra = sorted(set(sd) - expected - set(MEAN_SHIFT_KEYS))
    if missing or extra:
        lines = [f"{label} ({len(keys)}): {', '.join(keys[:12])}{', ...' if len(keys) > 12 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", extra)) if keys]
        raise ConversionError(
            f"not the official MDSR key set for scales {config.scales}, {config.num_blocks} blocks, "
            f"{config.num_features} features:\n  " + "\n  ".join(lines))
    _check_mean_shifts(sd)
    params: dict = {}
    for prefix, path, k in pairs:
        _put(params, path, _conv(prefix, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], k))
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
