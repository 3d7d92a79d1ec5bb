"""Grain input pipeline: aligned random LR/HR patches from prepared pairs or HR images.

Two sources describe where pixels come from:

- ``PairedFolderSource``: a prepared DIV2K-layout folder (``root/HR/0001.png`` and
  ``root/LR_<lr_name>/X<s>/0001x<s>.png``);
- ``HROnlySource``: HR images only; the LR patch is made on the fly by a
  ``degrade`` pipeline (``bicubic(s)`` by default).

Both decode every file once, up front and in parallel, into a ``cache.DecodeCache``
of memory-mapped ``.npy`` arrays, so errors surface before training and steady-state
training never decodes PNG/JPEG.

``make_train_dataset`` builds the pipeline::

    MapDataset.range(records).repeat()
      .map_with_index(EpochShuffle)                         # reshuffled every epoch
      .random_map(PatchSampler)                             # crop, [degrade], symmetry
      [process_index::process_count]                        # this process's share
      .batch(B, drop_remainder=True).to_iter_dataset()[.mp_prefetch(workers)]

A record is ``(image, k)`` for ``k < patches_per_image``. The random map draws from a
generator that Grain seeds from ``(seed, global element index)``, so a patch depends
only on the seed and its position in the global stream: not on the number of worker
processes, nor on the number of data-parallel processes (process ``i`` of ``n`` takes
elements ``i, i+n, ...`` of the same stream). Iterators save and restore their
position (``get_state``/``set_state``, or Orbax with ``grain.checkpoint.CheckpointSave``/
``CheckpointRestore``) and resume with exactly the batches an uninterrupted run yields.

That pipeline pays Python per patch. ``edsr_jax.data.blocks`` reads the same sources a
block of patches per image and a batch per Grain record, with the same guarantees, several
times faster (``make_block_dataset``), and has the HR-only form for degradation on the
device (``make_hr_dataset``). Multi-scale helpers (``ScaleOrder``, ``scale_seed``) live in
``edsr_jax.data.scales`` and are re-exported here.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import warnings
from pathlib import Path
from typing import Sequence

import grain
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from edsr_jax.data import cache as cache_lib
from edsr_jax.data.scales import SCALE_ORDERS, ScaleOrder, scale_seed  # noqa: F401 - re-exported
from edsr_jax.io.images import IMAGE_SUFFIXES, ImageError, image_files


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the folder or files at fault."""


# ----------------------------------------------------------------------------- helpers

def _image_paths(paths_or_folder) -> list[Path]:
    """A folder (its images, sorted), one image file, or a sequence of image paths."""
    if isinstance(paths_or_folder, (str, os.PathLike)):
        p = Path(paths_or_folder)
        if p.is_file():
            return [p]
        if not p.exists():
            raise DatasetError(f"{p}: no such folder or file")
        try:
            return image_files(p)
        except ImageError as e:
            raise DatasetError(str(e)) from None
    paths = [Path(x) for x in paths_or_folder]
    if not paths:
        raise DatasetError("the list of image paths is empty")
    missing = [str(x) for x in paths if not x.is_file()]
    if missing:
        raise DatasetError(f"{missing[0]}: no such file" + (
            f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""))
    return paths


def _check_scale(scale) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise DatasetError(f"scale must be a positive integer, got {scale!r}")
    return int(scale)


def _warn_skipped(what: str, problems: list[str]) -> None:
    if problems:
        shown = "; ".join(problems[:10]) + (f"; ... {len(problems) - 10} more" if len(problems) > 10 else "")
        warnings.warn(f"skipped {len(problems)} {what}: {shown}", stacklevel=3)


def _decode_all(cache: cache_lib.DecodeCache, paths: Sequence[Path], num_threads: int | None,
                progress: bool) -> list[Path | ImageError]:
    """Decode ``paths`` into ``cache`` in parallel; per path the entry or the ImageError."""
    def one(p):
        try:
            return cache.ensure(p)
        except ImageError as e:
            return e
        except OSError as e:  # unreadable while hashing (permissions, vanished)
            return ImageError(f"{p}: cannot read ({e.strerror or e})")

    num_threads = num_threads or min(8, os.cpu_count() or 1)
    out: list = [None] * len(paths)
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
        futures = {pool.submit(one, p): i for i, p in enumerate(paths)}
        bar = tqdm(concurrent.futures.as_completed(futures), total=len(paths), unit="img",
                   desc=f"decoding into {cache.root}", disable=None if progress else True,
                   leave=False)
        for f in bar:
            out[futures[f]] = f.result()
    return out


