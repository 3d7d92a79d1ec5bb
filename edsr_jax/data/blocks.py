"""Block sampling: training batches made a block of patches per image at a time, vectorised.

The global patch stream of a run is indexed by ``g = 0, 1, 2, ...``. Patch ``g`` belongs to
block ``b = g // block``; every patch of a block is cut from the same image. Blocks are the
records of ``sources.EpochShuffle``: an epoch is ``len(usable images) * blocks_per_image``
blocks, each image ``blocks_per_image = ceil(patches_per_image / block)`` times, in an order
reshuffled every epoch. Within its image, patch ``g``'s crop position and symmetry are
``patches.uniform`` draws keyed by ``g`` (and any host degradation noise comes from a
generator seeded by ``g``), so a patch is a pure function of ``(seed, g)``: not of the batch
it lands in, the number of Grain worker processes, or the number of data-parallel processes.

Local batch ``t`` of process ``i`` of ``n`` (global batch ``G``, local ``L = G / n``) holds
patches ``t*G + i*L ... t*G + (i+1)*L - 1``: the global batch ``t`` gathered from every process
in process order is the single-process batch ``t``, row for row. One Grain element is one
local batch, built by one gather per block (``patches.gather_crops``) and one write per
patch under its symmetry (``patches.place_symmetric``), so the per-record Python cost of
the old pipeline (``sources.PatchSampler``) is paid once per batch.
Iterators checkpoint their position like any Grain iterator (``get_state``/``set_state``).

Two kinds of batch:

- ``make_block_dataset``: ``{"lr": (L, p, p, 3), "hr": (L, p*s, p*s, 3)}`` uint8, the pairs
  of the source (prepared LR files, or LR made on the host by ``HROnlySource``'s degradation),
  LR crops on the LR grid, each pair under one of ``source.symmetries``;
- ``make_hr_dataset``: ``{"hr": (L, P, P, 3)`` uint8, ``"index": (L,)`` int64 ``}`` with
  ``P = patch_size * scale``: HR crops at any pixel position under any of the 8 symmetries
  (all are valid: the LR is made afterwards from the transformed crop, e.g. on the device by
  ``edsr_jax.degradation.device``), and each row's global patch index ``g``, from which the
  trainer derives the row's degradation key.

With ``augment="device"`` either kind leaves the flips and turns to the accelerator: the
crops come as cut, with ``"symmetry": (L,) int32`` (the same draws), and
``edsr_jax.data.device_symmetry.apply_symmetries`` makes the same patches inside the step.
"""

from __future__ import annotations

import sys

import grain
import numpy as np

from edsr_jax.data import patches as patches_lib
from edsr_jax.data import sources

DEFAULT_BLOCK = 8  # patches per image and record: a batch of 16 holds 2 images, of 64 holds 8
AUGMENT = (True, False, "host", "device")  # where each patch's flip or turn is applied


