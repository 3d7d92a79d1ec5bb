"""Several scales in one run (MDSR): which scale each batch has, and each scale's data seed.

Re-exported by ``edsr_jax.data.sources`` (``data.ScaleOrder``, ``data.scale_seed``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

SCALE_ORDERS = ("random", "cycle")  # also config.SCALE_ORDERS (train.scale_order)


def _check_scale(scale) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    return int(scale)


class ScaleOrder:
    """Which scale the ``n``-th training batch of a multi-scale (MDSR) run has: ``order(n)``.

    ``"random"`` (the paper's scheme): uniform over ``scales``, drawn by a NumPy generator
    seeded with ``(seed, n // BLOCK)`` (a block of draws at a time); ``"cycle"``:
    ``scales[n % len(scales)]``. A pure function of ``n``: every process draws the same scale,
    and a run resumed at batch ``n`` continues the sequence an uninterrupted run takes.
    """

    BLOCK = 1024

    def __init__(self, scales: Sequence[int], order: str = "random", seed: int = 0):
        if order not in SCALE_ORDERS:
            raise ValueError(f"scale order must be one of {SCALE_ORDERS}, got {order!r}")
        self.scales = tuple(_check_scale(s) for s in scales)
        if not self.scales:
            raise ValueError("ScaleOrder needs at least one scale")
        self.order, self.seed = order, int(seed)
        self._block: tuple[int, np.ndarray] | None = None

    def __call__(self, n: int) -> int:
        n = int(n)
        if n < 0:
            raise ValueError(f"batch number must be >= 0, got {n}")
        if self.order == "cycle":
            return self.scales[n % len(self.scales)]
        b, k = divmod(n, self.BLOCK)
        if self._block is None or self._block[0] != b:
            draws = np.random.default_rng([self.seed, b]).integers(len(self.scales), size=self.BLOCK)
            self._block = (b, draws)
        return self.scales[int(self._block[1][k])]


def scale_seed(seed: int, scale: int) -> int:
    """The data seed of one scale's stream in a multi-scale run, in [0, 2**32): derived from
    ``(seed, scale)`` so the scales' crops and image orders are independent."""
    return int(np.random.SeedSequence([int(seed), int(scale)]).generate_state(1)[0])


__all__ = ["SCALE_ORDERS", "ScaleOrder", "scale_seed"]
