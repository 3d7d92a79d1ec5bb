"""Jitted EDSR inference: shape buckets, tiles with overlap, x8 self-ensemble, bfloat16.

``apply`` is the plain forward pass for research code. ``Upscaler`` is what programs use:

- **Shape buckets.** An image is padded (bottom and right) up to ``bucket(H) x bucket(W)``
  (sizes ``2^k * {1, 1.25, 1.5, 1.75}``, at least 16), so a folder of differently sized
  images compiles a bounded number of times. The jitted function is cached per
  ``(ModelConfig, dtype)`` at module level and takes the params as an argument, so a new
  ``Upscaler`` with the same architecture and new weights reuses the compiled code.
- **Exact padding.** The padded pixels never leak into the result: every convolution's
  input is multiplied by a 0/1 mask of the real image region (carried in as integer
  bounds; ``padding_mask``), which is what the convolutions' own zero padding does at the
  true border.
  Bucketed, tiled and plain ``apply`` results therefore agree to float rounding.
- **Tiles.** Large images are cut into square tiles of ``tile`` LR pixels, each processed
  with ``receptive_radius(config)`` LR pixels of context on every side (masked where
  the context falls outside the image). All tiles share one padded shape: one compile (two
  on GPU and TPU, where tiles whose context lies inside the image skip the mask: the same
  bits, fewer kernels; ``xla_options.unmask_full_batches``).
- **Self-ensemble** (EDSR+): the 8 flips/rotations of each tile are run, undone and
  averaged in float32 (a whole non-square image also compiles its transposed bucket).
- **Batches** ``(N, H, W, 3)`` of small images run as many per call as fit in one tile's
  memory; larger ones go through tiles one image at a time.
- **MDSR** (``mdsr.MDSRConfig``): everything above for one of its scales, chosen when the
  Upscaler is made (``Upscaler(config, params, scale=3)``; ``at_scale`` shares the weights);
  the mask covers its 5x5 pre-processing convolutions too (``model.Conv`` of any size).
"""

from __future__ import annotations

import collections
import copy
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from edsr_jax.inference import padding_mask
from edsr_jax.nets import mdsr
from edsr_jax.nets import onednn_conv
from edsr_jax.nets import xla_options
from edsr_jax.nets.edsr import DTYPES, PRESETS, ModelConfig, receptive_radius

Progress = Callable[[int, int], None]  # progress(done, total): forward passes of one Upscaler call

MIN_BUCKET = 16

# Traces of the jitted forward pass per (config, dtype name, conv backend "xla"/"onednn",
# MDSR scale or None, masked, tail on the LR grid, conv input layout): one per compiled shape.
_TRACES: collections.Counter = collections.Counter()
_JITTED: dict[tuple[Any, str, str, int | None, bool, bool, tuple | None], Any] = {}


def is_mdsr(config) -> bool:
    """Whether ``config`` describes an MDSR (``mdsr.MDSRConfig``) rather than an EDSR."""
    return isinstance(config, mdsr.MDSRConfig)


def resolve_scale(config, scale: int | None = None, *, option: str = "scale") -> int | None:
    """The MDSR scale to run, or None for an EDSR (its scale is fixed by the weights).

    MDSR: ``scale`` must be one of ``config.scales``; EDSR: ``scale`` must be None or the
    model's own scale. Otherwise ValueError naming ``option`` (the CLIs pass "--scale")."""
    if is_mdsr(config):
        if scale is None:
            raise ValueError(f"an MDSR model serves scales {' '.join(map(str, config.scales))}: "
                             f"choose one with {option}")
        if scale not in config.scales:
            raise ValueError(f"{option} {scale}: this MDSR model serves scales "
                             f"{' '.join(map(str, config.scales))}")
        return int(scale)
    if scale is not None and scale != config.scale:
        raise ValueError(f"{option} {scale}: this EDSR model upscales x{config.scale} only "
                         f"({option} chooses the scale of an MDSR model)")
    return None


