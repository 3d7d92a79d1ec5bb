"""The SR papers' evaluation protocol: one evaluator for the trainer and the evaluate CLI.

For every HR image: crop to a multiple of the scale (``modcrop``); LR = MATLAB bicubic
``imresize(HR, 1/s)`` (uint8), or a ``degrade`` spec seeded per image name, or a pre-made
LR image (a file in an LR folder, ``lr_dir``, as the benchmarks are distributed:
``Set5/HR/baby.png`` with ``Set5/LR_bicubic/X2/babyx2.png``, DIV2K's ``DIV2K_valid_HR/0801.png``
with ``DIV2K_valid_LR_bicubic/X2/0801x2.png``; or given in a ``Pair``); SR = the method's
upscaling of LR; PSNR and SSIM on the Y channel (or on RGB: ``y_channel=False``) with
``scale`` pixels of border removed (``metrics``). ``protocol()`` records these choices.

An image that cannot be scored (unreadable, or smaller than ``min_side(scale)``: the SSIM
window after the border crop) is skipped with a message naming it, in training and in the
CLI alike; a set with no scorable image at all is an ``ImageError``. The trainer loads its
pairs at set-up (``Evaluator.from_images``), before anything is compiled or written.

Upscalers are plain functions ``upscale_fn(lr (h, w, 3) uint8, scale) -> (h*s, w*s, 3) uint8``;
this module knows nothing of the model (as big_vision keeps evaluators apart from the trainer).
The rule-based baselines SR is measured against are ``BASELINES``: nearest (pixel
replication), bilinear and bicubic (MATLAB's ``imresize``).
"""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np

from edsr_jax.io.images import IMAGE_SUFFIXES, ImageError, list_images, read_rgb, write_image
from edsr_jax.degradation.imresize import imresize
from edsr_jax.evaluation.metrics import SSIM_WINDOW, psnr, ssim

PANEL_CROP = 192  # HR pixels (at most) of each side of a comparison panel
PANEL_GAP = 4  # white pixels between the panels

UpscaleFn = Callable[[np.ndarray, int], np.ndarray]
LrFn = Callable[[np.ndarray, str], np.ndarray]


class Pair(NamedTuple):
    """One evaluation image: ``name`` (file name), ``lr (h, w, 3)`` and ``hr (h*s, w*s, 3)`` uint8."""

    name: str
    lr: np.ndarray
    hr: np.ndarray


def modcrop(hr: np.ndarray, scale: int) -> np.ndarray:
    """``(H, W, C)`` -> ``(H - H % scale, W - W % scale, C)``, keeping the top-left corner."""
    h, w = hr.shape[:2]
    return hr[: h - h % scale, : w - w % scale]


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """The bicubic baseline: ``(h, w, 3) uint8`` -> ``(h*scale, w*scale, 3) uint8`` (MATLAB imresize)."""
    return imresize(lr, scale)


def bilinear_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """The bilinear baseline: ``(h, w, 3) uint8`` -> ``(h*scale, w*scale, 3) uint8``
    (MATLAB ``imresize(lr, scale, 'bilinear')``: rounded to uint8 after each axis pass)."""
    return imresize(lr, scale, method="bilinear")


def nearest_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """The nearest-neighbour baseline: every pixel repeated ``scale x scale`` times,
    ``(h, w, C)`` -> ``(h*scale, w*scale, C)``, same dtype (MATLAB's ``'nearest'`` at an
    integer factor)."""
    return np.repeat(np.repeat(lr, scale, axis=0), scale, axis=1)


# The rule-based upsamplers SR is measured against, by the name the CLI and the JSON use.
BASELINES: dict[str, UpscaleFn] = {"nearest": nearest_upscale, "bilinear": bilinear_upscale,
                                   "bicubic": bicubic_upscale}


