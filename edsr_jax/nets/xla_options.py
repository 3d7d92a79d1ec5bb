"""Per-platform choices of how the project's jitted functions compile and run: XLA compiler
options (``compiler_options``), the formulation of the train step (``step_formulation``), the
layout of inference's convolution inputs (``conv_input_layout``) and the memory an inference tile
may take (``inference_budget_mb``).

On CPU, jaxlib 0.10 hands lone convolutions to YNNPACK fusions by default. For EDSR's 3x3
convolutions XLA's own Eigen convolutions are faster in the input and weight gradients
(64 features, batch 16: ~170 and ~137 against ~100 and ~92 GFLOP/s on a 2-core AVX-512 CPU),
float32 and bfloat16 alike. YNNPACK's fusions of elementwise ops and reductions, on the other
hand, pay: the bias adds, ReLUs, residual adds, their gradients and the bias-gradient sums are
memory-bound passes that YNNPACK runs threaded and fused (a forward convolution may join such
a fusion: conv + bias + add in one YNNPACK subgraph, measured no slower than Eigen + separate
passes). So the project's train steps compile with exactly the ELTWISE and REDUCE fusion
types: EDSR-baseline x2 train step 1.075x over no YNNPACK at all, 1.46x over XLA's defaults.
Inference (forward only, large tiles, batch 1) compiles with no YNNPACK fusion: there the
elementwise fusions made the forward pass 1.2x slower and tripled its peak memory.
One exception, measured: Eigen's weight-gradient convolution contracts over the batch as its
feature dimension and drops to 20-95 GFLOP/s with one sample per device (YNNPACK: 90-180),
so a train step with a per-device batch of 1 keeps XLA's defaults. Numbers and commands in
BENCHMARKS.md (``python benchmarks/train_step.py --frameworks jax jax-xla-default torch``).
Other platforms get XLA's defaults. The options apply per executable, so the caller's own JAX
code is unaffected.

A user who sets ``--xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS`` keeps that choice.

Where the convolutions run in oneDNN instead (``edsr_jax/nets/onednn_conv.py``: CPU, one device,
float32, the default of train steps and inference) these options still decide the elementwise
passes around them; the convolution parts above apply to ``conv_backend="xla"`` (bfloat16,
several CPU devices, or a build without the oneDNN extension).
"""

from __future__ import annotations

import dataclasses
import os

YNN_FUSIONS = "xla_cpu_experimental_ynn_fusion_type"

# Train steps: YNNPACK fusions of elementwise ops and reductions only (bias, ReLU, residual
# adds, their gradients, the bias-gradient sums, the loss); no YNNPACK fusion built around a lone
# convolution, so the gradient convolutions stay XLA's Eigen ones. YNNPACK may still take a
# forward convolution into an elementwise fusion (conv + bias + add).
TRAIN_OPTIONS = {YNN_FUSIONS: "LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE"}
# Inference: no YNNPACK fusion at all. With the elementwise fusions the forward pass of one
# large tile ran 1.2x slower and with 2.8x the peak memory (BENCHMARKS.md).
INFERENCE_OPTIONS = {YNN_FUSIONS: ""}


def _platform(platform: str | None) -> str:
    """``platform``, or JAX's default backend ("cpu", "gpu", "tpu") when None."""
    if platform is None:
        import jax

        return jax.default_backend()
    return platform


def compiler_options(platform: str | None = None,
                     train_batch_per_device: int | None = None) -> dict[str, str] | None:
    """Options for ``jax.jit(..., compiler_options=...)`` on ``platform`` ("cpu", "gpu", ...;
    default: JAX's default backend); None where XLA's defaults are kept.

    ``train_batch_per_device``: samples per device of a train step (None for functions
    without weight gradients, e.g. inference)."""
    platform = _platform(platform)
    if platform != "cpu" or YNN_FUSIONS in os.environ.get("XLA_FLAGS", ""):
        return None
    if train_batch_per_device is None:
        return dict(INFERENCE_OPTIONS)
    if train_batch_per_device < 2:
        return None  # Eigen's weight gradient is slow with one sample (module docstring)
    return dict(TRAIN_OPTIONS)