class _MappedImages:
    """Cache entries opened lazily, once per process (mmaps are not pickled to workers)."""

    def __init__(self, entries: Sequence[Path]):
        self._entries = [str(e) for e in entries]
        self._open: dict[int, np.ndarray] = {}

    def __getstate__(self):
        return {"_entries": self._entries, "_open": {}}

    def __len__(self):
        return len(self._entries)

    def __getitem__(self, i: int) -> np.ndarray:
        arr = self._open.get(i)
        if arr is None:
            arr = self._open[i] = cache_lib.load(self._entries[i])
        return arr


# ----------------------------------------------------------------------------- sources

class PairedFolderSource:
    """Prepared LR/HR pairs in DIV2K layout, decoded once into the cache.

    ``root/HR/<stem>.<ext>`` pairs with ``root/LR_<lr_name>/X<scale>/<stem>x<scale>.<ext>``.
    HR must be LR * scale, or larger by less than ``scale`` (then cropped at the
    bottom/right). A missing LR file or a size mismatch raises ``DatasetError`` naming
    both files, checked from the image headers before anything is decoded; unreadable
    images are skipped with a warning. ``image(i) -> (lr (h, w, 3), hr (h*s, w*s, 3))``
    uint8 read-only views.

    ``spec``: the degradation that made the LR files, when known (``prepare.lr_variant_spec``
    reads it from a prepared folder's manifest); it decides ``symmetries``, the flips and
    turns that keep a pair a pair (``degrade.Pipeline.symmetries``: e.g. two of eight for
    ``nearest``). None: all eight (LR assumed centred on its HR blocks, as bicubic's).
    """

    def __init__(self, root: str | os.PathLike, scale: int, lr_name: str = "bicubic", *,
                 cache_dir: str | os.PathLike | None = None, num_threads: int | None = None,
                 progress: bool = True, spec: str | None = None):
        self.scale = s = _check_scale(scale)
        self.symmetries = _pipeline(spec, s).symmetries if spec else ALL_SYMMETRIES
        self.root = root = Path(root)
        hr_dir, lr_dir = root / "HR", root / f"LR_{lr_name}" / f"X{s}"
        for d in (root, hr_dir, lr_dir):
            if not d.is_dir():
                raise DatasetError(f"{d}: no such folder (expected DIV2K layout: "
                                   f"{root}/HR/0001.png and {root}/LR_{lr_name}/X{s}/0001x{s}.png)")
        hr_paths = _image_paths(hr_dir)
        pairs, problems = [], []
        for hr_path in hr_paths:
            lr_path = _find_lr(lr_dir, hr_path, s)
            try:
                hr_wh, lr_wh = _header_size(hr_path), _header_size(lr_path)
            except ImageError as e:
                problems.append(str(e))
                continue
            _check_pair(hr_path, hr_wh[::-1], lr_path, lr_wh[::-1], s)
            pairs.append((hr_path, lr_path))
        decoded = _decode_all(cache_lib.DecodeCache(cache_dir), [p for pair in pairs for p in pair],
                              num_threads, progress)
        names, hr_entries, lr_entries, lr_sizes = [], [], [], []
        for k, (hr_path, lr_path) in enumerate(pairs):
            hr_e, lr_e = decoded[2 * k], decoded[2 * k + 1]
            bad = [str(e) for e in (hr_e, lr_e) if isinstance(e, ImageError)]
            if bad:
                problems.extend(bad)
                continue
            hr_shape, lr_shape = cache_lib.load(hr_e).shape, cache_lib.load(lr_e).shape
            _check_pair(hr_path, hr_shape, lr_path, lr_shape, s)  # e.g. EXIF-rotated files
            names.append(hr_path.stem)
            hr_entries.append(hr_e)
            lr_entries.append(lr_e)
            lr_sizes.append(lr_shape[:2])
        _warn_skipped("unreadable images", problems)
        if not names:
            raise DatasetError(f"{root}: no usable image pairs")
        self.names = names
        self.lr_sizes = lr_sizes
        self._hr = _MappedImages(hr_entries)
        self._lr = _MappedImages(lr_entries)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"PairedFolderSource({str(self.root)!r}, scale={self.scale}, images={len(self)})"

    def image(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Pair ``i``: ``(lr (h, w, 3), hr (h*s, w*s, 3))`` uint8, read-only."""
        lr = self._lr[i]
        h, w = lr.shape[:2]
        return lr, self._hr[i][: h * self.scale, : w * self.scale]

    def patch(self, i: int, patch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A random aligned crop of pair ``i``: ``(lr (p, p, 3), hr (p*s, p*s, 3))`` uint8 views."""
        lr, hr = self.image(i)
        p, s = patch_size, self.scale
        y = int(rng.integers(0, lr.shape[0] - p + 1))
        x = int(rng.integers(0, lr.shape[1] - p + 1))
        return lr[y:y + p, x:x + p], hr[y * s:(y + p) * s, x * s:(x + p) * s]


def _find_lr(lr_dir: Path, hr_path: Path, s: int) -> Path:
    stem = f"{hr_path.stem}x{s}"
    for suffix in (hr_path.suffix,) + IMAGE_SUFFIXES:
        cand = lr_dir / f"{stem}{suffix}"
        if cand.is_file():
            return cand
    raise DatasetError(f"{lr_dir / (stem + hr_path.suffix)}: missing LR image for {hr_path}")


def _header_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the file header, without decoding pixels."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as e:  # noqa: BLE001 - any failure means the file is unusable
        raise ImageError(f"{path}: not a readable image ({e.__class__.__name__})") from None


def _check_pair(hr_path, hr_hw, lr_path, lr_hw, s) -> None:
    (H, W), (h, w) = hr_hw[:2], lr_hw[:2]
    if not (0 <= H - h * s < s and 0 <= W - w * s < s):
        raise DatasetError(
            f"{hr_path} is {W}x{H} but its LR image {lr_path} is {w}x{h}: "
            f"at scale {s} the HR image must be {w * s}x{h * s} (or larger by less than {s})")


class HROnlySource:
    """HR images decoded once into the cache; LR patches made on the fly by ``degrade``.

    ``paths_or_folder``: a folder, one image, or a list of image paths. ``spec`` is a
    ``degrade`` spec (``None`` means ``bicubic(scale)``, MATLAB imresize; an open
    factor, ``bicubic`` or ``bicubic(S)``, takes ``scale``); its total scale must equal
    ``scale``, else ``degrade.SpecError``. LR patches equal the same window of the
    degraded whole image bit for bit, for the deterministic part of the chain, except
    that a ``jpeg`` step codes each crop on its own block grid (statistically the same
    artefacts, far cheaper than aligning crops to the whole image's grid).
    Unreadable images are skipped with a warning.
    ``image(i) -> hr (H, W, 3)`` uint8 read-only, H and W cropped to multiples of scale.
    ``symmetries``: the flips and turns under which the spec's pairs stay pairs
    (``degrade.Pipeline.symmetries``), the ones augmentation may use.
    """

    def __init__(self, paths_or_folder, scale: int, spec: str | None = None, *,
                 cache_dir: str | os.PathLike | None = None,
                 num_threads: int | None = None, progress: bool = True):
        self.scale = s = _check_scale(scale)
        self.pipeline = _pipeline(spec, s)
        self.symmetries = self.pipeline.symmetries
        paths = _image_paths(paths_or_folder)
        decoded = _decode_all(cache_lib.DecodeCache(cache_dir), paths, num_threads, progress)
        problems = [str(e) for e in decoded if isinstance(e, ImageError)]
        _warn_skipped("unreadable images", problems)
        keep = [k for k, e in enumerate(decoded) if not isinstance(e, ImageError)]
        if not keep:
            where = paths_or_folder if isinstance(paths_or_folder, (str, os.PathLike)) else "the image list"
            raise DatasetError(f"{where}: no readable images")
        self.paths = [paths[k] for k in keep]
        self.names = [p.stem for p in self.paths]
        self._hr = _MappedImages([decoded[k] for k in keep])
        shapes = [cache_lib.load(decoded[k]).shape for k in keep]
        self.lr_sizes = [(h // s, w // s) for h, w, _ in shapes]
        self.margin = -(-self.pipeline.margin // s) * s

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"HROnlySource({len(self)} images, scale={self.scale}, spec={self.pipeline.spec!r})"

    def image(self, i: int) -> np.ndarray:
        """HR image ``i``: ``(h*s, w*s, 3)`` uint8, read-only."""
        h, w = self.lr_sizes[i]
        return self._hr[i][: h * self.scale, : w * self.scale]

    def patch(self, i: int, patch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A random crop of image ``i`` and its degraded LR: ``(lr (p, p, 3), hr (p*s, p*s, 3))`` uint8.

        The HR crop is degraded with ``margin`` extra HR pixels on each side (fewer at
        the image's edges) and the LR interior is kept, so crop borders do not leak into
        the LR patch.
        """
        hr = self.image(i)
        p, s, m = patch_size, self.scale, self.margin  # m: a multiple of s
        h, w = self.lr_sizes[i]
        y = int(rng.integers(0, h - p + 1)) * s
        x = int(rng.integers(0, w - p + 1)) * s
        y0, x0 = max(0, y - m), max(0, x - m)
        y1, x1 = min(h * s, y + p * s + m), min(w * s, x + p * s + m)
        lr = self.pipeline(np.ascontiguousarray(hr[y0:y1, x0:x1]), rng)
        oy, ox = (y - y0) // s, (x - x0) // s
        return lr[oy:oy + p, ox:ox + p], hr[y:y + p * s, x:x + p * s]


def _pipeline(spec: str | None, scale: int):
    from edsr_jax.degradation import degrade  # noqa: PLC0415 - keeps data importable without it

    pipe = degrade.parse(spec if spec is not None else f"bicubic({scale})", scale=scale)
    if pipe.scale != scale:  # parse checks this too; kept for a clear message regardless
        raise DatasetError(f"degradation spec {pipe.spec!r} downscales by {pipe.scale}, "
                           f"but the scale is {scale}")
    return pipe


# ----------------------------------------------------------------------------- transforms

ALL_SYMMETRIES = tuple(range(8))  # every k of ``symmetry`` (also degrade.ALL_SYMMETRIES)

def symmetry(img: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 symmetries of the square on ``(H, W, C)``: ``k & 4`` flips left-right,
    then ``k & 3`` quarter turns counter-clockwise. Returns a view."""
    if k & 4:
        img = img[:, ::-1]
    return np.rot90(img, k & 3, axes=(0, 1))


class PatchSampler(grain.transforms.RandomMap):
    """Record ``r`` -> ``{"lr": (p, p, 3), "hr": (p*s, p*s, 3)}`` uint8 for image ``images[r // ppi]``.

    Draws the crop position, any degradation noise and (when ``augment``) one of the
    source's ``symmetries`` (all 8 flips and quarter turns unless its degradation has a
    phase or an orientation: ``degrade.Pipeline.symmetries``) from Grain's per-element
    generator, in that order.
    """

    def __init__(self, source, images: Sequence[int], patch_size: int,
                 patches_per_image: int, augment: bool):
        self.source = source
        self.images = np.asarray(images, dtype=np.int64)
        self.patch_size = patch_size
        self.patches_per_image = patches_per_image
        self.augment = augment
        self.symmetries = tuple(getattr(source, "symmetries", ALL_SYMMETRIES))

    def random_map(self, record, rng: np.random.Generator) -> dict[str, np.ndarray]:
        i = int(self.images[int(record) // self.patches_per_image])
        lr, hr = self.source.patch(i, self.patch_size, rng)
        if self.augment:
            k = self.symmetries[int(rng.integers(len(self.symmetries)))]
            lr, hr = symmetry(lr, k), symmetry(hr, k)
        return {"lr": lr, "hr": hr}


class EpochShuffle(grain.transforms.MapWithIndex):
    """Element ``j`` of the repeated record stream -> record ``perm_e[j % n]`` of epoch ``e = j // n``.

    ``perm_e`` is a NumPy permutation of ``range(n)`` seeded by ``(seed, e)``: every
    epoch visits every record once, in a new order. (It replaces Grain's
    ``MapDataset.shuffle``, whose ``index_shuffle`` costs ~4 ms per element when an
    epoch has only ~10 records.) The last two epochs' permutations are kept per process.
    """

    def __init__(self, num_records: int, seed: int):
        self.num_records = int(num_records)
        self.seed = int(seed)
        self._perms: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __getstate__(self):
        return {"num_records": self.num_records, "seed": self.seed}

    def __setstate__(self, state):
        self.__init__(state["num_records"], state["seed"])

    def permutation(self, epoch: int) -> np.ndarray:
        """The record order of ``epoch``: ``(n,)`` int64, a permutation of ``range(n)``."""
        with self._lock:
            perm = self._perms.get(epoch)
            if perm is None:
                perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_records)
                self._perms = {e: p for e, p in self._perms.items() if e == epoch - 1}
                self._perms[epoch] = perm
        return perm

    def map_with_index(self, index: int, element) -> int:
        epoch, k = divmod(int(index), self.num_records)
        return int(self.permutation(epoch)[k])


# ----------------------------------------------------------------------------- datasets

def usable_images(source, patch_size: int) -> list[int]:
    """Indices of the source's images at least ``patch_size`` LR pixels on each side.

    Warns naming the skipped ones; raises ``DatasetError`` when none is left.
    """
    keep = [i for i, (h, w) in enumerate(source.lr_sizes) if h >= patch_size and w >= patch_size]
    s = source.scale
    kept = set(keep)
    small = [f"{source.names[i]} ({w * s}x{h * s})" for i, (h, w) in enumerate(source.lr_sizes)
             if i not in kept]
    if not keep:
        raise DatasetError(f"all {len(source)} images are smaller than the HR patch "
                           f"{patch_size * s}x{patch_size * s}: {', '.join(small[:10])}")
    _warn_skipped(f"images smaller than the HR patch {patch_size * s}x{patch_size * s}", small)
    return keep


def check_dataset_args(*, patch_size, batch_size, seed, patches_per_image, num_workers, prefetch,
                       process_index, process_count) -> tuple[int, int]:
    """Check ``make_train_dataset``'s arguments (ValueError naming the first bad one); returns
    ``(process_index, process_count)``, defaulting to ``jax.process_index()``/``process_count()``."""
    for name, v in (("patch_size", patch_size), ("batch_size", batch_size),
                    ("patches_per_image", patches_per_image), ("prefetch", prefetch)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers!r}")
    if process_index is None or process_count is None:
        import jax  # noqa: PLC0415 - only needed for the defaults

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {process_count} processes")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed!r}")
    return int(process_index), int(process_count)


def to_iter_dataset(ds: grain.MapDataset, *, num_workers: int, prefetch: int) -> grain.IterDataset:
    """``ds`` read ahead by one thread (``prefetch`` elements), in ``num_workers`` Grain worker
    processes when > 0 (same elements in the same order as 0)."""
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch))
    if num_workers > 0:
        from absl import flags  # noqa: PLC0415

        if not flags.FLAGS.is_parsed():  # Grain's worker start-up reads absl flags
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                         per_worker_buffer_size=prefetch))
    return it


def make_train_dataset(source, *, patch_size: int, batch_size: int, seed: int,
                       patches_per_image: int = 1, augment: bool = True, num_workers: int = 0,
                       prefetch: int = 2, process_index: int | None = None,
                       process_count: int | None = None) -> grain.IterDataset:
    """An endless, reshuffled-every-epoch stream of training batches for this process.

    Yields ``{"lr": (B, p, p, 3) uint8, "hr": (B, p*s, p*s, 3) uint8}`` in [0, 255] with
    ``p = patch_size`` (LR pixels), ``s = source.scale`` and ``B = batch_size //
    process_count`` (``batch_size`` is the global batch). An epoch is
    ``len(usable images) * patches_per_image`` patches. ``num_workers > 0`` adds Grain
    worker processes (same batches as 0); ``prefetch`` batches are read ahead by one
    thread per process (more threads were slower here: the NumPy work holds the GIL; 2
    threads halved throughput).
    ``process_index``/``process_count`` default to ``jax.process_index()``/``process_count()``;
    process ``i`` of ``n`` takes elements ``i, i+n, ...`` of the single-process stream.

    One patch per Grain record: ``blocks.make_block_dataset`` is the faster stream (a block
    of patches per image, a batch per record), ``blocks.make_hr_dataset`` its HR-only form.
    """
    process_index, process_count = check_dataset_args(
        patch_size=patch_size, batch_size=batch_size, seed=seed, patches_per_image=patches_per_image,
        num_workers=num_workers, prefetch=prefetch, process_index=process_index,
        process_count=process_count)
    images = usable_images(source, patch_size)
    shuffle_seed, map_seed = (int(x) for x in np.random.SeedSequence(seed).generate_state(2))
    sampler = PatchSampler(source, images, patch_size, patches_per_image, augment)
    num_records = len(images) * patches_per_image
    ds = (grain.MapDataset.range(num_records)
          .repeat()
          .map_with_index(EpochShuffle(num_records, shuffle_seed))
          .random_map(sampler, seed=map_seed))
    ds = ds[process_index::process_count]
    ds = ds.batch(batch_size // process_count, drop_remainder=True)
    return to_iter_dataset(ds, num_workers=num_workers, prefetch=prefetch)


__all__ = [
    "DatasetError", "EpochShuffle", "HROnlySource", "PairedFolderSource", "PatchSampler",
    "SCALE_ORDERS", "ScaleOrder", "check_dataset_args", "make_train_dataset", "scale_seed",
    "symmetry", "to_iter_dataset", "usable_images",
]