def protocol(scale: int, *, y_channel: bool = True, lr_dir: str | os.PathLike | None = None,
             spec: str | None = None) -> dict:
    """How a score was made, for the JSON results: ``{"channel": "Y"|"RGB", "crop_border",
    "hr_crop", "lr_source": "matlab_bicubic"|"spec"|"files", "lr_dir", "spec", "ssim"}``."""
    return {
        "channel": "Y" if y_channel else "RGB",
        "channel_detail": ("luma of MATLAB rgb2ycbcr (BT.601, Y in [16, 235]), float64, not rounded"
                           if y_channel else "R, G and B pooled (PSNR); SSIM the mean of the three"),
        "crop_border": int(scale),
        "hr_crop": "modcrop: bottom/right cut to a multiple of the scale",
        "lr_source": "files" if lr_dir is not None else ("spec" if spec else "matlab_bicubic"),
        "lr_dir": None if lr_dir is None else str(lr_dir),
        "spec": spec or None,
        "ssim": "Wang et al.: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, L 255, 'valid'",
    }


def min_side(scale: int) -> int:
    """Smallest HR side (pixels, after ``modcrop``) that can be scored at ``scale``: the SSIM
    window (11) plus the ``scale``-pixel border removed on both sides."""
    return 2 * scale + SSIM_WINDOW


def lr_maker(scale: int, spec: str | None = None) -> LrFn:
    """``make_lr(hr (H, W, 3) uint8, name) -> (H/s, W/s, 3) uint8``: MATLAB bicubic
    ``imresize(hr, 1/scale)`` (the papers' protocol) when ``spec`` is None or empty, else
    ``degrade.parse(spec, scale)`` with a generator seeded from the image ``name`` (the same
    image always gets the same degradation). Raises ``degrade.SpecError`` for a bad spec."""
    if not spec:
        return lambda hr, name: imresize(hr, 1.0 / scale)
    from edsr_jax.degradation import degrade  # noqa: PLC0415 - scipy and Pillow only when a spec is used

    pipe = degrade.parse(spec, scale=scale)
    return lambda hr, name: pipe(hr, degrade.image_rng(name))


def read_hr(path: str | os.PathLike, scale: int, notes: list[str] | None = None) -> np.ndarray:
    """The HR image of ``path`` cropped to a multiple of ``scale``: ``(H, W, 3) uint8``.

    Raises ``ImageError`` naming the file when it is unreadable or smaller than
    ``min_side(scale)`` on a side. Conversions are appended to ``notes`` (``images.read_rgb``).
    """
    hr = modcrop(read_rgb(path, notes), scale)
    if min(hr.shape[:2]) < min_side(scale):
        raise ImageError(f"{path}: {hr.shape[1]}x{hr.shape[0]} pixels is too small to score at "
                         f"x{scale} (at least {min_side(scale)}x{min_side(scale)}: the "
                         f"{SSIM_WINDOW}x{SSIM_WINDOW} SSIM window after a {scale}-pixel border)")
    return np.ascontiguousarray(hr)


def lr_folder(lr_root: str | os.PathLike, scale: int) -> Path:
    """The folder of pre-made LR images for ``scale`` under ``lr_root``: its ``X<scale>``
    subfolder (``LR_bicubic/X2``, ``DIV2K_valid_LR_bicubic/X2``), or ``lr_root`` itself when it
    has no ``X<n>`` subfolders; ``{s}`` in ``lr_root`` is replaced by the scale (BasicSR's
    ``Set5/LRbicx{s}``). Raises ``ImageError`` naming what is missing."""
    root = Path(str(lr_root).replace("{s}", str(scale)))
    if not root.is_dir():
        raise ImageError(f"{root}: no such folder of LR images")
    for name in (f"X{scale}", f"x{scale}"):
        if (root / name).is_dir():
            return root / name
    others = sorted(p.name for p in root.iterdir() if p.is_dir() and re.fullmatch(r"[Xx]\d+", p.name))
    if others:
        raise ImageError(f"{root}: no X{scale} folder of LR images for x{scale} (has {', '.join(others)})")
    return root