# HWIO's axes in the order of cuDNN's filter layout for NHWC convolutions (OHWI).
CUDNN_FILTER_ORDER = (3, 0, 1, 2)


@dataclasses.dataclass(frozen=True)
class StepFormulation:
    """How ``train.train_step`` is written for one platform.

    ``guard``: "cond" (``lax.cond`` around the optimiser update) or "select" (the update always
    runs; ``where(finite, new, old)`` keeps the old state after a non-finite step).
    ``grads_in_param_layout``: constrain every gradient to its parameter's row-major layout
    (a state in the tree form; the flat form's gradient is one array).
    ``flat_norm``: the gradient norm of the non-finite guard as one reduction over the
    gradients laid end to end (one concatenation and one reduction instead of one per
    parameter array); the same number to float32 summation order.
    ``flat_state``: the trainer keeps its train state in the flat form
    (``training.state.to_flat``: parameters, Adam's moments and the EMA each one array), so the
    optimiser update, the EMA and the guard's select run once over all parameters; checkpoints,
    evaluation and export read the tree form (``training.state.to_tree``). Implies the flat norm.
    ``kernel_order``: with ``flat_state``, the order the flat form stores each convolution
    kernel's axes in (HWIO's axes; None: HWIO itself).
    ``relu_from_output``: the residual blocks' ReLUs differentiated from their output
    (``nets.edsr.relu_from_output``; an EDSR's ``relu_grad_from_output``): the same numbers,
    the pre-activation dead after the ReLU.
    ``fold_res_scale``: an EDSR's ``res_scale`` (when not 1) folded into its residual blocks'
    second convolutions' kernels and biases (``nets.edsr.fold_res_scale``), so each block ends
    in conv + bias + residual: the same parameters, the rounding of another order.
    ``tail_on_lr_grid``: an EDSR's tail convolution computed before its last pixel shuffle
    (``nets.edsr.EDSR.tail_on_lr_grid``), so the shuffle moves 3 r r channels instead of the
    upsampler's F r r: the same parameters and function to float rounding.
    ``shard_update``: with ``flat_state`` on more than one device, the flat arrays (parameters,
    Adam's moments, EMA) split over the devices (``training.step.ShardedUpdate``): the
    parameters all-gathered in the compute dtype, the gradient reduce-scattered instead of
    all-reduced, the update, EMA and guard run on each device's 1/N (1/N of their memory too).
    """

    guard: str
    grads_in_param_layout: bool
    flat_norm: bool = False
    flat_state: bool = False
    kernel_order: tuple[int, ...] | None = None
    relu_from_output: bool = False
    fold_res_scale: bool = False
    tail_on_lr_grid: bool = False
    shard_update: bool = False


