"""The optimiser: Adam with the configured learning-rate schedule and gradient clipping."""

from __future__ import annotations

import optax


def make_optimizer(optim, total_steps: int = 0) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Adam with the configured schedule, optional gradient clipping.

    ``optim.schedule`` "step": lr * decay_factor every decay_every steps (the paper);
    "cosine": linear warm-up over warmup_steps, then cosine to 0 at cosine_steps
    (or ``total_steps`` when cosine_steps is 0). Returns ``(tx, schedule)``."""
    if optim.get("schedule", "step") == "cosine":
        length = int(optim.cosine_steps or total_steps)
        if length <= int(optim.warmup_steps):
            raise ValueError(f"cosine schedule of {length} steps (optim.cosine_steps or train.steps) "
                             f"must be longer than optim.warmup_steps={optim.warmup_steps}")
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, optim.lr, warmup_steps=int(optim.warmup_steps), decay_steps=length, end_value=0.0)
    else:
        schedule = optax.exponential_decay(optim.lr, transition_steps=int(optim.decay_every),
                                           decay_rate=optim.decay_factor, staircase=True)
    adam = optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps)
    if optim.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(optim.clip_norm), adam), schedule
    return adam, schedule
