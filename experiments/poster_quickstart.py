"""The quickstart on the seed's poster damage: LR made by dropping pixels and JPEG in transit
(``nearest > jpeg(30,60)``), validated on the same damage. Run twice, it compares where the
damage is made (the device path must reach the host path's validation PSNR at equal steps;
README "Damage on the device"):

  python -m edsr_jax.train --config experiments/poster_quickstart.py --workdir runs/pq_host \\
      --config.data.degrade_on=host
  python -m edsr_jax.train --config experiments/poster_quickstart.py --workdir runs/pq_device \\
      --config.data.degrade_on=device
"""

from edsr_jax.training.config import base_config


def get_config():
    c = base_config()
    c.name = "poster_quickstart"
    c.model.scale = 2
    c.model.num_blocks = 4
    c.model.num_features = 32
    c.data.train = "builtin"
    c.data.val = "builtin"
    c.data.spec = "nearest > jpeg(30,60)"
    c.data.val_spec = "nearest > jpeg(30,60)"
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
