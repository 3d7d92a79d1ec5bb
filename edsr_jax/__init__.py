"""edsr-jax: EDSR single-image super-resolution in JAX/Flax."""

__version__ = "0.1.0"

SCALES = (2, 3, 4)  # the upscaling factors every model, degradation and tool supports
