"""MDSR as in the paper: one network for x2, x3 and x4 (80 shared blocks, 64 features, two
5x5 pre-processing blocks and an upsampler per scale), 7,953,987 parameters. Each step trains
one scale, drawn at random, on a batch of 16 LR patches of 48x48 (HR 96 / 144 / 192); Adam
(0.9, 0.999, 1e-8), lr 1e-4 halved every 200k steps, 650k steps (EDSR-PyTorch's MDSR
template), L1 loss. Validation scores each scale on Set5; the best checkpoint is the one with
the highest mean PSNR over the three scales.

Train data: a DIV2K-layout folder with X2, X3 and X4 pairs
(`python -m edsr_jax.prepare DIV2K_train_HR --out data/DIV2K --scales 2 3 4`), e.g.
  python -m edsr_jax.train --config experiments/mdsr.py --workdir runs/mdsr \
      --config.data.train=data/DIV2K --config.data.val=data/Set5
"""

from edsr_jax.training.config import mdsr_paper_config


def get_config():
    return mdsr_paper_config("mdsr")