def step_formulation(platform: str | None = None) -> StepFormulation:
    """The train-step formulation for ``platform`` ("cpu", "gpu", "tpu"; default: JAX's default
    backend). Measured in ``benchmarks/accelerators.py`` (GPU, TPU: compiled without a device)
    and ``benchmarks/train_step.py`` (CPU); numbers in BENCHMARKS.md."""
    platform = _platform(platform)
    if platform == "cpu":
        # A branch: the update runs fused once and nothing is copied when it applies, and the
        # CPU runtime reads the predicate in-process (EDSR's Adam + guard 248 -> 70 ms on 2
        # cores against the select). CPU convolutions keep HWIO kernels: no layout to fix.
        return StepFormulation(guard="cond", grads_in_param_layout=False)
    # GPU and TPU: no conditional. A GPU conditional's predicate is read by the host every
    # step (a device-to-host sync that stalls asynchronous dispatch and CUDA-graph capture),
    # and its branches copied the whole train state (2x its bytes per step, 8 H100s). The
    # selects fuse into the per-parameter Adam kernels and write in place.
    # GPU only: cuDNN returns weight gradients in its filter layout (OHWI); an Adam update
    # mixing that with HWIO parameters fuses the transpose, cannot write in place, and XLA
    # copied all of params, mu and nu into the donated buffers every step (15.7 MiB for
    # EDSR-baseline, 466 MiB for EDSR; plain optax Adam too). With the gradients constrained
    # to the parameters' layout the transpose is a small kernel of its own on the bfloat16
    # gradient and the update copies nothing. TPU needs no constraint: there the state already
    # updates in place (v5e: no copy within device memory, as for plain Adam; its copies are
    # VMEM prefetches and write-backs placed by memory-space assignment).
    # GPU: the guard's gradient norm as one reduction over the gradients laid end to end: XLA
    # made one reduction kernel per parameter array (72 for EDSR-baseline); one concatenation
    # and one reduction instead took EDSR-baseline x2's step (bfloat16, batch 64, one H100)
    # from 492 to 388 kernels and its estimate from 3.27 to 3.07 ms (BENCHMARKS.md). CPU keeps
    # the per-array norms inside its fused branch (the concatenation would be a copy of every
    # gradient). TPU neither: there XLA already folds the norms into its fusions, and the flat
    # norm added ops (v5e, 4 chips, EDSR-baseline x2 bfloat16 batch 64: 919 -> 953 ops, est.
    # 25.68 -> 25.74 ms; the TPU compiler's own estimate 31.61 -> 31.64 ms).
    # GPU: the state kept flat (parameters, Adam's mu and nu, EMA one array each): the per-array
    # Adam, EMA and select fusions (74 for EDSR-baseline) become one, the per-array norms one, and
    # the parameters' slices fuse into the bfloat16 casts the forward pass makes anyway; its
    # convolution kernels stored OHWI, the filter layout cuDNN reads and writes, so that neither
    # the weights nor their gradients are transposed each step (37 kernels for EDSR-baseline).
    # EDSR-baseline x2 bfloat16 batch 64, one H100: 388 -> 257 (flat) -> 215 (OHWI) kernels,
    # 3.07 -> 2.80 -> 2.72 ms (BENCHMARKS.md). Raveling a tree state inside the step instead costs
    # more than it saves: the update's outputs, cut back into 216 arrays, could no longer be
    # written in place (559 kernels, 216 copies). CPU and TPU keep the tree: on TPU the flat state
    # (HWIO order) cut the ops but not the time (v5e, 4 chips, EDSR-baseline x2 bfloat16 batch 64:
    # 919 -> 756 ops, estimate 25.68 -> 26.18 ms, more bytes); CPU was not measured with it (its
    # tree update already runs as one fused branch of the cond).
    # GPU: the residual blocks' ReLUs differentiated from their output (relu_from_output): the
    # pre-activation is then dead after the ReLU and XLA fuses the ReLU into cuDNN's conv + bias
    # call, and the ReLU's backward reads the output. EDSR-baseline x2 bfloat16 batch 64, one
    # H100: 215 -> 199 kernels, 2.72 -> 2.50 ms, temporaries 1048 -> 760 MiB; EDSR x2 bfloat16
    # batch 16: 426 -> 394 kernels, 12.79 -> 12.37 ms (BENCHMARKS.md). TPU: the same program
    # (v5e, 4 chips, EDSR-baseline x2 bfloat16 batch 64: 919 ops, 25.68 ms either way), so not
    # used there; CPU not measured with it.
    # GPU: EDSR's res_scale folded into the blocks' second convolutions (fold_res_scale), so each
    # block ends in cuDNN's conv + bias + side input instead of a kernel of its own for
    # res_scale * branch + residual. The flat parameters are multiplied by a vector made from an
    # iota (Flat.unravel's factors), which fuses into the bfloat16 weight casts, and so is the
    # gradient (per array the scaling was 92 kernels of its own). EDSR x2 bfloat16 batch 16, one
    # H100: 394 -> 360 kernels, 12.37 -> 11.58 ms; 8 H100s: 399 -> 365, 13.14 -> 12.34 ms
    # (BENCHMARKS.md). EDSR-baseline (res_scale 1): the same program. TPU: 2705 -> 2737 ops,
    # estimate 91.04 -> 91.01 ms, the TPU compiler's own 61.40 ms either way (v5e, 4 chips,
    # EDSR x2 bfloat16 batch 16), so not used there; CPU not measured (other rounding, no need).
    # TPU: the tail convolution on the grid before the last pixel shuffle (tail_on_lr_grid). The
    # shuffle's depth-to-space is a physical relayout on a TPU (the channels are the minor, tiled
    # dimension); on the F r r-channel upsampler output it made three 72 MiB copies per step (its
    # input relaid out, its transpose, the gradient's). Shuffling the tail's 3 r r-channel output
    # instead (by a transposed convolution, nets.edsr.pixel_shuffle_conv): v5e, 4 chips,
    # EDSR-baseline x2 bfloat16 batch 64: copies 217.7 -> 1.7 MiB, estimate 25.68 -> 24.49 ms (the
    # TPU compiler's own 31.61 -> 28.96 ms); a 1336-px inference tile: copies 4365 -> 41 MiB,
    # temporaries 4408 -> 2195 MiB, estimate 57.1 -> 40.3 ms (BENCHMARKS.md). GPU: neutral (the
    # transposes are fusions there; EDSR x2 bfloat16 batch 16, one H100: 11.58 -> 11.57 ms, 4
    # kernels more), so not used; CPU keeps today's program (r r times the tail's multiplies).
    # GPU, several devices: the flat state split over them (shard_update, ZeRO's sharded optimiser
    # state): the gradient reduce-scattered in float32 instead of all-reduced, the update, EMA and
    # guard on each device's 1/N, the parameters all-gathered in the compute dtype (half the bytes
    # for bfloat16). 8 H100s, x2: EDSR bfloat16 batch 16 12.34 -> 11.96 ms (74 -> 76 % MFU),
    # EDSR-baseline bfloat16 batch 64 2.55 -> 2.53 ms, float32 4.93 -> 4.77 ms (342 -> 274
    # kernels); the state takes 1/8 of the memory (EDSR: 467 -> 59 MiB of arguments per device).
    # One device: the same program. TPU: its tree state stays faster (v5e, 4 chips, x2 bfloat16:
    # EDSR-baseline batch 64 tree 24.49 ms, flat 25.08, flat and split 24.76, the TPU compiler's
    # own 28.96, 29.55, 29.38 ms; EDSR batch 16 tree 89.76, flat and split 91.73, the compiler's
    # 59.78 and 60.32 ms). CPU keeps its replicated tree (BENCHMARKS.md).
    gpu = platform in ("gpu", "cuda", "rocm")
    return StepFormulation(guard="select", grads_in_param_layout=gpu, flat_norm=gpu, flat_state=gpu,
                           kernel_order=CUDNN_FILTER_ORDER if gpu else None, relu_from_output=gpu,
                           fold_res_scale=gpu, tail_on_lr_grid=platform == "tpu", shard_update=gpu)


