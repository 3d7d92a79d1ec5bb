"""Decode-once cache: image files stored as raw ``(H, W, 3) uint8`` ``.npy`` arrays.

Training reads the same images for many epochs; decoding a 2K PNG costs tens of
milliseconds, reading a few hundred kilobytes of a memory-mapped ``.npy`` almost
nothing. ``DecodeCache.ensure`` decodes a file once (through ``images.read_rgb``)
and ``load`` memory-maps the result read-only, so steady-state training never
decodes PNG/JPEG and worker processes share the pages through the OS page cache.

Keys are the SHA-256 of the file's bytes plus ``FORMAT_VERSION``: a changed file
gets a new key (and is decoded again), a renamed or copied one reuses its entry.
Hashing reads each file once per run (about 300 MB/s on one core here, i.e. ~15 s for
DIV2K's 3.5 GB of PNGs spread over the decode pool), cheaper than one decode.
Entries appear atomically (``outputs.atomic_write``: temporary file, then rename), so concurrent
processes filling the same cache never see half-written arrays.
Stale entries are never deleted automatically; remove the folder to reclaim space.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from edsr_jax.io import outputs
from edsr_jax.io.images import read_rgb

FORMAT_VERSION = 1
ENV_VAR = "EDSR_JAX_CACHE"
HELP = ("decoded-image cache: training decodes each image file once into ~/.cache/edsr_jax/decoded "
        "($EDSR_JAX_CACHE, or --config.data.cache_dir=DIR, moves it): one H x W x 3 uint8 .npy per "
        "distinct file content, so it grows by the decoded size of every training image (DIV2K's 800 "
        "HR PNGs: about 7 GB; a changed file adds a new entry). Nothing is ever deleted from it; "
        "delete the folder to clear it (it is rebuilt as needed).")


def default_cache_dir() -> Path:
    """``$EDSR_JAX_CACHE`` when set, else ``~/.cache/edsr_jax/decoded``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "edsr_jax" / "decoded"


def file_key(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file's bytes and the cache format version (64 characters)."""
    h = hashlib.sha256(f"edsr_jax-decoded-v{FORMAT_VERSION}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class DecodeCache:
    """A folder of decoded images, one ``<key>.npy`` per distinct file content.

    ``root`` defaults to ``default_cache_dir()``. Instances are cheap and picklable.
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def __repr__(self) -> str:
        return f"DecodeCache({str(self.root)!r})"

    def entry_path(self, key: str) -> Path:
        """Where the array for ``key`` lives: ``root/<key[:2]>/<key>.npy``."""
        return self.root / key[:2] / f"{key}.npy"

    def ensure(self, path: str | os.PathLike, notes: list[str] | None = None) -> Path:
        """Decode ``path`` into the cache unless its content is there already.

        Returns the ``.npy`` path. Raises ``ImageError`` (from ``read_rgb``) for an
        unreadable image. ``notes`` collects ``read_rgb``'s conversion notes.
        """
        entry = self.entry_path(file_key(path))
        if entry.exists():
            return entry
        arr = read_rgb(path, notes)
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise outputs.write_error(entry.parent, e, "the decoded-image cache") from None
        outputs.atomic_write(entry, lambda f: np.save(f, np.ascontiguousarray(arr), allow_pickle=False),
                             overwrite=True)
        return entry


def load(entry: str | os.PathLike) -> np.ndarray:
    """Memory-map a cache entry read-only: ``(H, W, 3) uint8``."""
    return np.load(entry, mmap_mode="r", allow_pickle=False)
