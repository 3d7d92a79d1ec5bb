"""A reduced MDSR trained on one CPU core in about 6 minutes, scored at x2, x3 and x4 on Set5
and Set14 against bicubic (the README's MDSR line; results/mdsr/cpu_run.json).

  taskset -c 1 python -m edsr_jax.train --config experiments/mdsr_cpu.py --workdir runs/mdsr_cpu
  taskset -c 1 python -m edsr_jax.evaluate --checkpoint runs/mdsr_cpu --scales 2 3 4 --bicubic \
      ../shared/datasets/Set5 ../shared/datasets/Set14 --json results/mdsr/cpu_run_eval.json

4 shared blocks of 32 features (the paper's 5x5 pre-processing and per-scale upsamplers
unchanged), trained on HR crops of Sun80 degraded on the fly (MATLAB bicubic at each scale),
one scale per step at random (about 670 steps each), LR patch 24 at every scale, batch 16,
Adam at 7e-4 with a short warm-up and a cosine decay to 0 (a short run ends best at a low
learning rate); train.max_minutes stops it at 11.5 minutes on a slower machine.
"""

from edsr_jax.training.config import base_config


def get_config():
    c = base_config()
    c.name = "mdsr_cpu"
    c.model.arch = "mdsr"
    c.model.scale = 0
    c.model.scales = (2, 3, 4)
    c.model.num_blocks = 4
    c.model.num_features = 32
    c.data.source = "hr"
    c.data.train = "../shared/datasets/Sun80"
    c.data.val = "../shared/datasets/Set5"
    c.data.val_max_images = 5
    c.data.patch_size = 24
    c.data.batch_size = 16
    c.optim.lr = 7e-4
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 20
    c.train.steps = 2000
    c.train.log_every = 20
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    c.train.max_minutes = 11.5
    return c