def find_lr(lr_dir: str | os.PathLike, hr_path: str | os.PathLike, scale: int) -> Path:
    """The pre-made LR file of ``hr_path`` in ``lr_dir``: ``<stem>x<scale>.<ext>`` (EDSR's and
    DIV2K's naming, ``babyx2.png``) or ``<stem>.<ext>``, any image suffix, the HR's first.
    Raises ``ImageError`` naming both when there is none."""
    lr_dir, hr_path = Path(lr_dir), Path(hr_path)
    suffixes = (hr_path.suffix,) + tuple(x for x in IMAGE_SUFFIXES if x != hr_path.suffix.lower())
    for stem in (f"{hr_path.stem}x{scale}", hr_path.stem):
        for suffix in suffixes:
            if (lr_dir / f"{stem}{suffix}").is_file():
                return lr_dir / f"{stem}{suffix}"
    raise ImageError(f"{lr_dir / (hr_path.stem + f'x{scale}' + hr_path.suffix)}: no LR image for "
                     f"{hr_path} (looked for {hr_path.stem}x{scale}.* and {hr_path.stem}.* in {lr_dir})")


def read_pair(hr_path: str | os.PathLike, lr_path: str | os.PathLike, scale: int,
              notes: list[str] | None = None) -> Pair:
    """A pre-made pair: ``lr (h, w, 3)`` as read and the HR cut to ``(h*s, w*s, 3)`` uint8.

    The HR may be larger than ``LR * scale`` by less than ``scale`` (uncropped benchmark HR);
    anything else raises ``ImageError`` naming both files, as does an unreadable file or an
    HR smaller than ``min_side(scale)``."""
    hr, lr = read_rgb(hr_path, notes), read_rgb(lr_path, notes)
    (H, W), (h, w) = hr.shape[:2], lr.shape[:2]
    if not (0 <= H - h * scale < scale and 0 <= W - w * scale < scale):
        raise ImageError(f"{hr_path} is {W}x{H} but its LR image {lr_path} is {w}x{h}: at x{scale} "
                         f"the HR image must be {w * scale}x{h * scale} (or larger by less than {scale})")
    hr = hr[: h * scale, : w * scale]
    if min(hr.shape[:2]) < min_side(scale):
        raise ImageError(f"{hr_path}: {hr.shape[1]}x{hr.shape[0]} pixels is too small to score at "
                         f"x{scale} (at least {min_side(scale)}x{min_side(scale)})")
    return Pair(Path(hr_path).name, np.ascontiguousarray(lr), np.ascontiguousarray(hr))


def benchmark_layout(folder: str | os.PathLike) -> tuple[str, Path, list[Path]]:
    """``(name, hr_dir, lr_roots)`` of a test-set folder given on the command line.

    A folder with an ``HR`` subfolder is a benchmark as EDSR-PyTorch distributes it
    (``Set5/HR``, ``Set5/LR_bicubic/X2/babyx2.png``; also ``prepare``'s output): HR images
    from ``HR``, ``lr_roots`` its ``LR_*`` folders (``LR_bicubic`` first). One with a
    ``GTmod12`` subfolder is BasicSR's (``Set5/GTmod12``, ``Set5/LRbicx2/baby.png``):
    ``lr_roots == [folder / "LRbicx{s}"]`` (``lr_folder`` fills in the scale). Any other
    folder holds the HR images itself, with no pre-made LR (``lr_roots == []``). ``name``
    is the folder's name."""
    folder = Path(folder)
    if (folder / "GTmod12").is_dir():
        has_lr = any(p.is_dir() and re.fullmatch(r"LRbicx\d+", p.name) for p in folder.iterdir())
        return folder.name, folder / "GTmod12", [folder / "LRbicx{s}"] if has_lr else []
    if (folder / "HR").is_dir():
        roots = sorted((p for p in folder.iterdir() if p.is_dir() and p.name.startswith("LR_")),
                       key=lambda p: (p.name != "LR_bicubic", p.name))
        return folder.name, folder / "HR", roots
    return folder.name, folder, []


def image_paths(source: str | os.PathLike | Sequence[str | os.PathLike],
                max_images: int | None = None) -> list[Path]:
    """The images of a folder (sorted by name) or a given list, the first ``max_images`` of them.

    Raises ``ImageError`` when the folder does not exist or holds no image file."""
    if isinstance(source, (str, os.PathLike)):
        paths = list_images(source)
        if not paths:
            raise ImageError(f"{source}: folder holds no image files")
    else:
        paths = [Path(p) for p in source]
    return paths[:max_images] if max_images is not None else paths


