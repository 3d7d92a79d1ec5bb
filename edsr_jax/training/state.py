"""The train state and how a fresh one is made: pure functions of a model, an optimiser and a key."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from edsr_jax.nets.edsr import EDSR
from edsr_jax.nets.mdsr import MDSR


@struct.dataclass
class TrainState:
    """Everything a step changes. ``ema`` is None when EMA is off.

    ``nonfinite`` counts steps whose loss or gradient was not finite (their update was
    not applied); ``first_nonfinite`` is the first such step (1-based), or -1.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    ema: Any
    nonfinite: jax.Array
    first_nonfinite: jax.Array


def init_variables(model: EDSR | MDSR, key: jax.Array):
    """Freshly initialised variables ``{"params": ...}`` of an EDSR or an MDSR (every scale's
    branches), float32."""
    extra = (model.scales[0],) if isinstance(model, MDSR) else ()
    return model.init(key, jnp.zeros((1, 8, 8, 3), jnp.float32), *extra)


def create_train_state(model: EDSR | MDSR, tx: optax.GradientTransformation, key: jax.Array,
                       use_ema: bool, params=None) -> TrainState:
    """Fresh state; ``params`` (e.g. fine-tuning weights) replace the random init when given."""
    if params is None:
        params = init_variables(model, key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema=params if use_ema else None, nonfinite=jnp.zeros((), jnp.int32),
                      first_nonfinite=jnp.full((), -1, jnp.int32))
