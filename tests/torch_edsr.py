"""EDSR in PyTorch, written from the paper's architecture with the official release's
module layout, so its ``state_dict`` keys are those of the released ``.pt`` files:

``sub_mean`` / ``add_mean`` (fixed 1x1 mean-shift convs), ``head.0``, ``body.{i}.body.{0,2}``
(conv, ReLU, conv; branch times ``res_scale``), ``body.{N}`` (body conv), ``tail.0.{k}``
(upsampler convs with ``nn.PixelShuffle`` between), ``tail.1`` (last conv).

An independent reference for the JAX model (tests) and the PyTorch side of benchmarks.
"""

from __future__ import annotations

import torch
from torch import nn

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=True)


class MeanShift(nn.Conv2d):
    """1x1 conv adding ``sign * rgb_range * mean`` per channel; not learned."""

    def __init__(self, sign: int, rgb_range: float = 255.0, mean=DIV2K_RGB_MEAN):
        super().__init__(3, 3, kernel_size=1)
        self.weight.data = torch.eye(3).view(3, 3, 1, 1)
        self.bias.data = sign * rgb_range * torch.tensor(mean, dtype=torch.float32)
        for p in self.parameters():
            p.requires_grad = False


class ResBlock(nn.Module):
    def __init__(self, features: int, res_scale: float):
        super().__init__()
        self.body = nn.Sequential(conv3x3(features, features), nn.ReLU(True),
                                  conv3x3(features, features))
        self.res_scale = res_scale

    def forward(self, x):
        return x + self.body(x) * self.res_scale


class Upsampler(nn.Sequential):
    def __init__(self, scale: int, features: int):
        layers: list[nn.Module] = []
        if scale in (2, 4):
            for _ in range(scale // 2):
                layers += [conv3x3(features, 4 * features), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [conv3x3(features, 9 * features), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"scale must be 2, 3 or 4, got {scale}")
        super().__init__(*layers)


class EDSR(nn.Module):
    """Input ``(N, 3, H, W)`` float in [0, 255] -> ``(N, 3, H*s, W*s)`` float."""

    def __init__(self, scale: int = 2, num_blocks: int = 16, num_features: int = 64,
                 res_scale: float = 1.0):
        super().__init__()
        self.sub_mean = MeanShift(-1)
        self.add_mean = MeanShift(+1)
        self.head = nn.Sequential(conv3x3(3, num_features))
        self.body = nn.Sequential(*[ResBlock(num_features, res_scale) for _ in range(num_blocks)],
                                  conv3x3(num_features, num_features))
        self.tail = nn.Sequential(Upsampler(scale, num_features), conv3x3(num_features, 3))

    def forward(self, x):
        x = self.sub_mean(x)
        x = self.head(x)
        x = x + self.body(x)
        x = self.tail(x)
        return self.add_mean(x)


def randomize(model: nn.Module, seed: int = 0, std: float = 0.05) -> nn.Module:
    """Give every learned conv random weights and biases (mean shifts left alone)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith(("sub_mean", "add_mean")):
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model
