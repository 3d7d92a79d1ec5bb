"""MDSR in PyTorch, written from the EDSR paper (section 3.2) with the official release's module
layout (``EDSR-PyTorch`` ``src/model/mdsr.py``), so its ``state_dict`` keys are those of the
released ``mdsr_baseline-*.pt`` / ``mdsr-*.pt``:

``sub_mean`` / ``add_mean`` (fixed 1x1 mean-shift convs), ``head.0``,
``pre_process.{i}.{j}.body.{0,2}`` (scale i's two 5x5 residual blocks j = 0, 1),
``body.{b}.body.{0,2}`` (shared 3x3 residual blocks), ``body.{N}`` (body conv),
``upsample.{i}.{0,2}`` (scale i's upsampler convs, ``nn.PixelShuffle`` between), ``tail.0``.

Forward: sub_mean -> head -> pre_process[i] -> x + body(x) -> upsample[i] -> tail -> add_mean,
the long skip starting after the pre-processing. An independent reference for the JAX model.
"""

from __future__ import annotations

from torch import nn

from torch_edsr import MeanShift, Upsampler, randomize  # noqa: F401  (randomize: for tests)


class ResBlock(nn.Module):
    """conv k x k -> ReLU -> conv k x k, plus identity (MDSR has no residual scaling)."""

    def __init__(self, features: int, kernel_size: int):
        super().__init__()
        pad = kernel_size // 2
        self.body = nn.Sequential(nn.Conv2d(features, features, kernel_size, padding=pad),
                                  nn.ReLU(True),
                                  nn.Conv2d(features, features, kernel_size, padding=pad))

    def forward(self, x):
        return x + self.body(x)


class MDSR(nn.Module):
    """Input ``(N, 3, H, W)`` float in [0, 255] -> ``(N, 3, H*s, W*s)`` float, ``s`` =
    ``scales[scale_idx]`` (set with ``set_scale``, as the official model)."""

    def __init__(self, num_blocks: int = 16, num_features: int = 64, scales=(2, 3, 4)):
        super().__init__()
        f = num_features
        self.scales = tuple(scales)
        self.scale_idx = 0
        self.sub_mean = MeanShift(-1)
        self.head = nn.Sequential(nn.Conv2d(3, f, 3, padding=1))
        self.pre_process = nn.ModuleList(
            [nn.Sequential(ResBlock(f, 5), ResBlock(f, 5)) for _ in self.scales])
        self.body = nn.Sequential(*[ResBlock(f, 3) for _ in range(num_blocks)],
                                  nn.Conv2d(f, f, 3, padding=1))
        self.upsample = nn.ModuleList([Upsampler(s, f) for s in self.scales])
        self.tail = nn.Sequential(nn.Conv2d(f, 3, 3, padding=1))
        self.add_mean = MeanShift(+1)

    def set_scale(self, scale: int) -> "MDSR":
        """Choose the branches of ``scale`` (one of ``scales``)."""
        self.scale_idx = self.scales.index(scale)
        return self

    def forward(self, x):
        x = self.sub_mean(x)
        x = self.head(x)
        x = self.pre_process[self.scale_idx](x)
        x = x + self.body(x)
        x = self.upsample[self.scale_idx](x)
        x = self.tail(x)
        return self.add_mean(x)
