"""EDSR-baseline x2 for unknown damage: the built-in ``general-x2`` (issue 29).

Real-ESRGAN's idea, with the project's operators: every training patch gets a damage drawn at
random (``GENERAL_SPEC``, a mixture: one of seven chains, uniformly, then each chain's own
ranges), made on the device inside the train step from HR crops. The chains cover the damage
users meet: plain bicubic, a little or a lot of blur before a bicubic or bilinear resize, sensor
noise, JPEG from quality 25 to 95, and pixel dropping (``nearest``) with or without JPEG and
noise. Half the patches are filtered and sharp-ish, one in seven is blurred more, two in seven
drop pixels, three in seven end in a JPEG.

Data (experiments/general.py makes it): Sun80's 80 photographs and the generated training
posters (Latin and Chinese), whole images, HR only. Initialised from the built-in ``photo-x2``
(exported and imported as a checkpoint), then 1,500 steps of 16 LR patches of 32 px, L1, Adam,
lr 5e-4 warmed up over 50 steps then cosine to 0: the recipe of the other built-ins, fine-tuned
as photo-x3/x4 were. Validated on Set5 with the training damage (one chain per image, seeded by
its name).

  python experiments/general.py            # data, init, train, score, pack
"""

import re

from edsr_jax.training.config import base_config

GENERAL_SPEC = " | ".join([
    "bicubic",
    "blur(0,1.2) > bicubic > noise(0,8)",
    "blur(1,2.5) > bicubic > noise(0,4)",
    "blur(0,1.2) > bilinear > noise(0,8) > jpeg(30,95)",
    "blur(0,1.2) > bicubic > noise(0,8) > jpeg(30,95)",
    "nearest > jpeg(25,90)",
    "nearest > noise(0,5)",
])


def blurs_scaled(spec: str, factor: float) -> str:
    """``spec`` with every ``blur(a,b)`` range multiplied by ``factor`` (a blur's sigma is in HR
    pixels before the downscale: the same blur at x4 as at x2 is twice the sigma)."""
    return re.sub(r"blur\(([\d.]+),([\d.]+)\)",
                  lambda m: f"blur({float(m[1]) * factor:g},{float(m[2]) * factor:g})", spec)


def second_stage(c, steps: int):
    """Config ``c`` (a first stage) continued: ``steps`` more from its run's weights
    (runs/general/<its name>), the schedule restarted at a lower peak (lr 3e-4); named
    ``<its name>_more``."""
    c.train.init_from = f"runs/general/{c.name}"
    c.name = f"{c.name}_more"
    c.optim.lr = 3e-4
    c.train.steps = steps
    return c


def get_config():
    c = base_config()
    c.name = "general_x2"
    c.model.scale = 2
    c.data.source = "hr"
    c.data.train = "data/general/train"
    c.data.spec = GENERAL_SPEC
    c.data.val = "../shared/datasets/Set5"
    c.data.val_max_images = 5
    c.data.patch_size = 32
    c.data.batch_size = 16
    c.optim.lr = 5e-4
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 50
    c.train.steps = 1_500
    c.train.init_from = "runs/general/init_photo-x2"
    c.train.max_minutes = 120.0
    c.train.log_every = 25
    c.train.eval_every = 250
    c.train.checkpoint_every = 250
    return c
