"""Quickstart: a small EDSR x2 on the built-in sample photographs, about 2 minutes on 2 CPU cores.

  python -m edsr_jax.train --config experiments/quickstart.py --workdir runs/quickstart

Trains on six of scikit-image's bundled colour photographs, validates on two others
(chelsea, coffee) with the papers' protocol, and beats bicubic PSNR on them.

``experiments/quickstart.py:poster`` is the same run on the seed's poster damage: LR made by
dropping pixels and JPEG in transit (``nearest > jpeg(30,60)``), validated on the same damage.
Run twice, it compares where the damage is made (the device path must reach the host path's
validation PSNR at equal steps; BENCHMARKS.md "Input rate"):

  python -m edsr_jax.train --config experiments/quickstart.py:poster --workdir runs/pq_host \\
      --config.data.degrade_on=host
  python -m edsr_jax.train --config experiments/quickstart.py:poster --workdir runs/pq_device \\
      --config.data.degrade_on=device
"""

from edsr_jax.training.config import base_config

DAMAGE = {"": "", "poster": "nearest > jpeg(30,60)"}  # get_config's argument -> data.spec


def get_config(damage: str = ""):
    if damage not in DAMAGE:
        raise ValueError(f"experiments/quickstart.py:{damage}: unknown variant; one of {sorted(DAMAGE)}")
    c = base_config()
    c.name = "quickstart" if not damage else f"{damage}_quickstart"
    c.model.scale = 2
    c.model.num_blocks = 4
    c.model.num_features = 32
    c.data.train = "builtin"
    c.data.val = "builtin"
    c.data.spec = c.data.val_spec = DAMAGE[damage]
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