def iter_pairs(paths: Sequence[Path], scale: int, make_lr: LrFn,
               report: Callable[[str], None] | None = None,
               lr_dir: str | os.PathLike | None = None) -> Iterator[Pair | ImageError]:
    """For each HR path, a ``Pair`` or the ``ImageError`` saying why it cannot be scored.

    LR = ``make_lr(hr, name)``, or with ``lr_dir`` the pre-made file ``find_lr(lr_dir, path)``
    (``read_pair``: a missing LR file or sizes that disagree are an ``ImageError`` too).
    ``report`` receives each conversion note (``"note: ..."``), e.g. grayscale to RGB.
    One image at a time: a large benchmark set is never held in memory whole."""
    for path in paths:
        notes: list[str] = []
        try:
            if lr_dir is not None:
                pair = read_pair(path, find_lr(lr_dir, path, scale), scale, notes)
            else:
                hr = read_hr(path, scale, notes)
                pair = Pair(Path(path).name, make_lr(hr, Path(path).name), hr)
        except ImageError as e:
            yield e
            continue
        if report is not None:
            for note in notes:
                report(f"note: {note}")
        yield pair


def score_image(hr: np.ndarray, scale: int, upscale_fn: UpscaleFn,
                lr: np.ndarray | None = None, y_channel: bool = True
                ) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Score one HR image: ``hr (H, W, 3) uint8`` with H, W multiples of ``scale``.

    Returns ``(psnr_db, ssim, lr, sr)``: ``lr`` ``(H/s, W/s, 3) uint8`` is the given one or
    ``imresize(hr, 1/scale)`` (the papers' protocol), ``sr = upscale_fn(lr, scale)``
    ``(H, W, 3) uint8``; PSNR in dB (inf for equal images), SSIM in [-1, 1], on Y (or on
    RGB, ``y_channel=False``) with a ``scale``-pixel border removed.
    """
    if lr is None:
        lr = imresize(hr, 1.0 / scale)
    sr = np.asarray(upscale_fn(lr, scale))
    if sr.shape != hr.shape:
        raise ValueError(f"upscaler returned shape {sr.shape} for LR {lr.shape} at x{scale}; expected {hr.shape}")
    return (psnr(sr, hr, crop_border=scale, y_channel=y_channel),
            ssim(sr, hr, crop_border=scale, y_channel=y_channel), lr, sr)


def comparison_panel(lr: np.ndarray, sr: np.ndarray, hr: np.ndarray, scale: int,
                     method: str) -> np.ndarray:
    """Side-by-side centre crops ``LR (nearest) | bicubic | SR | HR`` as ``(h, w, 3) uint8``.

    Crops are at most ``PANEL_CROP`` HR pixels a side, ``PANEL_GAP`` white pixels apart. The
    SR panel is left out when ``method`` is "bicubic" (it would repeat the bicubic one).
    """
    h, w = hr.shape[:2]
    ch, cw = min(h, PANEL_CROP) // scale * scale, min(w, PANEL_CROP) // scale * scale
    top, left = (h - ch) // 2 // scale * scale, (w - cw) // 2 // scale * scale
    hr_box = (slice(top, top + ch), slice(left, left + cw))
    lr_crop = lr[top // scale:(top + ch) // scale, left // scale:(left + cw) // scale]
    nearest = np.repeat(np.repeat(lr_crop, scale, axis=0), scale, axis=1)
    bicubic = bicubic_upscale(lr, scale)[hr_box]
    panels = [nearest, bicubic] + ([] if method == "bicubic" else [sr[hr_box]]) + [hr[hr_box]]
    gap = np.full((ch, PANEL_GAP, 3), 255, np.uint8)
    row = []
    for p in panels:
        row += [p, gap]
    return np.concatenate(row[:-1], axis=1)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "method"


def panel_path(save_dir: str | os.PathLike, dataset: str, scale: int, image: str, method: str) -> Path:
    """Where ``--save-panels`` puts one comparison: ``DIR/dataset/xS/stem_method.png``."""
    return Path(save_dir) / _safe_name(dataset) / f"x{scale}" / f"{Path(image).stem}_{_safe_name(method)}.png"


def sr_path(save_dir: str | os.PathLike, dataset: str, scale: int, image: str, method: str,
            step: int | None = None) -> Path:
    """Where ``--save-images`` puts one full SR output:
    ``DIR/dataset/xS/stem_method[_stepN].png`` (the step of a model's checkpoint)."""
    tag = _safe_name(method) + ("" if step is None else f"_step{int(step)}")
    return Path(save_dir) / _safe_name(dataset) / f"x{scale}" / f"{Path(image).stem}_{tag}.png"


def _mean(rows: list[dict], key: str) -> float | None:
    return float(np.mean([r[key] for r in rows])) if rows else None


class Evaluator:
    """Scores upscalers on evaluation pairs held in memory (the trainer's validation set).

    ``pairs``: ``Pair``s of one ``scale`` (from ``from_images`` or made by the caller, e.g.
    with pre-made LR images); ``degradation`` names how their LR was made; scores on Y, or
    on RGB with ``y_channel=False``. The bicubic baseline is computed once, on first use
    (``baseline``).
    """

    def __init__(self, pairs: Sequence[Pair], scale: int, degradation: str | None = None,
                 y_channel: bool = True):
        if not pairs:
            raise ValueError("an Evaluator needs at least one pair")
        self.pairs = list(pairs)
        self.scale = int(scale)
        self.degradation = degradation or f"bicubic({self.scale})"
        self.y_channel = bool(y_channel)

    @classmethod
    def from_images(cls, source, scale: int, *, spec: str | None = None,
                    max_images: int | None = None,
                    report: Callable[[str], None] | None = None,
                    lr_dir: str | os.PathLike | None = None, y_channel: bool = True) -> "Evaluator":
        """Load the first ``max_images`` images of ``source`` (a folder or a list of HR paths).

        LR: ``lr_maker(scale, spec)``, or the pre-made files of ``lr_dir`` (``iter_pairs``).
        Images that cannot be scored go to ``report`` as ``"skipped: <path>: why"`` (default:
        stderr). Raises ``ImageError`` naming ``source`` when none is left (or the folder is
        missing), ``degrade.SpecError`` for a bad ``spec``.
        """
        report = report or _to_stderr
        pairs = []
        make_lr = lr_maker(scale, spec) if lr_dir is None else None
        for item in iter_pairs(image_paths(source, max_images), scale, make_lr, report, lr_dir):
            if isinstance(item, ImageError):
                report(f"skipped: {item}")
            else:
                pairs.append(item)
        if not pairs:
            where = source if isinstance(source, (str, os.PathLike)) else "the validation images"
            raise ImageError(f"{where}: no image can be scored at x{scale} (each needs to be readable "
                             f"and at least {min_side(scale)}x{min_side(scale)} pixels)")
        return cls(pairs, scale, f"files in {lr_dir}" if lr_dir is not None else (spec or None), y_channel)

    @functools.cached_property
    def baseline(self) -> dict:
        """Mean ``{"bicubic_psnr", "bicubic_ssim"}`` of MATLAB bicubic upscaling on the pairs."""
        r = self(bicubic_upscale, "bicubic")
        return {"bicubic_psnr": r["psnr"], "bicubic_ssim": r["ssim"]}

    def __call__(self, upscale_fn: UpscaleFn, method: str = "model") -> dict:
        """Score ``upscale_fn`` on every pair.

        Returns ``{"psnr", "ssim", "images", "per_image": [{"image", "psnr", "ssim"}],
        "panel"}``: means over the pairs, and ``comparison_panel`` of the first pair
        (``(h, w, 3) uint8``).
        """
        per_image, panel = [], None
        for name, lr, hr in self.pairs:
            p, s, _, sr = score_image(hr, self.scale, upscale_fn, lr, self.y_channel)
            per_image.append({"image": name, "psnr": p, "ssim": s})
            if panel is None:
                panel = comparison_panel(lr, sr, hr, self.scale, method)
        return {"psnr": _mean(per_image, "psnr"), "ssim": _mean(per_image, "ssim"),
                "images": len(per_image), "per_image": per_image, "panel": panel}


def _to_stderr(message: str) -> None:
    from tqdm import tqdm  # noqa: PLC0415 - writes between progress bars

    tqdm.write(message, file=sys.stderr)


def evaluate_folder(folder: str | os.PathLike, scale: int, upscale_fn: UpscaleFn, method: str, *,
                    max_images: int | None = None, save_dir: str | os.PathLike | None = None,
                    overwrite: bool = False, progress: bool = True, warn: bool = True,
                    spec: str | None = None, lr_dir: str | os.PathLike | None = None,
                    y_channel: bool = True, dataset: str | None = None,
                    save_sr_dir: str | os.PathLike | None = None, step: int | None = None) -> dict:
    """Score every image of ``folder`` (HR images) at ``scale`` with ``upscale_fn``, one at a time.

    ``upscale_fn(lr (h, w, 3) uint8, scale) -> sr (h*scale, w*scale, 3) uint8``.
    Returns ``{"dataset", "scale", "method", "step", "degradation", "protocol", "psnr", "ssim",
    "images", "per_image": [{"image", "psnr", "ssim"}], "failed": [{"image", "error"}],
    "not_written": [paths]}``;
    ``psnr``/``ssim`` are the means over scored images (None when none was), on Y or on RGB
    (``y_channel=False``); ``protocol`` is ``protocol(...)``. Images that cannot be scored
    (unreadable, smaller than ``min_side(scale)``, no or a mismatched pre-made LR file) are
    reported on stderr and listed in ``failed`` (``warn=False``: listed only); the rest are
    still scored. Conversions (grayscale, CMYK, EXIF rotation...) are noted on stderr too
    (``warn=False``: not). LR: MATLAB bicubic, or made by ``spec`` (``lr_maker``), or the
    pre-made files of ``lr_dir`` (``find_lr``). ``save_dir`` writes comparison panels
    (``panel_path``), ``save_sr_dir`` the full SR images (``sr_path``, with ``step``), PNG;
    one that another process created meanwhile is left as it is, said on stderr and listed in
    ``not_written``.
    ``dataset`` names the set (default: the folder's name). Raises ``ImageError`` when the
    folder does not exist.
    """
    from tqdm import tqdm

    folder = Path(folder)
    dataset = dataset or folder.name
    paths = list_images(folder)
    if max_images is not None:
        paths = paths[:max_images]
    per_image, failed, not_written = [], [], []
    bar = tqdm(total=len(paths), desc=f"{dataset} x{scale} {method}", unit="img", file=sys.stderr,
               disable=None if progress else True, leave=False)
    report = _to_stderr if warn else None
    make_lr = lr_maker(scale, spec) if lr_dir is None else None
    for path, item in zip(paths, iter_pairs(paths, scale, make_lr, report, lr_dir)):
        bar.update()
        if isinstance(item, ImageError):
            if warn:
                _to_stderr(f"skipped: {item}")
            failed.append({"image": str(path), "error": str(item)})
            continue
        p, s, lr, sr = score_image(item.hr, scale, upscale_fn, item.lr, y_channel)
        per_image.append({"image": item.name, "psnr": p, "ssim": s})
        saves = []
        if save_dir is not None:
            saves.append((panel_path(save_dir, dataset, scale, item.name, method),
                          lambda: comparison_panel(lr, sr, item.hr, scale, method)))
        if save_sr_dir is not None:
            saves.append((sr_path(save_sr_dir, dataset, scale, item.name, method, step), lambda: sr))
        for target, image in saves:
            try:
                write_image(target, image(), overwrite=overwrite)
            except FileExistsError as e:  # another process wrote it since the caller's check
                _to_stderr(f"not written: {e}")
                not_written.append(str(target))
    bar.close()
    return {
        "dataset": dataset,
        "scale": int(scale),
        "method": method,
        "step": step,
        "degradation": f"files in {lr_dir}" if lr_dir is not None else (spec or f"bicubic({scale})"),
        "protocol": protocol(scale, y_channel=y_channel, lr_dir=lr_dir, spec=spec),
        "psnr": _mean(per_image, "psnr"),
        "ssim": _mean(per_image, "ssim"),
        "images": len(per_image),
        "per_image": per_image,
        "failed": failed,
        "not_written": not_written,
    }
