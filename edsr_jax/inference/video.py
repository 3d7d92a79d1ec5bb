"""Upscale videos and animated images frame by frame, at the model's speed.

    python -m edsr_jax.upscale clip.mp4 --out up/        # -> up/clip.mp4, H.264, audio copied
    python -m edsr_jax.upscale film.mkv --codec h265 --crf 16 --out up/
    python -m edsr_jax.upscale loop.gif --out up/        # -> up/loop.gif, same frame durations

Three stages overlap: a reader thread decodes (``io/video_files.py`` through PyAV for mp4,
mkv, mov, webm, avi; ``io/animations.py`` through Pillow for animated GIF, WebP and PNG), the
calling thread runs the frames through the ``Upscaler`` in batches, a writer thread encodes
and muxes. Bounded queues between them hold a few batches, so memory stays the same for any
length. Frames of one size share one compiled program: as many per call as fit in one tile's
memory (``Upscaler``'s rule), and a frame too large for that goes through its tiles.

The output is written under a temporary name in the output folder and published when
complete (``outputs.save_with``: exclusive unless ``--overwrite``); Ctrl-C or SIGTERM remove
it and say how far the run got. A video that cannot be decoded to its end is named with the
frame where decoding failed: the frames before it are upscaled and written, and the message
says so (exit code 1).
"""

from __future__ import annotations

import glob
import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edsr_jax.io import cli
from edsr_jax.io.animations import FORMATS as ANIMATION_FORMATS, AnimationReader, AnimationWriter, is_animation
from edsr_jax.io.video_files import (Frame, VideoError, VideoReader, VideoWriter, choose_codec, is_video_file,
                                     require_av)

MOVING_SUFFIXES = (".mp4", ".m4v", ".mkv", ".mov", ".webm", ".avi", ".gif", ".apng")
MAX_BATCH = 16  # frames per device call at most, however small they are
_END = object()


def is_moving_name(path) -> bool:
    """True when the file name is a video's or an animation's (``MOVING_SUFFIXES``); animated
    PNG / WebP files are found by ``split_animated``."""
    return Path(path).suffix.lower() in MOVING_SUFFIXES


def split_items(items: Sequence[str]) -> tuple[list[str], list[Path]]:
    """``(other_items, moving_files)``: command-line items naming an existing video or GIF file,
    and the video / GIF files a glob pattern matches, are taken out (in order); the rest
    (images, folders, patterns that also match images) is left for the image path."""
    rest: list[str] = []
    moving: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_file() and is_moving_name(path):
            moving.append(path)
        elif not path.exists() and any(c in item for c in "*?["):
            matches = sorted(Path(p) for p in glob.glob(item) if Path(p).is_file())
            moving += [p for p in matches if is_moving_name(p)]
            if not matches or any(not is_moving_name(p) for p in matches):
                rest.append(item)
        else:
            rest.append(item)
    return rest, _unique(moving)


