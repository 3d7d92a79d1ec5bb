"""XLA compiler options for the project's jitted functions, chosen per platform.

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

Where the convolutions run in oneDNN instead (``edsr_jax/onednn_conv.py``: CPU, one device,
float32, the default of train steps and inference) these options still decide the elementwise
passes around them; the convolution parts above apply to ``conv_backend="xla"`` (bfloat16,
several CPU devices, or a build without the oneDNN extension).
"""

from __future__ import annotations

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


def compiler_options(platform: str | None = None,
                     train_batch_per_device: int | None = None) -> dict[str, str] | None:
    """Options for ``jax.jit(..., compiler_options=...)`` on ``platform`` ("cpu", "gpu", ...;
    default: JAX's default backend); None where XLA's defaults are kept.

    ``train_batch_per_device``: samples per device of a train step (None for functions
    without weight gradients, e.g. inference)."""
    if platform is None:
        import jax

        platform = jax.default_backend()
    if platform != "cpu" or YNN_FUSIONS in os.environ.get("XLA_FLAGS", ""):
        return None
    if train_batch_per_device is None:
        return dict(INFERENCE_OPTIONS)
    if train_batch_per_device < 2:
        return None  # Eigen's weight gradient is slow with one sample (module docstring)
    return dict(TRAIN_OPTIONS)
