"""Quickstart: a small EDSR x2 on the built-in sample photographs, about 5 minutes on 2 CPU cores.

  python -m edsr_jax.train --config experiments/quickstart.py --workdir runs/quickstart

Trains on six of scikit-image's bundled colour photographs, validates on two others
(chelsea, coffee) with the papers' protocol, and beats bicubic PSNR on them.
"""

from edsr_jax.training.config import base_config


def get_config():
    c = base_config()
    c.name = "quickstart"
    c.model.scale = 2
    c.model.num_blocks = 4
    c.model.num_features = 32
    c.data.train = "builtin"
    c.data.val = "builtin"
    c.data.patch_size = 32
    c.data.batch_size = 16
    c.data.patches_per_image = 64
    c.optim.lr = 5e-4
    c.optim.decay_every = 600
    c.train.steps = 1000
    c.train.log_every = 50
    c.train.eval_every = 250
    c.train.checkpoint_every = 250
    return c
