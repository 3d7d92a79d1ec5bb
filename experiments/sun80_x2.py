"""EDSR-baseline x2 trained on Sun80 (80 photographs cut into 2x2 tiles), validated on Set5.

The paper's architecture and optimiser with a CPU-sized schedule: the run is bounded by
``train.max_minutes`` (60 by default), about 1,500 steps on 2 CPU cores, so the learning rate
is 5e-4 (the paper's 1e-4 is for 300k steps) and LR patches are 32 pixels (48 in the paper):
more steps in the same time. A first try with lr 2e-4 and patch 48 was at 26.6 dB on Set5
after 250 steps (bicubic: 33.7). Prepare the data first (experiments/sun80.py does all):

  python -m edsr_jax.prepare ../shared/datasets/Sun80 --out data/sun80_bicubic --scales 2 --tiles 2x2
  python -m edsr_jax.train --config experiments/sun80_x2.py --workdir runs/sun80_x2
"""

from edsr_jax.config import base_config


def get_config():
    c = base_config()
    c.name = "sun80_x2"
    c.model.scale = 2
    c.data.source = "paired"
    c.data.train = "data/sun80_bicubic"
    c.data.lr_name = "bicubic"
    c.data.val = "../shared/datasets/Set5"
    c.data.val_max_images = 5
    c.data.patch_size = 32
    c.data.batch_size = 16
    c.data.patches_per_image = 4
    c.optim.lr = 5e-4
    c.train.steps = 300_000
    c.train.max_minutes = 60.0
    c.train.log_every = 25
    c.train.eval_every = 250
    c.train.checkpoint_every = 250
    return c