def tail_on_lr_grid(platform: str | None = None) -> bool:
    """Whether inference (``infer.jitted``, so the ``Upscaler``) runs an EDSR's tail convolution
    before its last pixel shuffle (``nets.edsr.EDSR.tail_on_lr_grid``) on ``platform`` (default:
    JAX's default backend): TPU only, as in the train step (``step_formulation``). v5e,
    EDSR-baseline x2 bfloat16, a 1336-px tile inside the image: copies 4365 -> 41 MiB,
    temporaries 4408 -> 2195 MiB (within the tile budget, 4096), estimate 57.1 -> 40.3 ms
    (BENCHMARKS.md)."""
    return _platform(platform) == "tpu"


# TPU: the layout of every convolution input in inference, major to minor (H, W, N, C): the
# layout XLA:TPU's convolution takes itself (``infer.apply_masked``'s ``conv_input_layout``).
TPU_CONV_INPUT_LAYOUT = (1, 2, 0, 3)


def conv_input_layout(platform: str | None = None) -> tuple[int, ...] | None:
    """The layout (major-to-minor axes of ``(N, H, W, C)``) inference constrains the
    convolutions' inputs to on ``platform`` (default: JAX's default backend), or None: XLA's
    own choice (``infer.jitted``, masked and unmasked; ``inference.padding_mask``). The same
    values either way.

    TPU: ``TPU_CONV_INPUT_LAYOUT``. Left to itself XLA:TPU laid the padding mask's multiplies
    out with the rows minor and the convolutions with the channels minor, and relaid every
    convolution's output out and its masked input back. v5e, EDSR-baseline x2, the TPU
    compiler's estimates (BENCHMARKS.md, "TPU: the convolution inputs in the convolution's
    layout"): a border tile (masked) in bfloat16 (1336 px) 199 -> 90 ms, its copies 16.7 ->
    2.4 GB; in float32 (952 px) 177 -> 49 ms; a tile inside the image (unmasked) 82.6 -> 79.6
    and 59.5 -> 41.8 ms; a 256 x 192 evaluation image 5.8 -> 2.8 and 8.6 -> 3.0 ms. CPU and
    GPU: None (no relayouts there)."""
    return TPU_CONV_INPUT_LAYOUT if _platform(platform) == "tpu" else None


