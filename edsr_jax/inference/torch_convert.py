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

Before anything is converted, the key set and every tensor's shape are checked against the
architecture the keys describe (``state_dict_shapes``: read from our network itself, so the
check cannot drift from it); the first mismatches are named in one line. Half-precision
weights (float16, bfloat16) are accepted and converted to float32; the fixed mean shifts are
then compared within that precision.
"""

from __future__ import annotations

import re
from functools import lru_cache
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
    """Architecture of an official-layout ``state_dict``: blocks from ``body.{i}.body.*``
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
    if any(k.startswith("tail.0.2.") for k in sd):
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
    ``ConversionError`` lists each mismatch. Every key and tensor shape must be the official
    ones for that architecture (``check_state_dict``, one line naming the first mismatches).
    Mean shifts must be the standard DIV2K ones. float16 / bfloat16 weights are converted.
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
        raise ConversionError("the weights do not match the requested model: " + "; ".join(diffs))
    check_state_dict(sd, config)
    _check_mean_shifts(sd, _precision(state_dict))
    params: dict = {}
    for prefix, path in _pairs(config):
        _put(params, path, _conv(prefix, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], 3))
    return config, params


def state_dict_shapes(config: ModelConfig | mdsr.MDSRConfig) -> dict[str, tuple[int, ...]]:
    """Every key of the official ``state_dict`` of ``config`` (EDSR or MDSR) with its tensor's
    shape, in forward order, mean shifts first: read from our network's parameter shapes
    (``jax.eval_shape`` of its ``init``: nothing is computed), transposed to PyTorch's layout."""
    return dict(_shapes(config))


@lru_cache(maxsize=16)
def _shapes(config: ModelConfig | mdsr.MDSRConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    import jax
    import jax.numpy as jnp

    is_mdsr = isinstance(config, mdsr.MDSRConfig)
    model = config.build()
    x = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
    init = (lambda key, x: model.init(key, x, config.scales[0])) if is_mdsr else model.init
    tree = jax.eval_shape(init, jax.random.key(0), x)["params"]
    shapes = {f"{name}.{k}": tuple(v.shape) for name, sign in (("sub_mean", -1), ("add_mean", +1))
              for k, v in mean_shift(sign).items()}
    pairs = [(p, path) for p, path, _ in _mdsr_pairs(config)] if is_mdsr else _pairs(config)
    for prefix, path in pairs:
        node = tree
        for part in path:
            node = node[part]
        kh, kw, c_in, c_out = node["kernel"].shape
        shapes[f"{prefix}.weight"] = (c_out, c_in, kh, kw)
        shapes[f"{prefix}.bias"] = tuple(node["bias"].shape)
    return tuple(shapes.items())


def check_state_dict(sd: Mapping[str, Any], config: ModelConfig | mdsr.MDSRConfig) -> None:
    """ConversionError, one line, unless ``sd`` holds exactly the keys of ``config``'s official
    ``state_dict`` (``state_dict_shapes``; the fixed mean shifts may be absent) with exactly
    their shapes; names the first missing, unexpected and wrongly shaped tensors."""
    want = state_dict_shapes(config)
    missing = sorted(k for k in want if k not in sd and k not in MEAN_SHIFT_KEYS)
    unexpected = sorted(k for k in sd if k not in want)
    wrong = [f"{k} {tuple(np.shape(sd[k]))} (expected {want[k]})" for k in want
             if k in sd and tuple(np.shape(sd[k])) != want[k]]
    if missing or unexpected or wrong:
        parts = [f"{label} ({len(items)}): {', '.join(items[:6])}{', ...' if len(items) > 6 else ''}"
                 for label, items in (("wrong shape", wrong), ("missing", missing), ("unexpected", unexpected))
                 if items]
        raise ConversionError(f"the state_dict does not fit {_describe(config)}: " + "; ".join(parts))


def _describe(config: ModelConfig | mdsr.MDSRConfig) -> str:
    """``EDSR x2, 16 blocks, 64 features`` / ``MDSR x2 x3 x4, 16 blocks, 64 features``."""
    if isinstance(config, mdsr.MDSRConfig):
        return (f"MDSR {' '.join(f'x{s}' for s in config.scales)}, {config.num_blocks} blocks, "
                f"{config.num_features} features")
    return f"EDSR x{config.scale}, {config.num_blocks} blocks, {config.num_features} features"


MEAN_SHIFT_KEYS = ("sub_mean.weight", "sub_mean.bias", "add_mean.weight", "add_mean.bias")


def _count_blocks(sd: Mapping[str, np.ndarray]) -> int:
    """Number of shared residual blocks: distinct ``i`` in ``body.{i}.body.*`` (any of a block's
    tensors, so one missing tensor is named as missing, not taken for a block fewer)."""
    return len({int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.body\.", k))})


def _check_mean_shifts(sd: Mapping[str, np.ndarray], precision: float = 0.0) -> None:
    """Mean shifts, where present, must be the standard DIV2K ones (the model's are fixed), to
    1e-3 plus the relative ``precision`` the weights were stored in (``_precision``: float16's
    spacing is 2**-10 of the value, bfloat16's 2**-7, so its 114.44 is stored as 114.5)."""
    for name, sign in (("sub_mean", -1), ("add_mean", +1)):
        for k, v in mean_shift(sign).items():
            got = sd.get(f"{name}.{k}")
            if got is not None and (got.shape != v.shape or not np.allclose(got, v, atol=1e-3, rtol=precision)):
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
    blocks from ``body.{b}.body.*`` keys, each branch's scale from its upsampler
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
        if any(k.startswith(f"upsample.{i}.2.") for k in sd):
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
    the official ones for that architecture, each tensor of its shape (``check_state_dict``:
    missing, unexpected and wrongly shaped tensors named together in one line; the fixed mean
    shifts may be absent; present, they must be DIV2K's). float16 / bfloat16 weights are converted.
    """
    sd = _numpy(state_dict)
    config = mdsr_infer_config(sd)
    if preset_name is not None:
        wanted = mdsr.preset(preset_name)
        diffs = [f"{f}: state_dict={getattr(config, f)!r}, preset {preset_name!r}={getattr(wanted, f)!r}"
                 for f in ("scales", "num_blocks", "num_features")
                 if getattr(config, f) != getattr(wanted, f)]
        if diffs:
            raise ConversionError("the weights do not match the requested model: " + "; ".join(diffs))
    try:
        config.validate()
    except ValueError as e:
        raise ConversionError(f"the state_dict describes no valid MDSR: {e}") from None
    pairs = _mdsr_pairs(config)
    check_state_dict(sd, config)
    _check_mean_shifts(sd, _precision(state_dict))
    params: dict = {}
    for prefix, path, k in pairs:
        _put(params, path, _conv(prefix, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], k))
    return config, params


# relative spacing of the half-precision formats weights may be stored in (float32's: ~1e-7)
_EPS = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}


def _precision(state_dict: Mapping[str, Any]) -> float:
    """The coarsest relative spacing among the state_dict's tensors' dtypes (0 for float32)."""
    return max((_EPS.get(str(getattr(v, "dtype", "")).removeprefix("torch."), 0.0)
                for v in state_dict.values()), default=0.0)


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
