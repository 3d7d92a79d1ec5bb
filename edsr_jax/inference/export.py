"""Export a trained EDSR or MDSR: a serialized StableHLO artifact (``stablehlo_artifact``),
the official PyTorch ``state_dict`` (``torch_state_dict``); and import official PyTorch
weights as an ordinary params-only checkpoint (``import_torch``, ``import_torch_mdsr``).

The StableHLO artifact runs with ``edsr_jax.inference.stablehlo_runner`` (JAX and NumPy only);
an MDSR's holds one scale. The checkpoint stays the lasting artifact: serialized exports are
tied to a window of JAX versions, so re-export when needed. PyTorch is optional
(``pip install "edsr-jax[torch]"``); without it the torch functions raise a ``UsageError``
saying how to install it. ``python -m edsr_jax.export`` is the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import export as jax_export

from edsr_jax.inference import infer, stablehlo_runner, torch_convert
from edsr_jax.io import cli
from edsr_jax.nets import mdsr
from edsr_jax.nets.edsr import PRESETS, ModelConfig, preset

TORCH_HINT = 'PyTorch is not installed; install it with: pip install "edsr-jax[torch]"'
PLATFORMS = ("cpu", "cuda")


def stablehlo_artifact(config: ModelConfig, params, *, dtype: str = "float32",
                       platforms: Sequence[str] = PLATFORMS, name: str | None = None,
                       scale: int | None = None) -> bytes:
    """Bytes of a StableHLO artifact (see ``stablehlo_runner``): ``(b, h, w, 3)`` float32 in
    [0, 255] -> ``(b, h*s, w*s, 3)`` float32, batch/height/width symbolic, weights baked in.
    An ``mdsr.MDSRConfig`` needs ``scale`` (one of its scales): the artifact runs that scale
    only (its branches' weights alone are baked in), and its header's ``scale`` and ``name``
    (``mdsr_baseline_x3``) say so, ``model`` holds ``"arch": "mdsr"``. EDSR: ``scale`` None or
    its own (``infer.resolve_scale``; ValueError otherwise)."""
    from edsr_jax.training import checkpoint

    mdsr_scale = infer.resolve_scale(config, scale)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), infer._inner(params))
    fn = jax.jit(lambda x: infer.apply(params, x, config, infer.DTYPES[infer._dtype_name(dtype)],
                                       mdsr_scale))
    b, h, w = jax_export.symbolic_shape("b, h, w")
    exported = jax_export.export(fn, platforms=list(platforms))(
        jax.ShapeDtypeStruct((b, h, w, 3), jnp.float32))
    s = infer.output_scale(config, mdsr_scale)
    header = {
        "format": "edsr-jax-stablehlo", "version": 1,
        "name": name or infer.model_name(config, mdsr_scale), "scale": s,
        "model": checkpoint.model_config_to_dict(config),
        "compute_dtype": infer._dtype_name(dtype), "platforms": list(platforms),
        "input": {"shape": ["b", "h", "w", 3], "dtype": "float32", "range": [0, 255], "layout": "NHWC"},
        "output": {"shape": ["b", f"{s}*h", f"{s}*w", 3], "dtype": "float32",
                   "range": "about [0, 255], not clipped", "layout": "NHWC"},
        "jax_version": jax.__version__,
    }
    return stablehlo_runner.pack(header, exported.serialize())


def torch_state_dict(config: ModelConfig, params):
    """Our params -> official EDSR ``state_dict`` of torch tensors (needs torch); an
    ``mdsr.MDSRConfig`` gives the official MDSR layout (every scale's branches)."""
    torch = require_torch()
    if infer.is_mdsr(config):
        sd = torch_convert.mdsr_to_state_dict(infer._inner(params), config)
    else:
        sd = torch_convert.to_state_dict(params, config)
    return {k: torch.from_numpy(v) for k, v in sd.items()}


def load_torch_state_dict(path: str | Path) -> dict:
    """Read a ``.pt`` file holding a plain ``state_dict`` or ``{"state_dict": ...}`` (or
    ``{"model": ...}``); tensors only (``weights_only``), nothing is executed. A missing file
    is named before a missing PyTorch."""
    path = Path(path)
    if not path.is_file():
        raise cli.UsageError(f"{path}: no such file")
    torch = require_torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise cli.UsageError(f"{path}: not a PyTorch weights file ({e.__class__.__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise cli.UsageError(f"{path}: holds a {type(obj).__name__}, not a state_dict")
    return obj


def import_torch(path: str | Path, out: str | Path, *, scale: int | None = None,
                 preset_name: str | None = None, res_scale: float | None = None) -> Path:
    """Convert an official-layout PyTorch ``.pt`` to a params-only checkpoint in ``out``
    (usable by train fine-tuning, upscale, evaluate). ``scale`` None: read from the
    upsampler's shapes; ``preset_name`` None: the preset whose blocks and features match.
    An MDSR state_dict (``pre_process.*`` keys) is imported whole, every scale
    (``import_torch_mdsr``). Returns the checkpoint step folder."""
    sd = load_torch_state_dict(path)
    if any(str(k).removeprefix("module.").startswith("pre_process.") for k in sd):
        return import_torch_mdsr(path, out, sd, scale=scale, preset_name=preset_name,
                                 res_scale=res_scale)
    if preset_name is not None and preset_name not in PRESETS:
        raise cli.UsageError(f"--preset {preset_name}: {Path(path).name} holds EDSR weights; "
                             f"choose from {', '.join(sorted(PRESETS))}")
    try:
        if scale is None:
            scale = torch_convert.infer_config(sd).scale
        if preset_name is None:
            guess = torch_convert.infer_config(sd)
            preset_name = next((n for n, (b, f, _) in PRESETS.items()
                                if (b, f) == (guess.num_blocks, guess.num_features)), None)
        if res_scale is not None:
            config, params = torch_convert.from_state_dict(sd, scale, res_scale=res_scale)
            if preset_name is not None:
                _check_preset(config, preset_name)
        else:
            config, params = torch_convert.from_state_dict(
                sd, scale, preset_name=preset_name, res_scale=1.0)
    except torch_convert.ConversionError as e:
        raise cli.UsageError(f"{path}: {e}") from None
    return _save_imported(out, config, params, f"imported from PyTorch weights {Path(path).name}")


def import_torch_mdsr(path: str | Path, out: str | Path, sd: dict, *, scale: int | None = None,
                      preset_name: str | None = None, res_scale: float | None = None) -> Path:
    """Write the official-layout MDSR ``state_dict`` ``sd`` (read from ``path``) as a
    params-only checkpoint in ``out`` whose config says MDSR and its scales. ``preset_name``
    (an ``mdsr.PRESETS`` name) is checked against the weights; ``scale`` and ``res_scale``
    do not apply (UsageError naming the option). Returns the checkpoint step folder."""
    if scale is not None:
        raise cli.UsageError(f"--scale {scale}: {Path(path).name} holds MDSR weights, which serve "
                             "every scale; the checkpoint keeps them all (choose the scale when "
                             "upscaling, evaluating or exporting StableHLO)")
    if res_scale is not None:
        raise cli.UsageError("--res-scale applies to EDSR weights; MDSR has no residual scaling")
    if preset_name is not None and preset_name not in mdsr.PRESETS:
        raise cli.UsageError(f"--preset {preset_name}: {Path(path).name} holds MDSR weights; "
                             f"choose from {', '.join(sorted(mdsr.PRESETS))}")
    try:
        config, params = torch_convert.mdsr_from_state_dict(sd, preset_name=preset_name)
    except torch_convert.ConversionError as e:
        raise cli.UsageError(f"{path}: {e}") from None
    return _save_imported(out, config, params, f"imported from PyTorch MDSR weights {Path(path).name}")


def _save_imported(out: str | Path, config, params, note: str) -> Path:
    """``params`` as a params-only checkpoint in ``out``; an existing one is a UsageError."""
    from edsr_jax.training import checkpoint

    try:
        return checkpoint.save_params_checkpoint(out, config, {"params": params}, note=note)
    except FileExistsError as e:
        raise cli.UsageError(str(e)) from None


def _check_preset(config: ModelConfig, preset_name: str) -> None:
    want = preset(preset_name, config.scale)
    diffs = [f"{f}: state_dict={getattr(config, f)!r}, preset {preset_name!r}={getattr(want, f)!r}"
             for f in ("num_blocks", "num_features") if getattr(config, f) != getattr(want, f)]
    if diffs:
        raise torch_convert.ConversionError("the weights do not match the preset:\n  " + "\n  ".join(diffs))


def require_torch():
    """The ``torch`` module; ``cli.UsageError`` with the install hint when it is missing."""
    try:
        import torch
    except ImportError:
        raise cli.UsageError(TORCH_HINT) from None
    return torch
