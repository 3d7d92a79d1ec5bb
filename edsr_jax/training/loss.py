"""The pixel losses of training, on the [0, 255] scale."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def pixel_loss(sr: jax.Array, hr: jax.Array, kind: str, charbonnier_eps: float = 1e-3) -> jax.Array:
    """Mean pixel loss on the [0, 255] scale: ``l1``, ``l2`` or ``charbonnier``.

    ``charbonnier_eps`` is given for images in [0, 1] and scaled by 255 here.
    """
    diff = sr.astype(jnp.float32) - hr.astype(jnp.float32)
    if kind == "l1":
        return jnp.mean(jnp.abs(diff))
    if kind == "l2":
        return jnp.mean(diff * diff)
    if kind == "charbonnier":
        eps = charbonnier_eps * 255.0
        return jnp.mean(jnp.sqrt(diff * diff + eps * eps))
    raise ValueError(f"unknown loss {kind!r}")
