"""Blends of built-in models: ``--model photo-x2+general-x2`` upscales with each model named and
returns the mean of their outputs.

Two models trained on different damage make different errors; on an image whose damage lies
between theirs, the mean of their outputs is often better than either (its squared error is at
most the mean of theirs, and lower where they disagree). ``--model auto`` takes a blend where its
calibration measured one best on images diagnosed alike (``calibration.py``,
experiments/auto_choice.py). Each member runs on the whole image as it would alone (tiles,
ensemble, dtype); the outputs are averaged in float32, then rounded once. A blend costs the sum of
its members' time.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

SEP = "+"


def members(name: str) -> tuple[str, ...]:
    """The model names of ``name`` (``"photo-x2+general-x2"`` -> ``("photo-x2", "general-x2")``;
    a plain name -> itself alone). ValueError for an empty or repeated member."""
    parts = tuple(p.strip() for p in str(name).split(SEP))
    if any(not p for p in parts):
        raise ValueError(f"{name!r}: a blend names its models as A{SEP}B, none of them empty")
    if len(set(parts)) != len(parts):
        raise ValueError(f"{name!r}: a blend names each model once")
    return parts


def is_blend(name: str) -> bool:
    """True for a name of two or more models joined by ``+``."""
    return SEP in str(name)


class Blend:
    """The mean of ``upscalers``' outputs (``infer.Upscaler``, all at one scale), with the
    Upscaler's interface: ``__call__``, ``predict``, ``passes``, ``scale``, ``name``. ValueError
    when there are fewer than two or their scales differ."""

    def __init__(self, upscalers: Sequence, name: str | None = None):
        self.members = list(upscalers)
        if len(self.members) < 2:
            raise ValueError("a blend needs two or more models")
        scales = {u.name: u.scale for u in self.members}
        if len(set(scales.values())) != 1:
            raise ValueError("a blend's models must upscale by one factor: "
                             + ", ".join(f"{n} x{s}" for n, s in scales.items()))
        self.name = name or SEP.join(u.name for u in self.members)
        self.ensemble = any(u.ensemble for u in self.members)
        self.tile = min(u.tile for u in self.members)
        self.overlap = max(u.overlap for u in self.members)

    @property
    def scale(self) -> int:
        """The upscaling factor (2, 3 or 4) all members share."""
        return self.members[0].scale

    def passes(self, h: int, w: int, n: int = 1) -> int:
        """Forward passes for ``n`` images of ``h x w`` LR pixels: the members' together."""
        return sum(u.passes(h, w, n) for u in self.members)

    def predict(self, lr, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """``(H, W, 3)`` or ``(N, H, W, 3)`` uint8 (or float in [0, 255]) -> float32
        ``(..., H*s, W*s, 3)``, not clipped: the mean of the members' ``predict``.
        ``progress(done, total)`` counts every member's forward passes."""
        lr = np.asarray(lr)
        n, h, w = lr.shape[:3] if lr.ndim == 4 else (1, *lr.shape[:2])
        counts = [u.passes(h, w, n) for u in self.members]
        total, done, out = sum(counts), 0, None
        for u, count in zip(self.members, counts):
            tick = None if progress is None else (lambda d, _t, base=done: progress(base + d, total))
            y = np.asarray(u.predict(lr, tick), np.float32)
            out = y if out is None else out + y
            done += count
        return out / np.float32(len(self.members))

    def __call__(self, lr, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """``predict`` rounded and clipped to uint8 ``[0, 255]``."""
        return np.clip(np.rint(self.predict(lr, progress)), 0, 255).astype(np.uint8)


def from_pretrained(name: str, models_dir: str | os.PathLike | None = None, **options):
    """The ``infer.Upscaler`` of built-in model ``name``, or a ``Blend`` of the built-ins it
    joins with ``+``; ``options`` go to every Upscaler (``tile``, ``ensemble``, ``dtype``,
    ``memory_budget_mb``, ``conv_backend``). ValueError naming an unknown model."""
    from edsr_jax.inference.infer import Upscaler

    parts = members(name)
    ups = [Upscaler.from_pretrained(p, models_dir=models_dir, **options) for p in parts]
    return ups[0] if len(ups) == 1 else Blend(ups, name=SEP.join(parts))
