"""EDSR-baseline x2 trained on generated posters (issue 17's scenario), validated on a poster
that is in neither the training nor the test set.

The data (experiments/posters.py makes it): 100 posters 2048x1152 from ``python -m
edsr_jax.posters --seed 1 --words train`` in the fonts DejaVuSans, DejaVuSansMono and Pillow's
built-in font, cut into 2x2 tiles of 1024x576 (400 HR tiles), with two LR variants of each tile:
``poster`` (``nearest > jpeg(30,60)``: pixels dropped, then JPEG in transit) and ``bicubic``.
This config trains on the poster variant; ``--config.data.lr_name=bicubic
--config.data.val_spec=`` gives the bicubic-trained model of the same experiment.

The recipe is experiments/sun80_x2.py's (L1, Adam, LR patch 32, batch 16, lr 1e-3 warmed up
over 100 steps, cosine to 0) with the step count that fits three models into one CPU session:
2,400 steps (38,400 patches) each, the same for every model of the experiment, so the budget
is equal in work whatever else shares the machine.

  python -m edsr_jax.train --config experiments/posters_x2.py --workdir runs/posters_x2
"""

from edsr_jax.training.config import base_config

POSTER = "nearest > jpeg(30,60)"


def get_config():
    c = base_config()
    c.name = "posters_x2"
    c.model.scale = 2
    c.data.source = "paired"
    c.data.train = "data/posters/train"
    c.data.lr_name = "poster"
    c.data.val = "data/posters/val/HR"
    c.data.val_spec = POSTER
    c.data.val_max_images = 2
    c.data.patch_size = 32
    c.data.batch_size = 16
    c.data.patches_per_image = 4
    c.optim.lr = 1e-3
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 100
    c.train.steps = 2_400
    c.train.max_minutes = 150.0
    c.train.log_every = 25
    c.train.eval_every = 400
    c.train.checkpoint_every = 200
    return c
