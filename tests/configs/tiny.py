"""A tiny experiment for tests: 2 blocks, 8 features, x2, built-in images, a few steps."""

from edsr_jax.training.config import base_config


def get_config():
    c = base_config()
    c.name = "tiny"
    c.model.num_blocks = 2
    c.model.num_features = 8
    c.data.patch_size = 12
    c.data.batch_size = 8
    c.data.patches_per_image = 4
    c.data.val_max_images = 1
    c.optim.lr = 1e-3
    c.train.steps = 6
    c.train.log_every = 2
    c.train.eval_every = 1000
    c.train.checkpoint_every = 3
    return c
