"""EDSR-baseline x2 as in the paper: 16 blocks, 64 features, LR patch 48, batch 16,
Adam (0.9, 0.999, 1e-8), lr 1e-4 halved every 200k steps, 300k steps, L1 loss.

Train data: a DIV2K-layout folder (`python -m edsr_jax.prepare`), e.g.
  python -m edsr_jax.train --config experiments/edsr_baseline_x2.py --workdir runs/edsr_baseline_x2 \
      --config.data.train=data/DIV2K --config.data.val=data/Set5
"""

from edsr_jax.training.config import paper_config


def get_config():
    return paper_config("edsr_baseline", 2)
