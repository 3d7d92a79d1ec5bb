"""EDSR x3 as in the paper: 32 blocks, 256 features, residual scaling 0.1, LR patch 48,
batch 16, Adam (0.9, 0.999, 1e-8), lr 1e-4 halved every 200k steps, 300k steps, L1 loss.
Starts from the trained x2 model (upsampler and tail re-initialised).

  python -m edsr_jax.train --config experiments/edsr_x3.py --workdir runs/edsr_x3 \
      --config.data.train=data/DIV2K --config.data.val=data/Set5
"""

from edsr_jax.training.config import paper_config


def get_config():
    return paper_config("edsr", 3)