def output_scale(config, scale: int | None = None) -> int:
    """The upscaling factor of a forward pass: ``scale`` for MDSR (checked by
    ``resolve_scale``), ``config.scale`` for EDSR."""
    return resolve_scale(config, scale) if is_mdsr(config) else int(config.scale)


def model_radius(config, scale: int | None = None) -> int:
    """LR pixels of context each output pixel needs (``model.receptive_radius`` for EDSR,
    ``mdsr.receptive_radius(config, scale)`` for MDSR, its 5x5 convolutions counted)."""
    if is_mdsr(config):
        return mdsr.receptive_radius(config, resolve_scale(config, scale))
    return receptive_radius(config)


def bucket(n: int) -> int:
    """Padded size for a side of ``n`` pixels: the smallest ``2^k * {1, 1.25, 1.5, 1.75}``
    (an integer, at least ``MIN_BUCKET``) that is ``>= n``. Wastes at most 25% per side."""
    if n <= MIN_BUCKET:
        return MIN_BUCKET
    k = max(0, (n - 1).bit_length() - 3)  # step = 2^k, candidates 4..8 steps
    step = 1 << k
    return step * max(4, -(-n // step))


def apply(params, lr, config: ModelConfig, dtype=jnp.float32, scale: int | None = None) -> jnp.ndarray:
    """EDSR forward pass: ``(N, H, W, 3)`` float in [0, 255] -> ``(N, H*s, W*s, 3)`` float32,
    not clipped. Pure and jit-friendly (``config``, ``dtype`` and ``scale`` static). ``params``
    is the parameter tree ``{head, block_i, ...}`` or the variables dict ``{"params": ...}``.
    An ``mdsr.MDSRConfig`` needs ``scale`` (one of its scales; ``resolve_scale``)."""
    scale = resolve_scale(config, scale)
    model = config.build(dtype=_dtype(dtype))
    extra = () if scale is None else (scale,)
    return model.apply({"params": _inner(params)}, jnp.asarray(lr, jnp.float32), *extra)


def apply_masked(params, x, bounds, config: ModelConfig, dtype=jnp.float32,
                 conv_backend: str = "xla", scale: int | None = None,
                 masked: bool = True, tail_on_lr_grid: bool = False,
                 conv_input_layout: tuple[int, ...] | None = None) -> jnp.ndarray:
    """``apply`` on a padded batch: only ``x[n, y0:y1, x0:x1]`` with ``bounds[n] = (y0, y1,
    x0, x1)`` (int, LR pixels) counts as image; everything outside is treated as the
    convolutions' zero padding. ``(N, h, w, 3)`` float [0, 255] -> ``(N, h*s, w*s, 3)``
    float32 whose region ``bounds * s`` equals ``apply`` on the cropped image.
    ``conv_backend``: "xla" or "onednn" (``model.Conv``; float32 on CPU). ``scale``: the
    MDSR scale (``resolve_scale``; None for EDSR). Every ``model.Conv`` (3x3, and MDSR's 5x5)
    sees its input masked (``padding_mask``), so its own zero padding is the image border.
    ``masked=False`` skips the mask (``bounds`` unused): the same result where every ``bounds``
    row covers the whole padded input, as for a tile inside the image. ``tail_on_lr_grid``: an
    EDSR's tail before its last pixel shuffle (``EDSR.tail_on_lr_grid``; its input masked on
    that grid). ``conv_input_layout``: every convolution's input constrained to this layout
    (major-to-minor axes; ``xla_options.conv_input_layout``, TPU), the same values."""
    scale = resolve_scale(config, scale)
    extra = () if scale is None else (scale,)
    model = config.build(dtype=_dtype(dtype), conv_backend=conv_backend)
    if tail_on_lr_grid and not is_mdsr(config):
        model = model.clone(tail_on_lr_grid=True)
    mask = jnp.asarray(bounds, jnp.int32) if masked else None
    interceptor = (None if mask is None and conv_input_layout is None else
                   padding_mask.conv_input_interceptor(mask, x.shape[1], conv_input_layout))
    with padding_mask.intercepting(interceptor):
        return model.apply({"params": _inner(params)}, jnp.asarray(x, jnp.float32), *extra)


def conv_backend_for(conv_backend: str = "auto", dtype="float32", *, option: str = "conv_backend",
                     dtype_option: str = "dtype") -> str:
    """The convolutions inference on JAX's default device uses: "xla" or "onednn".

    ``conv_backend``: "auto" (oneDNN on CPU in float32 where the extension is built, XLA
    elsewhere), "xla" or "onednn" (``onednn_conv.choose_backend``; "onednn" where it cannot
    run, or another value, raises ValueError naming ``option`` / ``dtype_option`` (the CLIs
    pass "--conv-backend" / "--dtype") and the reason)."""
    return onednn_conv.choose_backend(conv_backend, jax.default_backend(), 1, _dtype(dtype),
                                      option=option, dtype_option=dtype_option)


def jitted(config: ModelConfig, dtype="float32", conv_backend: str = "auto", scale: int | None = None,
           masked: bool = True, tail_on_lr_grid: bool | None = None):
    """The module-level jitted ``apply_masked(params, x, bounds)`` for one architecture,
    compute dtype, convolution backend (``conv_backend_for``), MDSR scale (None for EDSR),
    ``masked`` (False: the forward pass for batches whose bounds cover them whole) and
    ``tail_on_lr_grid`` (None: ``xla_options.tail_on_lr_grid``, TPU only), with the platform's
    ``xla_options.conv_input_layout`` (TPU only); compiles once per input shape,
    whatever the params' values. Runs on JAX's default device."""
    lr_tail = xla_options.tail_on_lr_grid() if tail_on_lr_grid is None else bool(tail_on_lr_grid)
    key = (config, _dtype_name(dtype), conv_backend_for(conv_backend, dtype), resolve_scale(config, scale),
           bool(masked), lr_tail, xla_options.conv_input_layout())
    fn = _JITTED.get(key)
    if fn is None:

        def forward(params, x, bounds):
            _TRACES[key] += 1  # runs at trace time only: one count per compilation
            return apply_masked(params, x, bounds, config, DTYPES[key[1]], *key[2:])
        fn = _JITTED[key] = jax.jit(forward, compiler_options=xla_options.compiler_options())
    return fn


def compile_count(config: ModelConfig | None = None, dtype: str | None = None) -> int:
    """How many times the jitted forward pass was traced (= compiled), for all cached
    functions or only those of ``config`` (and ``dtype``)."""
    return sum(n for (c, d, *_), n in _TRACES.items()
               if (config is None or c == config) and (dtype is None or d == _dtype_name(dtype)))


def clear_cache(config: ModelConfig | None = None) -> None:
    """Drop the jitted functions (of ``config``, or all) so their next use compiles afresh;
    Upscalers made before keep theirs."""
    for key in [k for k in _JITTED if config is None or k[0] == config]:
        del _JITTED[key]


def bytes_per_lr_pixel(config: ModelConfig, dtype="float32", scale: int | None = None) -> int:
    """Estimated peak activation memory per LR pixel of one forward pass, in bytes.

    The estimate: the body keeps about 4 feature maps alive (long skip, residual stream,
    the block's intermediate and its output: ``4 F`` values per LR pixel); the upsampler
    holds a conv output and its pixel-shuffled copy, ``2 F s^2`` values; the input tile,
    masks and the float32 output add ``~3 (1 + s^2)`` float32 values. Multiplied by
    the compute dtype's size, plus 50% slack for XLA's temporaries. Measured on CPU
    (benchmarks/inference.py, EDSR-baseline): about 2.5 KB per LR pixel at x2 and 10 KB at
    x4 against estimates of 4.7 and 14 KB, so the budget is an upper bound. MDSR: the same
    estimate at ``scale`` (its pre-processing holds no more feature maps than the body).
    """
    item = jnp.dtype(_dtype(dtype)).itemsize
    f, s = config.num_features, output_scale(config, scale)
    values = (4 * f + 2 * f * s * s) * item + 3 * (1 + s * s) * 4
    return int(values * 1.5)


def tile_for_budget(config: ModelConfig, memory_budget_mb: float, dtype="float32",
                    scale: int | None = None) -> int:
    """Largest tile side (LR pixels, a multiple of 8, at least 16) whose processed square,
    ``tile + 2 * receptive_radius``, fits in ``memory_budget_mb`` by ``bytes_per_lr_pixel``
    (MDSR: at ``scale``)."""
    side = math.isqrt(int(memory_budget_mb * 2**20 / bytes_per_lr_pixel(config, dtype, scale)))
    core = side - 2 * model_radius(config, scale)
    return max(16, core // 8 * 8)


def model_name(config: ModelConfig, scale: int | None = None) -> str:
    """``edsr_baseline_x2`` when the architecture is a preset, else ``edsr_b{B}_f{F}_x{s}``.
    MDSR: ``mdsr_baseline`` / ``mdsr_b{B}_f{F}`` (preset or not), ``_x{scale}`` appended when
    ``scale`` is given."""
    if is_mdsr(config):
        name = next((n for n, (b, f) in mdsr.PRESETS.items()
                     if (config.num_blocks, config.num_features) == (b, f)
                     and tuple(config.scales) == mdsr.preset(n).scales),
                    f"mdsr_b{config.num_blocks}_f{config.num_features}")
        return name if scale is None else f"{name}_x{scale}"
    for name, (blocks, features, res_scale) in PRESETS.items():
        if (config.num_blocks, config.num_features, config.res_scale) == (blocks, features, res_scale):
            return f"{name}_x{config.scale}"
    return f"edsr_b{config.num_blocks}_f{config.num_features}_x{config.scale}"


class Upscaler:
    """Upscale RGB images with one EDSR model.

    ``tile``: tile side in LR pixels (the part of the image each tile produces; each is
    processed with ``overlap = receptive_radius(config)`` extra pixels on every side).
    ``None`` picks it from ``memory_budget_mb`` (see ``bytes_per_lr_pixel``; None: the
    platform's, ``xla_options.inference_budget_mb``: 1 GiB on CPU, a quarter of a GPU's or
    TPU's memory); images whose
    bucketed area fits in one tile are processed whole. ``ensemble``: x8 geometric
    self-ensemble. ``dtype``: ``"float32"`` or ``"bfloat16"`` compute (weights stay float32).
    ``conv_backend``: "auto" (default: oneDNN's convolutions on CPU in float32 where the
    extension is built, XLA's elsewhere), "xla" (opt out) or "onednn" (ValueError where it
    cannot run); the same choices and messages as the trainer's ``train.conv_backend``. The
    resolved choice is ``self.conv_backend``.

    ``config`` may be an ``mdsr.MDSRConfig``: then ``scale`` (one of its scales) is required
    and picks the branches this Upscaler runs (``at_scale`` gives another scale on the same
    weights). For an EDSR ``scale`` is None or its own scale; another is a ValueError
    (``resolve_scale``).
    """

    def __init__(self, config: ModelConfig, params, *, tile: int | None = None,
                 ensemble: bool = False, dtype: str = "float32", memory_budget_mb: float | None = None,
                 name: str | None = None, conv_backend: str = "auto", scale: int | None = None):
        self.config = config.validate()
        self.mdsr_scale = resolve_scale(self.config, scale)
        self.dtype = _dtype_name(dtype)
        self.conv_backend = conv_backend_for(conv_backend, self.dtype)
        self.ensemble = bool(ensemble)
        self.overlap = model_radius(config, self.mdsr_scale)
        self._tile_given = tile
        self._memory_budget_mb = memory_budget_mb or xla_options.inference_budget_mb()
        memory_budget_mb = self._memory_budget_mb
        if tile is None:
            tile = tile_for_budget(config, memory_budget_mb, self.dtype, self.mdsr_scale)
        if int(tile) != tile or tile < 8:
            raise ValueError(f"tile must be an integer >= 8 LR pixels, got {tile!r}")
        self.tile = int(tile)
        self.name = name or model_name(config, self.mdsr_scale)
        self.step: int | None = None  # the checkpoint's step when loaded by from_checkpoint
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), _inner(params))
        self.params = jax.device_put(_plain_dict(params))
        self._fn = jitted(self.config, self.dtype, self.conv_backend, self.mdsr_scale)
        # batches whose bounds cover them whole skip the mask where that pays (xla_options)
        self._full_fn = (jitted(self.config, self.dtype, self.conv_backend, self.mdsr_scale, masked=False)
                         if xla_options.unmask_full_batches() else None)

    def at_scale(self, scale: int) -> "Upscaler":
        """This MDSR Upscaler at another of its scales, sharing the weights on the device (no
        copy); the same tile rule, ensemble, dtype, backend and step. ValueError for an EDSR
        (unless ``scale`` is its own) or a scale the MDSR does not serve."""
        resolve_scale(self.config, scale)
        if not is_mdsr(self.config):
            return self
        other = copy.copy(self)  # shallow: the same params arrays
        other.mdsr_scale = int(scale)
        other.overlap = model_radius(self.config, other.mdsr_scale)
        other.tile = int(self._tile_given) if self._tile_given is not None else tile_for_budget(
            self.config, self._memory_budget_mb, self.dtype, other.mdsr_scale)
        other.name = model_name(self.config, other.mdsr_scale)
        other._fn = jitted(self.config, self.dtype, self.conv_backend, other.mdsr_scale)
        if self._full_fn is not None:
            other._full_fn = jitted(self.config, self.dtype, self.conv_backend, other.mdsr_scale, masked=False)
        return other

    @classmethod
    def from_checkpoint(cls, path, *, scale: int | None = None, scale_option: str = "scale",
                        any_scale: bool = False, **kw) -> "Upscaler":
        """Load the weights (EMA when kept) of a training workdir or checkpoint folder;
        ``self.step`` is the checkpoint's step (None for an Upscaler made from params). An
        MDSR checkpoint needs ``scale`` (see the class), unless ``any_scale``: then its first
        scale is taken (for callers that go on with ``at_scale``). A missing or wrong scale is
        a ValueError naming ``scale_option`` (the CLIs pass "--scale")."""
        from edsr_jax.training.restore import restore_params

        config, params, saved = restore_params(path, prefer_ema=True)
        if any_scale and scale is None and is_mdsr(config):
            scale = config.scales[0]
        resolve_scale(config, scale, option=scale_option)
        upscaler = cls(config, params, scale=scale, **kw)
        upscaler.step = saved.get("step")
        return upscaler

    @classmethod
    def from_pretrained(cls, name: str, models_dir=None, **kw) -> "Upscaler":
        """An Upscaler of the built-in model ``name`` (``pretrained.names()``, e.g.
        ``"photo-x2"``; ``models_dir``: another folder of packed models); ValueError naming the
        known models for another name."""
        from edsr_jax.inference import pretrained

        config, params = pretrained.load(name, models_dir)
        return cls(config, params, name=kw.pop("name", name), **kw)

    @property
    def scale(self) -> int:
        """The upscaling factor (2, 3 or 4): the EDSR's, or the MDSR scale chosen."""
        return output_scale(self.config, self.mdsr_scale)

    def __call__(self, lr, progress: Progress | None = None) -> np.ndarray:
        """``(H, W, 3)`` or ``(N, H, W, 3)`` uint8 -> same rank, ``H*s, W*s``, uint8
        (rounded and clipped to [0, 255]). ``progress(done, total)`` is called after each
        forward pass (a tile, or one of the 8 ensemble passes), ``total`` known from the start."""
        return self._upscale(lr, np.uint8, progress)

    def predict(self, lr, progress: Progress | None = None) -> np.ndarray:
        """``(H, W, 3)`` or ``(N, H, W, 3)`` uint8 (or float in [0, 255]) -> float32
        ``(..., H*s, W*s, 3)``, not clipped. ``progress``: as for ``__call__``."""
        return self._upscale(lr, np.float32, progress)

    def passes(self, h: int, w: int, n: int = 1) -> int:
        """Forward passes the Upscaler makes for ``n`` images of ``h x w`` LR pixels: one per
        group of whole images or per tile, times 8 with the ensemble."""
        side = self.tile + 2 * self.overlap
        bh, bw = bucket(h), bucket(w)
        if bh * bw <= side * side:
            calls = -(-n // min(n, side * side // (bh * bw)))
        else:
            calls = n * -(-h // self.tile) * -(-w // self.tile)
        return calls * (8 if self.ensemble else 1)

    # -- internals ---------------------------------------------------------------------

    def _upscale(self, lr, out_dtype, progress: Progress | None = None) -> np.ndarray:
        lr = np.asarray(lr)
        if lr.ndim not in (3, 4) or lr.shape[-1] != 3 or 0 in lr.shape:
            raise ValueError(f"expected an (H, W, 3) or (N, H, W, 3) image, got shape {lr.shape}")
        batch = lr if lr.ndim == 4 else lr[None]
        if batch.dtype != np.uint8:
            batch = batch.astype(np.float32, copy=False)
        n, h, w, _ = batch.shape
        s = self.scale
        out = np.empty((n, h * s, w * s, 3), out_dtype)
        side = self.tile + 2 * self.overlap
        bh, bw = bucket(h), bucket(w)
        tick = _counter(progress, self.passes(h, w, n))
        if bh * bw <= side * side:
            # whole images, as many per call as fit in one tile's memory; the last group
            # is filled up with empty (fully masked) images so every call has one shape
            group = min(n, side * side // (bh * bw))
            for i0 in range(0, n, group):
                m = min(group, n - i0)
                x = np.zeros((group, bh, bw, 3), np.float32)
                x[:m, :h, :w] = batch[i0:i0 + m]
                bounds = np.array([[0, h, 0, w]] * m + [[0, 0, 0, 0]] * (group - m), np.int32)
                y = self._run(x, bounds, tick)
                out[i0:i0 + m] = _cast(y[:m, :h * s, :w * s], out_dtype)
        else:
            for i in range(n):
                self._tiled(batch[i], out[i], tick)
        return out if lr.ndim == 4 else out[0]

    def _tiled(self, img: np.ndarray, out: np.ndarray, tick: Callable[[], None] | None = None) -> None:
        """Fill ``out`` (H*s, W*s, 3) tile by tile from ``img`` (H, W, 3) uint8 or float32.

        Memory beyond ``img`` and ``out``: a padded copy of ``img`` in its own dtype and
        one tile's activations."""
        h, w, _ = img.shape
        t, r, s = self.tile, self.overlap, self.scale
        side = t + 2 * r
        # The image sits at offset r in a zero frame big enough for every tile's context.
        frame = np.zeros((-(-h // t) * t + 2 * r, -(-w // t) * t + 2 * r, 3), img.dtype)
        frame[r:r + h, r:r + w] = img
        for y0 in range(0, h, t):
            for x0 in range(0, w, t):
                x = frame[None, y0:y0 + side, x0:x0 + side].astype(np.float32)
                # image rows [0, h) are frame rows [r, r + h): tile rows [r - y0, r + h - y0)
                b = [max(0, r - y0), min(side, r + h - y0), max(0, r - x0), min(side, r + w - x0)]
                y = self._run(x, np.array([b], np.int32), tick)[0]
                ch, cw = min(t, h - y0), min(t, w - x0)
                out[y0 * s:(y0 + ch) * s, x0 * s:(x0 + cw) * s] = _cast(
                    y[r * s:(r + ch) * s, r * s:(r + cw) * s], out.dtype)

    def _forward(self, x: np.ndarray, bounds: np.ndarray) -> np.ndarray:
        """One jitted forward pass: unmasked where the bounds cover the whole batch and the
        platform gains by it (``xla_options.unmask_full_batches``), masked otherwise."""
        h, w = x.shape[1:3]
        full = self._full_fn is not None and bool(np.all(bounds == np.array([0, h, 0, w])))
        return np.asarray((self._full_fn if full else self._fn)(self.params, x, bounds))

    def _run(self, x: np.ndarray, bounds: np.ndarray, tick: Callable[[], None] | None = None) -> np.ndarray:
        """Jitted forward (x8 ensemble when asked) of a padded batch with its bounds;
        ``tick()`` after each pass."""
        tick = tick or (lambda: None)
        if not self.ensemble:
            y = self._forward(x, bounds)
            tick()
            return y
        total = None
        for transpose in (False, True):
            for flip_h in (False, True):
                for flip_w in (False, True):
                    op = (transpose, flip_h, flip_w)
                    xt, bt = _transform(x, bounds, op)
                    y = _untransform(self._forward(xt, bt), op)
                    total = y if total is None else total + y
                    tick()
        return total / np.float32(8)


def _counter(progress: Progress | None, total: int) -> Callable[[], None] | None:
    """``tick()`` calling ``progress(done, total)`` with the passes done so far (None: none)."""
    if progress is None:
        return None
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        progress(done, total)

    return tick


def _transform(x: np.ndarray, bounds: np.ndarray, op) -> tuple[np.ndarray, np.ndarray]:
    """One of the 8 dihedral transforms of ``(N, h, w, C)`` and its ``(N, 4)`` bounds."""
    transpose, flip_h, flip_w = op
    b = bounds.copy()
    if transpose:
        x = x.transpose(0, 2, 1, 3)
        b = b[:, [2, 3, 0, 1]]
    h, w = x.shape[1:3]
    if flip_h:
        x = x[:, ::-1]
        b[:, 0], b[:, 1] = h - b[:, 1], h - b[:, 0]
    if flip_w:
        x = x[:, :, ::-1]
        b[:, 2], b[:, 3] = w - b[:, 3], w - b[:, 2]
    return np.ascontiguousarray(x), b


def _untransform(y: np.ndarray, op) -> np.ndarray:
    """Undo ``_transform``'s spatial change on an output batch ``(N, H, W, C)``."""
    transpose, flip_h, flip_w = op
    if flip_w:
        y = y[:, :, ::-1]
    if flip_h:
        y = y[:, ::-1]
    if transpose:
        y = y.transpose(0, 2, 1, 3)
    return y


def _cast(y: np.ndarray, dtype) -> np.ndarray:
    if dtype == np.uint8:
        return np.clip(np.round(y), 0, 255).astype(np.uint8)
    return y.astype(dtype, copy=False)


def _inner(params):
    """The parameter tree whether given as ``{"params": tree}`` or ``tree``."""
    if hasattr(params, "keys") and set(params.keys()) == {"params"}:
        return params["params"]
    return params


def _plain_dict(tree):
    if hasattr(tree, "items"):
        return {k: _plain_dict(v) for k, v in tree.items()}
    return tree


def _dtype_name(dtype) -> str:
    name = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return name


def _dtype(dtype):
    return DTYPES[_dtype_name(dtype)]


__all__ = ["apply", "apply_masked", "Upscaler", "bucket", "jitted", "conv_backend_for",
           "is_mdsr", "resolve_scale", "output_scale", "model_radius",
           "compile_count", "clear_cache",
           "bytes_per_lr_pixel", "tile_for_budget", "model_name"]
