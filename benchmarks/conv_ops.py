"""Single 3x3 convolutions on CPU: XLA with YNNPACK fusions (jaxlib's default) against XLA's
Eigen convolutions (what ``edsr_jax.nets.xla_options`` selects), forward, input gradient (dgrad) and
weight gradient (wgrad), GFLOP/s, median of 5; PyTorch beside them when installed.

    python benchmarks/conv_ops.py                      # the shapes of BENCHMARKS.md's table
    python benchmarks/conv_ops.py --shapes 16x48x64 1x48x256

A shape is BATCHxSIDExFEATURES (features in = features out, float32, SAME padding).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

OPTIONS = {"ynnpack (XLA default)": {}, "eigen (project)": {"xla_cpu_experimental_ynn_fusion_type": ""}}


def median_s(fn, reps: int = 5) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def jax_rates(n: int, s: int, c: int) -> dict[str, tuple[float, float, float]]:
    """{options name: (fwd, dgrad, wgrad) GFLOP/s} for one shape."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    conv = lambda x, w: lax.conv_general_dilated(  # noqa: E731
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((n, s, s, c)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((n, s, s, c)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, c, c)) * 0.05, jnp.float32)
    flop = 2.0 * n * s * s * c * c * 9
    out = {}
    for name, options in OPTIONS.items():
        fwd = jax.jit(conv, compiler_options=options)
        dgrad = jax.jit(lambda w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0], compiler_options=options)
        wgrad = jax.jit(lambda x, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0], compiler_options=options)
        out[name] = tuple(flop / median_s(lambda f=f, a=a: jax.block_until_ready(f(*a))) / 1e9
                          for f, a in ((fwd, (x, w)), (dgrad, (w, g)), (wgrad, (x, g))))
    return out


def torch_rates(n: int, s: int, c: int) -> tuple[float, float, float] | None:
    try:
        import torch
    except ImportError:
        return None
    import os

    torch.set_num_threads(os.cpu_count() or 1)
    x, g = torch.randn(n, c, s, s), torch.randn(n, c, s, s)
    w = torch.randn(c, c, 3, 3) * 0.05
    flop = 2.0 * n * s * s * c * c * 9
    back = lambda mask: torch.ops.aten.convolution_backward(  # noqa: E731
        g, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)
    with torch.no_grad():
        return tuple(flop / median_s(f) / 1e9 for f in (
            lambda: torch.nn.functional.conv2d(x, w, padding=1),
            lambda: back([True, False, False]), lambda: back([False, True, False])))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["16x48x64", "4x48x64", "1x48x64", "4x48x256", "1x48x256"],
                   help="BATCHxSIDExFEATURES (default: the table in BENCHMARKS.md)")
    args = p.parse_args(argv)
    shapes = []
    for text in args.shapes:
        try:
            n, s, c = (int(v) for v in text.lower().split("x"))
        except ValueError:
            print(f"error: --shapes {text!r}: expected BATCHxSIDExFEATURES, e.g. 16x48x64", file=sys.stderr)
            return 2
        shapes.append((n, s, c))
    names = list(OPTIONS) + ["pytorch"]
    print("| batch, side, features | " + " | ".join(f"{k} fwd / dgrad / wgrad" for k in names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for n, s, c in shapes:
        rates = jax_rates(n, s, c)
        rates["pytorch"] = torch_rates(n, s, c)
        cells = ["-" if r is None else " / ".join(f"{v:.0f}" for v in r) for r in (rates[k] for k in names)]
        print(f"| {n}, {s}, {c} | " + " | ".join(cells) + " |", flush=True)
    print("\nGFLOP/s (2 x MACs / time), median of 5 after one warm-up call.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
