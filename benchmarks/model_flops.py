"""The EDSR architecture's convolution work, counted from its shapes: the FLOPs that
``train_step.py`` (achieved GFLOP/s) and ``accelerators.py`` (MFU, and the check of the FLOPs
read from compiled programs) divide by."""

from __future__ import annotations


def conv_macs(num_blocks: int, num_features: int, scale: int, patch: int) -> int:
    """Multiply-accumulates of one forward pass on one ``patch x patch`` LR input (3x3 convs)."""
    from edsr_jax.nets.edsr import upsample_stages

    f, hw, k = num_features, patch * patch, 9
    macs = hw * k * 3 * f  # head
    macs += hw * k * f * f * (2 * num_blocks + 1)  # residual blocks and body conv
    for r in upsample_stages(scale):
        macs += hw * k * f * f * r * r  # conv to f*r*r channels, then pixel shuffle
        hw *= r * r
    return macs + hw * k * f * 3  # tail


def train_flops(num_blocks: int, num_features: int, scale: int, patch: int) -> float:
    """FLOPs of one training patch: 2 x MACs forward, x3 for forward + backward."""
    return 3.0 * 2.0 * conv_macs(num_blocks, num_features, scale, patch)