def split_animated(paths: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """``(stills, animations)``: PNG and WebP files of more than one frame are animations."""
    animated = [p for p in paths if is_animation(p)]
    return [p for p in paths if p not in animated], animated


def _unique(paths: list[Path]) -> list[Path]:
    seen, out = set(), []
    for p in paths:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            out.append(p)
    return out


def check_options(moving: Sequence[Path], *, codec: str | None, crf: int | None) -> None:
    """UsageError (one line) when a video input needs PyAV and it is missing, or ``--codec`` /
    ``--crf`` do not suit a video's container, or are given without any video input."""
    videos = [p for p in moving if is_video_file(p)]
    if (codec is not None or crf is not None) and not videos:
        option = "--codec" if codec is not None else "--crf"
        raise cli.UsageError(f"{option} applies to video inputs ({', '.join(MOVING_SUFFIXES[:6])}), and none is given")
    for path in videos:
        require_av(path)
        try:
            choose_codec(path.suffix, codec, crf)
        except ValueError as e:
            raise cli.UsageError(f"{e} (for {path})") from None


def check_clash(still_outputs: Sequence[Path], moving_outputs: Sequence[Path]) -> None:
    """UsageError when a still image and an animation would be written to the same file."""
    clash = sorted(set(still_outputs) & set(moving_outputs))
    if clash:
        raise cli.UsageError(f"two inputs would both be written to {clash[0]} (same name); "
                             "upscale them in separate runs or use --suffix")


def frames_per_call(upscaler, height: int, width: int) -> int:
    """Frames of ``height x width`` pixels sent to ``upscaler`` at once: as many as its whole-image
    grouping puts in one call (one tile's memory), at least 1 (a frame that is tiled), at most
    ``MAX_BATCH``."""
    from edsr_jax.inference.infer import bucket

    side = upscaler.tile + 2 * upscaler.overlap
    return max(1, min(MAX_BATCH, side * side // (bucket(height) * bucket(width))))


@dataclass
class Result:
    """What one file gave: ``frames`` written, ``seconds`` of wall time, ``size`` (W, H) out."""
    frames: int
    seconds: float
    size: tuple[int, int]
    codec: str


class _Progress:
    """Counters shared by the stages (for the message after an interruption)."""

    def __init__(self):
        self.decoded = self.upscaled = self.written = 0


def upscale_files(upscaler, sources: Sequence[Path], outputs: Sequence[Path], *, codec: str | None = None,
                  crf: int | None = None, quality: int | None = None, overwrite: bool = False,
                  resize_alpha: Callable | None = None, pick: Callable[[Path], object] | None = None) -> int:
    """Upscale each video / animation in ``sources`` into the matching path of ``outputs``,
    reporting on stderr (a progress bar in frames, one summary line per file, ``error: ...``
    for a file that failed). Returns how many failed; KeyboardInterrupt passes through with a
    ``hint`` saying how far the file in hand got. ``pick(src)``, when given, returns the
    ``Upscaler`` for each file instead of ``upscaler`` (``--model auto``: chosen from
    ``sample_frames``); a VideoError it raises fails that file like any other."""
    from tqdm import tqdm

    failed = 0
    for src, dst in zip(sources, outputs):
        notes: list[str] = []
        try:
            if pick is not None:
                upscaler = pick(src)
            result = upscale_file(upscaler, src, dst, codec=codec, crf=crf, quality=quality,
                                  overwrite=overwrite, resize_alpha=resize_alpha, notes=notes)
        except VideoError as e:
            tqdm.write(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        except FileExistsError as e:  # outputs.TakenMeanwhile, or an output that appeared since the check
            tqdm.write(f"not written: {e}", file=sys.stderr)
            failed += 1
            continue
        finally:
            for note in notes:
                tqdm.write(f"note: {note}", file=sys.stderr)
        w, h = result.size
        print(f"{src}: {result.frames} frame(s) upscaled x{upscaler.scale} to {w}x{h} ({result.codec}) into "
              f"{dst} in {result.seconds:.1f} s ({result.frames / max(result.seconds, 1e-9):.2f} frames/s)",
              file=sys.stderr)
    return failed


DIAGNOSED_FRAMES = 3  # frames of a video ``--model auto`` diagnoses: the first, and two spread over
DIAGNOSED_SPAN = 48   # the first this many frames (decoding further to sample the whole clip would
                      # double the decoding time of a long video for one choice)


def sample_frames(src: Path, count: int = DIAGNOSED_FRAMES, span: int = DIAGNOSED_SPAN) -> list[np.ndarray]:
    """Up to ``count`` frames of video or animation ``src``, evenly spread over its first
    ``span`` frames (fewer when it is shorter): ``(H, W, 3)`` uint8, or uint16 for a deep video.
    VideoError naming the file when it cannot be opened or no frame decodes."""
    reader = VideoReader(src) if is_video_file(src) else AnimationReader(src)
    total = min(span, reader.expected or span)
    wanted = sorted({round(k * (total - 1) / max(count - 1, 1)) for k in range(count)})
    frames: list[np.ndarray] = []
    items = reader.items()
    try:
        for item in items:
            if isinstance(item, Frame):
                if item.index in wanted:
                    frames.append(item.pixels)
                if item.index >= wanted[-1]:
                    break
    except VideoError:
        if not frames:
            raise
    finally:
        items.close()
        reader.close()
    return frames


def upscale_file(upscaler, src: Path, dst: Path, *, codec: str | None = None, crf: int | None = None,
                 quality: int | None = None, overwrite: bool = False, resize_alpha: Callable | None = None,
                 notes: list[str] | None = None, progress: bool = True) -> Result:
    """Upscale the video or animation ``src`` into ``dst`` (the same kind of file); see the
    module docstring. VideoError naming the file (and the frame) when it cannot be read, or
    when decoding stops early: then the frames before it are written to ``dst`` first and the
    message says how many. FileExistsError when ``dst`` exists (``overwrite`` False)."""
    from edsr_jax.io import outputs
    from tqdm import tqdm

    notes = notes if notes is not None else []
    src, dst = Path(src), Path(dst)
    if (dst.exists() or dst.is_symlink()) and not overwrite:
        raise FileExistsError(f"{dst}: exists (pass --overwrite to replace it)")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise outputs.write_error(dst.parent, e) from None
    video = is_video_file(src)
    if video:
        codec, encoder, crf = choose_codec(dst.suffix, codec, crf)
    reader = VideoReader(src, notes) if video else AnimationReader(src, notes)
    label = f"{codec} crf {crf}" if video else reader.format
    s = upscaler.scale
    size = (reader.width * s, reader.height * s)
    count = _Progress()
    failure: list[VideoError] = []
    stages: list[_Pipeline] = []
    start = time.perf_counter()
    bar = tqdm(total=reader.expected, desc=f"{upscaler.name} {src.name}", unit="frame", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)

    def fill(tmp: str) -> None:
        if video:
            writer = VideoWriter(tmp, reader, s, encoder, crf, name=dst, notes=notes)
        else:
            writer = AnimationWriter(tmp, reader.format, reader.loop, quality)
        pipeline = _Pipeline(upscaler, reader, writer, bar, count, resize_alpha)
        stages.append(pipeline)
        try:
            error = pipeline.run(frames_per_call(upscaler, reader.height, reader.width))
            if error is not None:
                if count.written == 0:
                    raise VideoError(f"{error}; nothing was written", 0)
                failure.append(error)
            writer.finish()
            if not failure:
                bar.total = count.written  # the header's count or the duration's estimate was off
                bar.refresh()
        except BaseException:
            if pipeline.writer_done:
                writer.close()
            raise

    try:
        try:
            outputs.save_with(dst, fill, overwrite=overwrite)
        finally:
            bar.close()
            if not stages or stages[0].reader_done:  # else its thread still has the file
                reader.close()
    except KeyboardInterrupt as e:
        e.hint = (f"{src}: stopped after {count.written} of {reader.expected or '?'} frames "
                  f"({count.upscaled} upscaled); {dst} was not written (no partial file is left)")
        raise
    if failure:
        raise VideoError(f"{failure[0]}; the {count.written} frame(s) before that point were upscaled and written "
                         f"to {dst}", count.written)
    return Result(count.written, time.perf_counter() - start, size, label)


class _Stopped(Exception):
    """Another stage stopped the pipeline."""


class _Failure:
    """An exception carried from the reader thread to the model stage."""

    def __init__(self, error: BaseException):
        self.error = error


class _Pipeline:
    """reader thread -> (bounded queue) -> model on the calling thread -> (bounded queue) ->
    writer thread."""

    def __init__(self, upscaler, reader, writer, bar, count: _Progress, resize_alpha):
        self.upscaler, self.reader, self.writer, self.bar, self.count = upscaler, reader, writer, bar, count
        self.resize_alpha = resize_alpha or _nearest
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.writer_done = self.reader_done = True

    def run(self, batch: int) -> VideoError | None:
        """Upscale every frame; returns the reader's VideoError when decoding stopped early
        (the frames before it are written), raises any other stage's error."""
        self.decoded: queue.Queue = queue.Queue(maxsize=2 * batch)
        self.upscaled: queue.Queue = queue.Queue(maxsize=2 * batch)
        threads = [threading.Thread(target=self._read, name="video-reader", daemon=True),
                   threading.Thread(target=self._write, name="video-writer", daemon=True)]
        self.writer_done = self.reader_done = False
        for t in threads:
            t.start()
        try:
            failure = self._model(batch)
            self._put(self.upscaled, _END)
            while threads[1].is_alive():
                threads[1].join(0.1)
                self._check()
            self._check()
            return failure
        finally:
            self.stop.set()
            for t in threads:
                t.join(10)
            self.reader_done = not threads[0].is_alive()
            self.writer_done = not threads[1].is_alive()

    def _model(self, batch: int) -> VideoError | None:
        pending: list[Frame] = []
        failure = None
        while True:
            item = self._get(self.decoded)
            if isinstance(item, Frame):
                pending.append(item)
                if len(pending) == batch:
                    self._upscale(pending)
                    pending = []
            elif item is _END:
                break
            elif isinstance(item, _Failure):
                if not isinstance(item.error, VideoError):
                    raise item.error
                failure = item.error
                break
            else:  # a packet of a copied stream
                self._put(self.upscaled, item)
        if pending:
            self._upscale(pending)
        return failure

    def _upscale(self, frames: list[Frame]) -> None:
        x = np.stack([f.pixels for f in frames])
        if x.dtype == np.uint16:  # 10/12-bit sources: the model on the float values, no 8-bit rounding
            y = self.upscaler.predict(x.astype(np.float32) / np.float32(257.0))
            hr = np.clip(np.floor(y.astype(np.float64) * 257.0 + 0.5), 0, 65535).astype(np.uint16)
        else:
            hr = self.upscaler(x)
        s = self.upscaler.scale
        for f, image in zip(frames, hr):
            alpha = None if f.alpha is None else self.resize_alpha(f.alpha, s)
            self._put(self.upscaled, (f, image, alpha))
            self.count.upscaled += 1

    def _read(self) -> None:
        items = self.reader.items()
        try:
            for item in items:
                if isinstance(item, Frame):
                    self.count.decoded += 1
                if not self._offer(self.decoded, item):
                    return
            self._offer(self.decoded, _END)
        except BaseException as e:  # noqa: BLE001 - handed to the model stage
            self._offer(self.decoded, _Failure(e))
        finally:
            items.close()

    def _write(self) -> None:
        try:
            while True:
                item = self._get(self.upscaled)
                if item is _END:
                    return
                if isinstance(item, tuple):
                    frame, image, alpha = item
                    self.writer.frame(image, frame, alpha)
                    self.count.written += 1
                    self.bar.update(1)
                else:
                    self.writer.packet(item)
        except _Stopped:
            pass
        except BaseException as e:  # noqa: BLE001 - raised again on the calling thread
            self.errors.append(e)
            self.stop.set()

    def _check(self) -> None:
        if self.errors:
            raise self.errors[0]

    def _offer(self, q: queue.Queue, item) -> bool:
        """Put ``item`` unless the pipeline stops first (False)."""
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def _put(self, q: queue.Queue, item) -> None:
        if not self._offer(q, item):
            self._check()
            raise _Stopped()

    def _get(self, q: queue.Queue):
        while True:
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                if self.stop.is_set():
                    if threading.current_thread() is threading.main_thread():
                        self._check()
                    raise _Stopped() from None


def _nearest(alpha: np.ndarray, scale: int) -> np.ndarray:
    """``alpha`` ``(H, W)`` repeated ``scale`` times along both axes."""
    return np.repeat(np.repeat(alpha, scale, axis=0), scale, axis=1)


__all__ = ["MOVING_SUFFIXES", "ANIMATION_FORMATS", "split_items", "split_animated", "check_options",
           "check_clash", "frames_per_call", "upscale_files", "upscale_file", "Result"]