def unmask_full_batches(platform: str | None = None) -> bool:
    """Whether inference runs a padded batch whose bounds cover all of it (an Upscaler tile
    whose context lies inside the image) through the forward pass without the padding mask:
    the same bits, since the mask is all ones there (``infer.apply_masked``).

    GPU and TPU: yes. The mask's multiplies are kernels of their own there (one per
    convolution): an EDSR-baseline x2 tile of 664 px estimates 3.21 ms masked and 1.99 ms
    unmasked on an H100, 62 and 30 ms on a TPU v5e (``benchmarks/accelerators.py``); with the
    TPU's ``conv_input_layout`` the gap narrows but stays (v5e, 1336-px bfloat16 tile: 89.7
    against 79.6 ms, the TPU compiler's estimates). CPU: no;
    with oneDNN's convolutions the mask costs nothing measurable (200-px tile: 690 ms masked,
    708 unmasked) and a second program would only add a compile."""
    platform = _platform(platform)
    return platform != "cpu"


# Inference tiles (``inference.infer.Upscaler``): on a CPU 1 GiB of activations (larger tiles
# were no faster there and cost resident memory the user's other programs need); on a GPU or TPU
# a quarter of the device's memory, which the model's activations may take while the weights,
# XLA's workspace and the next tile's transfer keep the rest.
CPU_INFERENCE_BUDGET_MB = 1024.0
DEVICE_INFERENCE_FRACTION = 0.25


def inference_budget_mb(platform: str | None = None, device_bytes: int | None = None) -> float:
    """The default memory budget of one inference tile, in MiB, on ``platform`` (default: JAX's
    default backend): ``CPU_INFERENCE_BUDGET_MB`` on CPU; ``DEVICE_INFERENCE_FRACTION`` of the
    device's memory elsewhere (``device_bytes``, default: what the first device reports as its
    ``bytes_limit``; the CPU figure when it reports nothing)."""
    platform = _platform(platform)
    if platform == "cpu":
        return CPU_INFERENCE_BUDGET_MB
    if device_bytes is None:
        import jax

        try:
            stats = jax.devices(platform)[0].memory_stats() or {}
        except (RuntimeError, ValueError):
            stats = {}
        device_bytes = stats.get("bytes_limit")
    if not device_bytes:
        return CPU_INFERENCE_BUDGET_MB
    return DEVICE_INFERENCE_FRACTION * float(device_bytes) / 2**20
