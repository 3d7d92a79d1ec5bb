"""The padding mask of a padded batch, and what ``infer.apply_masked`` does to each convolution's
input: the mask multiplied in (so the convolution's own zero padding is the image border) and,
per platform, a layout constraint (``xla_options.conv_input_layout``).

Why the layout constraint (TPU): the mask of the image region is ``(N, H, W, 1)``, broadcast
over the channels. XLA:TPU laid the masked elementwise passes out with the rows minor (the
mask's broadcast then runs along sublanes) while its convolutions, run as 8 strips of the width,
take the channels minor, so each convolution's output was relaid out for the mask and the
masked input back for the next convolution (v5e, EDSR-baseline x2 bfloat16, a 1336-px border
tile: 71 copies, 16.7 GB). With every convolution's
input constrained to (H, W, N, C) major to minor, the layout the TPU convolution takes when it
runs on the whole width, the mask, bias, ReLU and residual adds fuse into the convolutions: 6
copies (2.4 GB) remain where that layout meets the tail's, which is left to XLA (the tail on the
LR grid; constrained too, its F r r-channel input doubled the temporaries). The same values
(BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

from edsr_jax.nets.edsr import Conv


def region(bounds: jnp.ndarray, lr_h: int, shape: tuple[int, ...]) -> jnp.ndarray:
    """bool ``(N, h, w, 1)``: True inside the image region of an activation of ``shape``
    ``(N, h, w, C)`` on a grid ``f = h // lr_h`` times the LR grid's (1 before the upsampler,
    then 2, 3 or 4): rows ``[y0 f, y1 f)``, columns ``[x0 f, x1 f)`` with ``bounds[n] = (y0,
    y1, x0, x1)`` (int32 ``(N, 4)``, LR pixels)."""
    f = shape[1] // lr_h
    b = bounds[:, :, None, None, None] * f
    iy = jnp.arange(shape[1])[None, :, None, None]
    ix = jnp.arange(shape[2])[None, None, :, None]
    return (iy >= b[:, 0]) & (iy < b[:, 1]) & (ix >= b[:, 2]) & (ix < b[:, 3])


def conv_input_interceptor(bounds: jnp.ndarray | None, lr_h: int,
                           layout: tuple[int, ...] | None = None) -> Callable:
    """A Flax method interceptor (``nn.intercept_methods``) for every ``edsr.Conv`` (3x3, and
    MDSR's 5x5) call: its input multiplied by ``region(bounds, lr_h, .)`` in its own dtype
    (``bounds`` None: not masked), then constrained to ``layout`` (major-to-minor axes of the
    4-D input; None: XLA's choice), except the input of a tail computed on the LR grid
    (``Conv.input_shuffle`` > 1: its F r r channels in the TPU's layout doubled a tile's
    temporaries). Neither changes a value: the mask is 0/1, a layout is how the array is
    stored."""
    from jax.experimental.layout import Layout, with_layout_constraint

    def intercept(next_fun, args, kwargs, context):
        if isinstance(context.module, Conv) and context.method_name == "__call__":
            (y,) = args
            if bounds is not None:
                y = y * region(bounds, lr_h, y.shape).astype(y.dtype)
            if layout is not None and context.module.input_shuffle == 1:
                y = with_layout_constraint(y, Layout(tuple(layout)))
            return next_fun(y, **kwargs)
        return next_fun(*args, **kwargs)

    return intercept


def intercepting(interceptor: Callable | None):
    """``nn.intercept_methods(interceptor)``, or a context that does nothing for None."""
    return contextlib.nullcontext() if interceptor is None else nn.intercept_methods(interceptor)


__all__ = ["region", "conv_input_interceptor", "intercepting"]
