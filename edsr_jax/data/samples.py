"""Built-in default data: colour photographs that scikit-image ships in its wheel.

They let the main job run on a fresh machine with no dataset and no download.
The images and their licences are listed in scikit-image's ``skimage/data/README.txt``
(public domain or CC-licensed photographs). Training and validation images are disjoint.
``python -m edsr_jax.sample_data OUT`` copies them to ``OUT/train`` and ``OUT/val``.
"""

from __future__ import annotations

from pathlib import Path

TRAIN = ("astronaut.png", "hubble_deep_field.jpg", "ihc.png", "motorcycle_left.png",
         "retina.jpg", "rocket.jpg")
VAL = ("chelsea.png", "coffee.png")
BUILTIN = "builtin"


def data_dir() -> Path:
    """The folder of scikit-image's bundled sample images."""
    import skimage

    return Path(skimage.__file__).parent / "data"


def builtin_images(split: str) -> list[Path]:
    """Paths of the built-in ``"train"`` or ``"val"`` photographs (RGB, 300-1411 px)."""
    names = {"train": TRAIN, "val": VAL}.get(split)
    if names is None:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    paths = [data_dir() / n for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"built-in sample images missing (is scikit-image installed?): {missing}")
    return paths


def resolve(value: str, split: str) -> str | list[Path]:
    """``"builtin"`` -> the built-in image paths of ``split``; anything else unchanged."""
    return builtin_images(split) if value == BUILTIN else value
