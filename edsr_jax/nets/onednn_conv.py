"""oneDNN convolutions for XLA:CPU (an XLA FFI custom call with its own gradient).

jaxlib's CPU backend runs EDSR's 3x3 convolutions with Eigen (or YNNPACK) kernels; on a 2-core
AVX-512 CPU, 64 features, batch 16, 48x48, oneDNN's NHWC kernels are faster in all three
passes: forward 231 / input gradient 232 / weight gradient 206 GFLOP/s against Eigen's
~175 / ~170 / ~140 (the weight gradient also needs two activation transposes that oneDNN does
not). ``conv(x, kernel, bias)`` is one stride-1 'SAME' convolution plus bias in JAX's layouts
(NHWC activations, HWIO kernels), float32, computed by ``edsr_jax/csrc/onednn_conv.cc``:
forward with the bias fused, and a ``jax.custom_vjp`` whose backward pass calls oneDNN's
backward-data and backward-weights primitives (the bias gradient is XLA's sum: more accurate
than oneDNN's sequential one).
Numerics: float32 throughout; results equal XLA's convolution up to summation order
(tests/test_onednn_conv.py).

Optional, and fenced off from GPU/TPU installs: the shared library is built at install time
from ``csrc/onednn_conv.cc`` (``setup.py``; ``EDSR_JAX_ONEDNN=0`` skips the build and its
jax/jaxlib/oneDNN build requirements, ``=1`` makes a failed build an error) and needs oneDNN's
runtime at import, the ``onednn-cpu-gomp`` wheel of the ``edsr-jax[cpu]`` extra. Where either
is missing (another OS or architecture, no C++ compiler, a GPU install) ``available()`` is
False, ``load_error()`` says why, and the model keeps XLA's convolution. Primitives are cached
per shape in a least-recently-used cache of ``plan_cache_info()[1]`` (64) shapes.
``choose_backend`` decides: for train steps from ``train.conv_backend``, for inference from
``Upscaler(conv_backend=...)`` / ``infer.jitted``; both default to "auto".
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import importlib.util
import os
from pathlib import Path

import jax
import jax.numpy as jnp

EXTENSION = "edsr_jax._onednn_conv"
ONEDNN_DIST = "onednn-cpu-gomp"
# The convolutions a model can run (``edsr.Conv``'s ``backend``): XLA's or this module's.
BACKENDS = ("xla", "onednn")
# The choices of train.conv_backend and Upscaler(conv_backend=...): "auto" or one of BACKENDS.
CONV_BACKENDS = ("auto", *BACKENDS)
_LIBRARY: ctypes.CDLL | None = None  # the loaded extension (after a successful load_error())
TARGETS = {"edsr_conv_forward": "EdsrConvForward",
           "edsr_conv_backward_data": "EdsrConvBackwardData",
           "edsr_conv_backward_weights": "EdsrConvBackwardWeights"}


def _onednn_library() -> Path | None:
    """Path of ``libdnnl.so.3`` installed by the onednn-cpu-gomp wheel, or None."""
    try:
        files = importlib.metadata.distribution(ONEDNN_DIST).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == "libdnnl.so.3":
            return Path(f.locate()).resolve()
    return None


@functools.cache
def load_error() -> str | None:
    """Why the oneDNN convolution cannot be used here (None: it can). Loads and registers it."""
    global _LIBRARY
    spec = importlib.util.find_spec(EXTENSION)
    if spec is None or spec.origin is None:
        return (f"{EXTENSION} was not built (it builds at install time on x86-64 Linux with a "
                "C++ compiler, unless EDSR_JAX_ONEDNN=0)")
    lib = _onednn_library()
    if lib is None:
        return (f"the {ONEDNN_DIST} wheel (libdnnl.so.3) is not installed "
                "(pip install 'edsr-jax[cpu]')")
    # oneDNN's OpenMP threads sleep when idle instead of spinning against XLA's own threads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
        ext = ctypes.CDLL(spec.origin)
    except OSError as e:
        return f"cannot load the oneDNN convolution: {e}"
    for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(ext, symbol)),
                                    platform="cpu")
    for name in ("EdsrConvPlanCacheSize", "EdsrConvPlanCacheCapacity"):
        getattr(ext, name).restype = ctypes.c_int64
    _LIBRARY = ext
    return None


def available() -> bool:
    """True where the oneDNN convolution is built and loads (x86-64 Linux with the wheel)."""
    return load_error() is None


def plan_cache_info() -> tuple[int, int]:
    """``(shapes cached now, capacity)`` of the extension's per-shape primitive cache: a
    least-recently-used cache, so the first number never exceeds the second. Raises
    RuntimeError where the extension is not available."""
    require()
    return int(_LIBRARY.EdsrConvPlanCacheSize()), int(_LIBRARY.EdsrConvPlanCacheCapacity())


def require() -> None:
    """Load and register the oneDNN convolution, or raise RuntimeError saying why not."""
    error = load_error()
    if error is not None:
        raise RuntimeError(f"conv_backend 'onednn' is not available: {error}")


def choose_backend(requested: str, platform: str, num_devices: int, dtype, *,
                   option: str = "train.conv_backend", dtype_option: str = "model.dtype") -> str:
    """The convolution backend of a train step or inference: "xla" or "onednn" (``model.Conv3x3``).

    ``requested``: one of ``CONV_BACKENDS`` ("auto", "xla", "onednn"); ``platform`` of the
    mesh's devices; ``num_devices`` in the mesh; ``dtype`` the compute dtype. "auto" is oneDNN
    where it applies (CPU, one device, float32, built and loadable) and XLA elsewhere;
    "onednn" where it does not apply, or a value outside ``CONV_BACKENDS``, raises ValueError
    naming the option (``option``: "train.conv_backend" for the trainer, "conv_backend" for
    ``Upscaler``; ``dtype_option`` names the dtype setting) and the reason. (With more than
    one device XLA's partitioner would gather the sharded batch around the custom call.)
    """
    if requested not in CONV_BACKENDS:
        raise ValueError(f"{option} must be one of {CONV_BACKENDS}, got {requested!r}")
    if requested == "xla":
        return "xla"
    reasons = []
    if platform != "cpu":
        reasons.append(f"it runs on CPU only, the devices are {platform}")
    if num_devices != 1:
        reasons.append(f"it runs on one device, the mesh has {num_devices}")
    if jnp.dtype(dtype) != jnp.float32:
        reasons.append(f"it computes in float32, {dtype_option} is {jnp.dtype(dtype)}")
    if not reasons and load_error() is not None:
        reasons.append(load_error())
    if not reasons:
        return "onednn"
    if requested == "onednn":
        raise ValueError(f"{option} 'onednn' cannot be used: {'; '.join(reasons)}")
    return "xla"


def _call(target: str, out, *args):
    require()
    return jax.ffi.ffi_call(target, out, vmap_method="sequential")(*args)


def _forward(x, kernel, bias):
    out = jax.ShapeDtypeStruct(x.shape[:-1] + kernel.shape[-1:], jnp.float32)
    return _call("edsr_conv_forward", out, x, kernel, bias)


@jax.custom_vjp
def conv(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """``conv(x, kernel) + bias``, stride 1, 'SAME', by oneDNN on CPU.

    x: (N, H, W, C_in) float32; kernel: (k, k, C_in, C_out) float32, k odd; bias: (C_out,)
    float32. Returns (N, H, W, C_out) float32. Differentiable in all three arguments."""
    return _forward(x, kernel, bias)


def _conv_fwd(x, kernel, bias):
    return _forward(x, kernel, bias), (x, kernel)


def _conv_bwd(res, dy):
    x, kernel = res
    dx = _call("edsr_conv_backward_data", jax.ShapeDtypeStruct(x.shape, jnp.float32), dy, kernel)
    dkernel = _call("edsr_conv_backward_weights", jax.ShapeDtypeStruct(kernel.shape, jnp.float32),
                    x, dy)
    # The bias gradient by XLA: oneDNN's fused one sums sequentially (~3e-5 relative error over
    # a 16x48x48 batch, XLA's ~1e-7); YNNPACK's reduce fusion makes it one cheap pass.
    return dx, dkernel, jnp.sum(dy, axis=(0, 1, 2))


conv.defvjp(_conv_fwd, _conv_bwd)
