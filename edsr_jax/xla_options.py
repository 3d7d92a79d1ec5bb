"""XLA compiler options for the project's jitted functions, chosen per platform.

On CPU, jaxlib 0.10 hands convolutions to YNNPACK fusions by default. For EDSR's 3x3
convolutions XLA's own Eigen convolutions are faster, float32 and bfloat16 alike, so the
project's jitted functions compile with the YNNPACK fusions off (measured in BENCHMARKS.md:
``python benchmarks/train_step.py --frameworks jax jax-xla-default torch``; EDSR-baseline x2
train step 1.3x faster on a 2-core CPU, convolutions 1.2-1.7x). Other platforms get XLA's
defaults. The options apply per executable, so JAX code of the caller is unaffected.

A user who sets ``--xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS`` keeps that choice.
"""

from __future__ import annotations

import os

YNN_FUSIONS = "xla_cpu_experimental_ynn_fusion_type"

CPU_OPTIONS = {YNN_FUSIONS: ""}  # empty list of fusion types: no YNNPACK fusions


def compiler_options(platform: str | None = None) -> dict[str, str] | None:
    """Options for ``jax.jit(..., compiler_options=...)`` on ``platform`` ("cpu", "gpu", ...;
    default: JAX's default backend); None where XLA's defaults are kept."""
    if platform is None:
        import jax

        platform = jax.default_backend()
    if platform != "cpu" or YNN_FUSIONS in os.environ.get("XLA_FLAGS", ""):
        return None
    return dict(CPU_OPTIONS)