class PatchStream:
    """The global patch stream of one source: ``patches(g)`` builds the rows for indices ``g``.

    ``hr_only``: HR crops at any pixel and all 8 symmetries, ``{"hr", "index"}``; else the
    source's pairs on the LR grid and ``source.symmetries``, ``{"lr", "hr"}``. ``augment``
    (``AUGMENT``): True or "host" applies each patch's symmetry here; "device" leaves the crops
    as cut and adds ``"symmetry": (N,) int32``, the same draws, for ``device_symmetry.
    apply_symmetries`` to apply in the step (the strided copies that flips and turns cost on
    the host, about two thirds of a patch's time, become a select on the accelerator); False
    keeps every crop as it is. Picklable (Grain workers get a copy).
    """

    def __init__(self, source, images, *, patch_size: int, block: int, patches_per_image: int,
                 augment: bool | str, seed: int, hr_only: bool):
        self.source = source
        self.images = np.asarray(images, dtype=np.int64)
        self.scale = int(source.scale)
        self.patch_size = int(patch_size)
        self.block = int(block)
        self.blocks_per_image = -(-int(patches_per_image) // self.block)
        self.num_records = len(self.images) * self.blocks_per_image
        shuffle_seed, self.map_seed = (int(x) for x in np.random.SeedSequence(seed).generate_state(2))
        self.shuffle = sources.EpochShuffle(self.num_records, shuffle_seed)
        self.hr_only = bool(hr_only)
        if augment not in AUGMENT:
            raise ValueError(f"augment must be one of {AUGMENT}, got {augment!r}")
        self.symmetry_on = None if augment is False else "device" if augment == "device" else "host"
        if not augment:
            self.symmetries = (0,)
        elif hr_only:
            self.symmetries = patches_lib.ALL_SYMMETRIES
        else:
            self.symmetries = tuple(getattr(source, "symmetries", patches_lib.ALL_SYMMETRIES))
        self._symmetry_ids = np.asarray(self.symmetries, dtype=np.int64)
        self.lr_sizes = np.asarray(source.lr_sizes, dtype=np.int64).reshape(-1, 2)
        self.pipeline = getattr(source, "pipeline", None)  # HROnlySource: LR made on the host
        self._window_cache: dict[int, tuple] = {}

    def image_of_block(self, b: np.ndarray) -> np.ndarray:
        """Source image index of every block in ``b`` (int64 array): epoch ``b // records``,
        record ``perm_epoch[b % records]``, image ``images[record // blocks_per_image]``."""
        b = np.asarray(b, dtype=np.int64)
        epoch, k = np.divmod(b, self.num_records)
        record = np.empty_like(b)
        for e in np.unique(epoch):
            sel = epoch == e
            record[sel] = self.shuffle.permutation(int(e))[k[sel]]
        return self.images[record // self.blocks_per_image]

    def draws(self, g: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(y, x, k)`` of patches ``g`` cut from ``image``: top-left corner (LR pixels for
        pairs, HR pixels for HR crops) and symmetry, int64 ``(N,)`` each."""
        h, w = self.lr_sizes[image, 0], self.lr_sizes[image, 1]
        p, s = self.patch_size, self.scale
        if self.hr_only:
            span_y, span_x = h * s - p * s + 1, w * s - p * s + 1
        else:
            span_y, span_x = h - p + 1, w - p + 1
        spans = np.stack([span_y, span_x, np.full_like(span_y, len(self.symmetries))], axis=1)
        u = patches_lib.uniform(self.map_seed, 4 * g[:, None] + np.arange(3), spans)  # (N, 3)
        return u[:, 0], u[:, 1], self._symmetry_ids[u[:, 2]]

    def patches(self, g) -> dict[str, np.ndarray]:
        """Rows for global patch indices ``g`` (``(N,)`` int, >= 0), in that order:
        ``{"hr": (N, P, P, 3), "index": (N,) int64}`` or ``{"lr": (N, p, p, 3), "hr": ...}``
        uint8 (``P = p * s``)."""
        g = np.asarray(g, dtype=np.int64)
        block_ids, rows_of = np.unique(g // self.block, return_inverse=True)
        block_image = self.image_of_block(block_ids)
        y, x, k = self.draws(g, block_image[rows_of])
        p, s = self.patch_size, self.scale
        hr = np.empty((len(g), p * s, p * s, 3), np.uint8)
        lr = None if self.hr_only else np.empty((len(g), p, p, 3), np.uint8)
        place_k = k if self.symmetry_on == "host" else np.zeros_like(k)
        for u, i in enumerate(block_image.tolist()):
            rows = np.flatnonzero(rows_of == u)
            lr_win, hr_win = self._windows(i)
            if self.hr_only:
                patches_lib.place_symmetric(hr, rows, patches_lib.gather_crops(hr_win, y[rows], x[rows]),
                                            place_k[rows])
                continue
            patches_lib.place_symmetric(
                hr, rows, patches_lib.gather_crops(hr_win, y[rows] * s, x[rows] * s), place_k[rows])
            if self.pipeline is None:  # prepared pairs
                lr_crops = patches_lib.gather_crops(lr_win, y[rows], x[rows])
            else:  # degraded here, patch by patch
                hr_img = self.source.image(i)
                lr_crops = np.stack([self._degrade(i, hr_img, int(y[r]), int(x[r]), int(g[r]))
                                     for r in rows])
            patches_lib.place_symmetric(lr, rows, lr_crops, place_k[rows])
        out = {"hr": hr, "index": g} if self.hr_only else {"lr": lr, "hr": hr}
        if self.symmetry_on == "device":
            out["symmetry"] = k.astype(np.int32)
        return out

    def __getstate__(self):
        return {**self.__dict__, "_window_cache": {}}  # views of memory maps stay in their process

    def _windows(self, i: int) -> tuple[np.ndarray | None, np.ndarray]:
        """``(LR windows or None, HR windows)`` of source image ``i`` (``patches.crop_windows``
        of its LR patch size and HR patch size), built once per process."""
        got = self._window_cache.get(i)
        if got is None:
            img = self.source.image(i)
            lr_img, hr_img = img if isinstance(img, tuple) else (None, img)
            p, s = self.patch_size, self.scale
            lr_win = patches_lib.crop_windows(lr_img, p) if lr_img is not None and not self.hr_only else None
            got = self._window_cache[i] = (lr_win, patches_lib.crop_windows(hr_img, p * s))
        return got

    def _degrade(self, i: int, hr_img: np.ndarray, y: int, x: int, g: int) -> np.ndarray:
        """The LR patch at LR corner ``(y, x)`` of image ``i``, degraded with ``margin`` HR pixels
        of context (as ``HROnlySource.patch``), noise from a generator seeded by ``g``."""
        p, s, m = self.patch_size, self.scale, self.source.margin
        h, w = (int(v) for v in self.lr_sizes[i])
        ys, xs = y * s, x * s
        y0, x0 = max(0, ys - m), max(0, xs - m)
        y1, x1 = min(h * s, ys + p * s + m), min(w * s, xs + p * s + m)
        rng = np.random.default_rng([self.map_seed, g])
        out = self.pipeline(np.ascontiguousarray(hr_img[y0:y1, x0:x1]), rng)
        oy, ox = (ys - y0) // s, (xs - x0) // s
        return out[oy:oy + p, ox:ox + p]


class LocalBatch(grain.transforms.Map):
    """Element ``t`` -> local batch ``t`` of process ``process_index``: ``stream.patches`` of
    ``t*G + process_index*L + arange(L)`` (``G`` the global batch, ``L = G / process_count``)."""

    def __init__(self, stream: PatchStream, global_batch: int, process_index: int, process_count: int):
        self.stream = stream
        self.global_batch = int(global_batch)
        self.local_batch = self.global_batch // int(process_count)
        self.process_index = int(process_index)

    def map(self, t) -> dict[str, np.ndarray]:
        start = int(t) * self.global_batch + self.process_index * self.local_batch
        return self.stream.patches(np.arange(start, start + self.local_batch, dtype=np.int64))


def index_words(index) -> np.ndarray:
    """Global patch indices as two 32-bit words, ``(N, 2) uint32`` ``[index >> 32, index &
    0xFFFFFFFF]``: what a device without 64-bit integers (JAX's default) can take, e.g. to derive
    a patch's key as ``fold_in(fold_in(key, hi), lo)``. ``index (N,)`` int64 in [0, 2**63)."""
    index = np.asarray(index, dtype=np.int64)
    if index.size and index.min() < 0:
        raise ValueError(f"patch indices must be >= 0, got {int(index.min())}")
    return np.stack([index >> 32, index & 0xFFFFFFFF], axis=-1).astype(np.uint32)


def _dataset(source, *, hr_only: bool, patch_size, batch_size, seed, block, patches_per_image,
             augment, num_workers, prefetch, process_index, process_count) -> grain.IterDataset:
    process_index, process_count = sources.check_dataset_args(
        patch_size=patch_size, batch_size=batch_size, seed=seed, patches_per_image=patches_per_image,
        num_workers=num_workers, prefetch=prefetch, process_index=process_index,
        process_count=process_count)
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise ValueError(f"block must be a positive integer (patches per image and record), got {block!r}")
    images = sources.usable_images(source, patch_size)
    stream = PatchStream(source, images, patch_size=patch_size, block=block,
                         patches_per_image=patches_per_image, augment=augment, seed=seed, hr_only=hr_only)
    ds = (grain.MapDataset.range((sys.maxsize // 4) // batch_size)  # g = t * batch_size + row < 2**61
          .map(LocalBatch(stream, batch_size, process_index, process_count)))
    return sources.to_iter_dataset(ds, num_workers=num_workers, prefetch=prefetch)


def make_block_dataset(source, *, patch_size: int, batch_size: int, seed: int,
                       block: int = DEFAULT_BLOCK, patches_per_image: int = 1, augment: bool | str = True,
                       num_workers: int = 0, prefetch: int = 2, process_index: int | None = None,
                       process_count: int | None = None) -> grain.IterDataset:
    """This process's endless stream of training pairs, a block of patches per image at a time.

    Yields ``{"lr": (B, p, p, 3), "hr": (B, p*s, p*s, 3)}`` uint8 in [0, 255], ``p =
    patch_size`` LR pixels, ``s = source.scale``, ``B = batch_size // process_count``
    (``batch_size`` is the global batch). ``source``: a ``PairedFolderSource`` (crops of the
    prepared pairs) or an ``HROnlySource`` (LR made on the host by its degradation, per
    patch). Each pair gets one of ``source.symmetries`` when ``augment`` (``"device"``: not
    here; the batch adds ``"symmetry": (B,) int32`` for ``device_symmetry.apply_symmetries`` to
    apply to both LR and HR in the step; the same pairs in the end). ``block`` patches
    come from each image drawn (see the module docstring); an epoch is ``len(usable images)
    * ceil(patches_per_image / block)`` blocks. Same batches for any ``num_workers``; the
    global batch is the same for any ``process_count``. Other arguments as
    ``sources.make_train_dataset`` (whose stream, one patch per record, differs).
    """
    return _dataset(source, hr_only=False, patch_size=patch_size, batch_size=batch_size, seed=seed,
                    block=block, patches_per_image=patches_per_image, augment=augment,
                    num_workers=num_workers, prefetch=prefetch, process_index=process_index,
                    process_count=process_count)


def make_hr_dataset(source, *, patch_size: int, batch_size: int, seed: int,
                    block: int = DEFAULT_BLOCK, patches_per_image: int = 1, augment: bool | str = True,
                    num_workers: int = 0, prefetch: int = 2, process_index: int | None = None,
                    process_count: int | None = None) -> grain.IterDataset:
    """This process's endless stream of HR crops for degradation on the device.

    Yields ``{"hr": (B, P, P, 3) uint8 in [0, 255], "index": (B,) int64}`` with ``P =
    patch_size * source.scale`` (``patch_size`` in LR pixels, as ``make_block_dataset``) and
    ``B = batch_size // process_count``. ``index`` holds each row's global patch index: the
    rows of global batch ``t`` are ``t * batch_size + arange(batch_size)``, whatever the
    number of processes or workers, so a key derived from ``(seed, index)`` names the same
    patch everywhere (``index_words`` splits it into 32-bit words for a device without int64).
    Crops lie at any HR pixel and, when ``augment``, get any of the 8 symmetries (``"device"``:
    not here; the batch adds ``"symmetry": (B,) int32`` and the step applies it,
    ``device_symmetry.apply_symmetries``, before degrading). ``source``: an ``HROnlySource``
    (or a ``PairedFolderSource``, its HR images).
    """
    return _dataset(source, hr_only=True, patch_size=patch_size, batch_size=batch_size, seed=seed,
                    block=block, patches_per_image=patches_per_image, augment=augment,
                    num_workers=num_workers, prefetch=prefetch, process_index=process_index,
                    process_count=process_count)


__all__ = ["DEFAULT_BLOCK", "LocalBatch", "PatchStream", "index_words", "make_block_dataset",
           "make_hr_dataset"]
