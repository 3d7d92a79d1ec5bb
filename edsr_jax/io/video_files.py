"""Video files through PyAV (FFmpeg's libraries): frames out of a container, frames into one.

``VideoReader`` opens a file, decodes its first frame at once (so a writer can copy what only
a decoded frame tells: the rotation, the colour range) and then yields, in file order, the
video frames as RGB arrays (``Frame``: 8-bit, or 16-bit for 10/12-bit sources) and the
packets of the streams copied without re-encoding (audio, subtitles, attachments).

``VideoWriter`` writes frames ``scale`` times larger into a new file of the same container
kind: each frame keeps its timestamp and duration in the source's time base (variable frame
rates stay variable), the stream keeps the rotation (display matrix), sample aspect ratio,
colour range, primaries, transfer and matrix, and the source's pixel format where the
encoder takes it; the copied streams' packets go in bit for bit.

PyAV is an optional dependency (``pip install 'edsr-jax[video]'``); ``require_av`` says so in
one line. Decoding problems raise ``VideoError`` naming the file and the frame.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mkv", ".mov", ".webm", ".avi")
INSTALL = "pip install 'edsr-jax[video]' (or: pip install av)"

# --codec NAME: the encoders tried in order; the containers that hold each; the CRF range and
# default (high quality: a restored film is not the place to save bits).
ENCODERS = {"h264": ("libx264",), "h265": ("libx265",), "vp9": ("libvpx-vp9",),
            "av1": ("libsvtav1", "libaom-av1")}
CONTAINER_CODECS = {".mp4": ("h264", "h265", "vp9", "av1"), ".m4v": ("h264", "h265"),
                    ".mov": ("h264", "h265"), ".mkv": ("h264", "h265", "vp9", "av1"),
                    ".webm": ("vp9", "av1"), ".avi": ("h264",)}
CRF = {"h264": (0, 51, 18), "h265": (0, 51, 20), "vp9": (0, 63, 24), "av1": (0, 63, 24)}
# Copied without re-encoding; other streams (data, a second video) are left out with a note.
COPIED_TYPES = ("audio", "subtitle", "attachment")
# Per-stream statistics tags (Matroska) that would be wrong for the re-encoded video.
_STALE_TAGS = ("DURATION", "NUMBER_OF_FRAMES", "NUMBER_OF_BYTES", "BPS", "ENCODER", "_STATISTICS_WRITING_APP",
               "_STATISTICS_WRITING_DATE_UTC", "_STATISTICS_TAGS", "encoder")


class VideoError(Exception):
    """A video that cannot be read or written further; the message names the file (and the
    frame). ``frames`` (when set): how many frames were decoded before the failure."""

    def __init__(self, message: str, frames: int | None = None):
        super().__init__(message)
        self.frames = frames


def is_video_file(path: str | os.PathLike) -> bool:
    """True when the file name has one of ``VIDEO_SUFFIXES``."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def have_av() -> bool:
    """Whether PyAV can be imported here."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def require_av(path: str | os.PathLike) -> None:
    """UsageError naming ``path`` and what to install when PyAV is missing."""
    if not have_av():
        from edsr_jax.io.cli import UsageError

        raise UsageError(f"{path}: reading and writing video needs PyAV: {INSTALL}")


def choose_codec(suffix: str, codec: str | None, crf: int | None) -> tuple[str, str, int]:
    """``(codec, encoder, crf)`` for an output with file suffix ``suffix``: ``codec`` (a key of
    ``ENCODERS``; None: h264, or vp9 for .webm) and its first encoder this PyAV has; ``crf``
    checked against the codec's range (None: its default). ValueError naming ``--codec`` /
    ``--crf`` otherwise."""
    import av

    suffix = suffix.lower()
    allowed = CONTAINER_CODECS[suffix]
    codec = codec or allowed[0]
    if codec not in ENCODERS:
        raise ValueError(f"--codec {codec}: choose one of {', '.join(ENCODERS)}")
    if codec not in allowed:
        raise ValueError(f"--codec {codec}: a {suffix} file holds {', '.join(allowed)} only")
    encoder = next((e for e in ENCODERS[codec] if e in av.codecs_available), None)
    if encoder is None:
        raise ValueError(f"--codec {codec}: this PyAV build has no {' or '.join(ENCODERS[codec])} encoder")
    low, high, default = CRF[codec]
    if crf is not None and not low <= crf <= high:
        raise ValueError(f"--crf {crf}: {codec} takes {low}..{high} (lower is better quality)")
    return codec, encoder, default if crf is None else int(crf)


@dataclass
class Frame:
    """One decoded frame: ``pixels`` ``(H, W, 3)`` uint8 RGB, or uint16 (0..65535) when the
    source has more than 8 bits; ``index`` from 0; ``pts`` / ``duration`` in the stream's
    time base; ``alpha`` ``(H, W)`` uint8 or None (animations only)."""
    index: int
    pixels: np.ndarray
    pts: int
    duration: int
    alpha: np.ndarray | None = None


def _reason(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e) or e.__class__.__name__
    return text.split(": '")[0].rstrip(".")


def _full_range(fmt_name: str, color_range: int) -> bool:
    return fmt_name.startswith("yuvj") or color_range == 2  # AVCOL_RANGE_JPEG


class VideoReader:
    """The frames and copied packets of one video file, in file order (``items``).

    Opening decodes the first frame; VideoError (naming the file) when the file cannot be
    opened, has no video stream or no decodable frame. Attributes: ``width``, ``height``,
    ``deep`` (more than 8 bits per sample), ``pix_fmt``, ``time_base``, ``rate`` (average
    frames/s or None), ``expected`` (frames the header lists or the duration implies, or
    None), ``display_matrix`` (9 ints or None), ``copied`` (the input streams whose packets
    ``items`` yields).
    """

    def __init__(self, path: str | os.PathLike, notes: list[str] | None = None):
        import av

        self.path = Path(path)
        self._notes = notes if notes is not None else []
        try:
            self.container = av.open(str(self.path))
        except (av.FFmpegError, OSError, ValueError) as e:
            raise VideoError(f"{self.path}: not a readable video ({_reason(e)})", 0) from None
        streams = [s for s in self.container.streams.video
                   if not s.disposition & av.stream.Disposition.attached_pic]
        if not streams:
            self.container.close()
            raise VideoError(f"{self.path}: has no video stream", 0)
        self.stream = streams[0]
        self.stream.thread_type = "AUTO"
        self.copied = [s for s in self.container.streams if s.type in COPIED_TYPES]
        for s in self.container.streams:
            if s is not self.stream and s not in self.copied:
                self._notes.append(f"{self.path}: stream #{s.index} ({s.type}) is not copied to the output")
        self.time_base = self.stream.time_base
        self.rate = self.stream.average_rate or self.stream.guessed_rate
        self.expected = self.stream.frames or None
        if self.expected is None and self.container.duration and self.rate:
            self.expected = round(self.container.duration / 1e6 * self.rate) or None
        self._decoded = 0
        self._last_pts: int | None = None
        self._last_end = 0.0  # seconds: where the demuxed streams have got to
        self._said_pts = False
        # AVI stores no presentation times, only frames in order at a fixed rate: the demuxer's
        # guesses come out of order after B-frame reordering, so frames are numbered instead.
        self._numbered = self.container.format.name == "avi"
        self._demux = self.container.demux(self.stream, *self.copied)
        self._held: list = []  # packets demuxed before the first frame, given out by items()
        self._first = self._first_frame()
        f = self._first
        self.width, self.height = f.width, f.height
        self.pix_fmt = f.format.name
        self.deep = max(c.bits for c in f.format.components) > 8
        self.full_range = _full_range(self.pix_fmt, int(f.color_range))
        self.color_range = int(f.color_range)  # the tag: 0 unspecified, 1 limited (tv), 2 full (pc)
        self.color = {name: int(getattr(f, name)) for name in ("color_primaries", "color_trc", "colorspace")}
        self.sample_aspect_ratio = self.stream.sample_aspect_ratio
        self.metadata = dict(self.container.metadata)
        self.stream_metadata = {k: v for k, v in self.stream.metadata.items() if k not in _STALE_TAGS}
        matrix = _side_data(f, "DISPLAYMATRIX")
        self.display_matrix = struct.unpack("<9i", matrix) if matrix and len(matrix) == 36 else None
        if f.interlaced_frame:
            self._notes.append(f"{self.path}: interlaced video: each frame is upscaled as one picture "
                               "(deinterlace it first for the best result)")
        if any(c.is_alpha for c in f.format.components):
            self._notes.append(f"{self.path}: {self.pix_fmt} has an alpha channel, which is not kept")

    def _first_frame(self):
        import av

        try:
            for packet in self._demux:
                self._track(packet)
                if packet.stream is self.stream:
                    frames = packet.decode()
                    if frames:
                        self._pending = frames[1:]
                        return frames[0]
                elif packet.dts is not None:
                    self._held.append(packet)
        except (av.FFmpegError, ValueError, OSError) as e:
            self.container.close()
            raise VideoError(f"{self.path}: no frame could be decoded ({_reason(e)})", 0) from None
        self.container.close()
        raise VideoError(f"{self.path}: no frame could be decoded (no video data)", 0)

    def _track(self, packet) -> None:
        if packet.pts is not None and packet.time_base is not None:
            end = (packet.pts + (packet.duration or 0)) * packet.time_base
            self._last_end = max(self._last_end, float(end))

    def items(self):
        """Yield ``Frame`` objects and copied-stream packets (PyAV ``Packet``) in file order,
        until the end; VideoError naming the frame where decoding failed (``frames``: how
        many were decoded before it), or where a truncated file ends before its header's
        frame count or duration. Closes the file at the end."""
        import av

        try:
            yield from self._held
            self._held = []
            yield self._frame(self._first)
            for f in self._pending:
                yield self._frame(f)
            failed = None
            try:
                for packet in self._demux:
                    self._track(packet)
                    if packet.stream is self.stream:
                        for f in packet.decode():
                            yield self._frame(f)
                    elif packet.dts is not None:
                        yield packet
            except (av.FFmpegError, ValueError, OSError) as e:
                failed = _reason(e)
            if failed is not None:
                raise VideoError(f"{self.path}: decoding failed at frame {self._decoded + 1}"
                                 f"{self._of()} ({failed})", self._decoded)
            self._check_complete()
        finally:
            self.container.close()

    def _of(self) -> str:
        return f" of {self.stream.frames}" if self.stream.frames else ""

    def _check_complete(self) -> None:
        """VideoError when the frames end short of what the header promises (a truncated file)."""
        n = self._decoded
        if self.stream.frames and n < self.stream.frames:
            raise VideoError(f"{self.path}: the file ends after frame {n} of the {self.stream.frames} its header "
                             "lists (truncated?)", n)
        tb = self.time_base
        if self.stream.duration and self._last_pts is not None:
            stated = float((self.stream.start_time or 0) * tb + self.stream.duration * tb)
            reached = float((self._last_pts + self._last_duration) * tb)
        elif self.container.duration:
            stated = (self.container.start_time or 0) / 1e6 + self.container.duration / 1e6
            reached = self._last_end
        else:
            return
        frame = float(1 / self.rate) if self.rate else 0.04
        if reached < stated - max(2 * frame, 0.1):
            raise VideoError(f"{self.path}: the file ends after frame {n}, at {reached:.2f} s, before the "
                             f"{stated:.2f} s its header states (truncated?)", n)

    def _frame(self, f) -> Frame:
        """The RGB pixels and timing of decoded frame ``f``; a size change mid-stream is a
        VideoError; missing or non-increasing timestamps are made increasing (with a note)."""
        from av.video.reformatter import ColorRange

        if (f.width, f.height) != (self.width, self.height):
            raise VideoError(f"{self.path}: frame {self._decoded + 1} is {f.width}x{f.height} after "
                             f"{self.width}x{self.height} frames; a size change mid-stream is not supported",
                             self._decoded)
        rng = ColorRange.JPEG if _full_range(f.format.name, int(f.color_range)) else ColorRange.MPEG
        pixels = f.to_ndarray(format="rgb48le" if self.deep else "rgb24", src_color_range=rng)
        step = int(round(1 / (self.rate * self.time_base))) if self.rate else 1
        duration = int(f.duration or 0) or step
        if self._numbered:
            pts = self._decoded * step
        elif f.pts is not None:
            pts = int(f.pts)
        else:
            pts = 0 if self._last_pts is None else self._last_pts + self._last_duration
        if self._last_pts is not None and pts <= self._last_pts:
            if not self._said_pts:
                self._notes.append(f"{self.path}: frame {self._decoded + 1} has a timestamp not after the "
                                   "previous one; such frames get the next free timestamp")
                self._said_pts = True
            pts = self._last_pts + 1
        self._last_pts, self._last_duration = pts, duration
        frame = Frame(self._decoded, pixels, pts, duration)
        self._decoded += 1
        return frame

    def close(self) -> None:
        """Close the file (``items`` closes it at its end)."""
        self.container.close()


def _side_data(frame, name: str) -> bytes | None:
    from av.sidedata.sidedata import Type

    try:
        data = frame.side_data.get(getattr(Type, name))
    except (KeyError, AttributeError):
        return None
    return None if data is None else bytes(data)


class VideoWriter:
    """A new video file at ``path`` (a temporary name with the final suffix) with ``reader``'s
    frames ``scale`` times larger, encoded with ``encoder`` at ``crf``, and ``reader.copied``
    streams copied. ``frame``/``packet`` add to it, ``finish`` completes it, ``close``
    abandons it. VideoError (naming ``name``, the final file) when the encoder refuses."""

    def __init__(self, path: str | os.PathLike, reader: VideoReader, scale: int, encoder: str, crf: int,
                 *, name: str | os.PathLike | None = None, notes: list[str] | None = None):
        import av

        self.name = Path(name or path)
        notes = notes if notes is not None else []
        self.deep = reader.deep
        try:
            self.container = av.open(str(path), "w")
        except (av.FFmpegError, ValueError, OSError) as e:
            raise VideoError(f"{self.name}: cannot be written ({_reason(e)})") from None
        try:
            self.container.metadata.update(reader.metadata)
            self.stream = self._video_stream(reader, scale, encoder, crf, notes)
            self.copies = {}
            for s in reader.copied:
                try:
                    out = self.container.add_stream_from_template(s)
                except (ValueError, av.FFmpegError) as e:
                    notes.append(f"{reader.path}: stream #{s.index} ({s.type}) cannot go into "
                                 f"{self.name.suffix} ({_reason(e)}); not copied")
                    continue
                out.metadata.update(s.metadata)
                out.disposition = s.disposition
                self.copies[s.index] = out
        except (av.FFmpegError, ValueError) as e:
            self.container.close()
            raise VideoError(f"{self.name}: cannot be written ({_reason(e)})") from None
        except BaseException:
            self.container.close()
            raise

    def _video_stream(self, reader: VideoReader, scale: int, encoder: str, crf: int, notes: list[str]):
        import av
        from av.video.reformatter import ColorRange

        stream = self.container.add_stream(encoder, rate=reader.rate or 25)
        stream.width, stream.height = reader.width * scale, reader.height * scale
        formats = [f.name for f in (av.codec.Codec(encoder, "w").video_formats or [])]
        self.pix_fmt = _output_format(reader.pix_fmt, reader.deep, formats)
        why = f"{encoder} does not take {reader.pix_fmt}"
        if (stream.width % 2 or stream.height % 2) and _subsampled(self.pix_fmt):
            full = _output_format(self.pix_fmt.replace("420", "444").replace("422", "444"), reader.deep, formats)
            if not _subsampled(full):  # odd sides (x3 of an odd size): no whole chroma samples
                self.pix_fmt = full
                why = f"{stream.width}x{stream.height} has an odd side, which {encoder} cannot subsample"
        if self.pix_fmt != reader.pix_fmt and self.pix_fmt != reader.pix_fmt.replace("yuvj", "yuv"):
            notes.append(f"{reader.path}: {why}: written as {self.pix_fmt}")
        stream.pix_fmt = self.pix_fmt
        stream.time_base = reader.time_base
        stream.codec_context.time_base = reader.time_base
        self.range = ColorRange.JPEG if reader.full_range else ColorRange.MPEG
        stream.codec_context.color_range = 2 if reader.full_range else reader.color_range
        for key, value in reader.color.items():
            setattr(stream.codec_context, key, value)
        if reader.sample_aspect_ratio:
            stream.codec_context.sample_aspect_ratio = reader.sample_aspect_ratio
        options = {"crf": str(crf)}
        if encoder == "libvpx-vp9":
            options.update({"b": "0", "row-mt": "1"})
        if encoder == "libx265":
            options["x265-params"] = "log-level=error"
        stream.options = options
        stream.metadata.update(reader.stream_metadata)
        if reader.display_matrix is not None:
            stream.set_display_matrix(reader.display_matrix)
        self.colorspace = reader.color["colorspace"]
        self.time_base = reader.time_base
        return stream

    def frame(self, pixels: np.ndarray, source: Frame, alpha: np.ndarray | None = None) -> None:
        """Encode ``pixels`` ``(H*s, W*s, 3)`` (uint8; uint16 for a deep source) with
        ``source``'s timestamp and duration (``alpha``: unused, video frames carry none)."""
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb48le" if self.deep else "rgb24")
        space = self.colorspace if self.colorspace in _SWS_SPACES else None
        frame = frame.reformat(format=self.pix_fmt, dst_colorspace=space, dst_color_range=self.range)
        frame.pts, frame.duration, frame.time_base = source.pts, source.duration, self.time_base
        try:
            packets = self.stream.encode(frame)
        except (av.FFmpegError, ValueError) as e:
            raise VideoError(f"{self.name}: the encoder refused frame {source.index + 1} ({_reason(e)})") from None
        self._mux(packets)

    def packet(self, packet) -> None:
        """Copy one packet of a copied stream as it is."""
        out = self.copies.get(packet.stream.index)
        if out is not None:
            packet.stream = out
            self.container.mux(packet)

    def _mux(self, packets) -> None:
        import av

        try:
            self.container.mux(packets)
        except (av.FFmpegError, ValueError) as e:
            raise VideoError(f"{self.name}: could not write ({_reason(e)})") from None

    def finish(self) -> None:
        """Flush the encoder, write the trailer, close and fsync the file."""
        import av

        try:
            self._mux(self.stream.encode(None))
            self.container.close()
        except av.FFmpegError as e:
            raise VideoError(f"{self.name}: could not finish ({_reason(e)})") from None
        fd = os.open(self.container.name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Abandon the file (the caller removes it)."""
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 - an abandoned file's trailer does not matter
            pass


# swscale's matrices (AVCOL_SPC_*: BT709, FCC, BT470BG, SMPTE170M, SMPTE240M, BT2020_NCL)
_SWS_SPACES = (1, 4, 5, 6, 7, 9)


def _subsampled(pix_fmt: str) -> bool:
    """Whether ``pix_fmt`` stores chroma at less than full resolution (4:2:0, 4:2:2)."""
    import av

    fmt = av.VideoFormat(pix_fmt)
    return fmt.chroma_width(16) < 16 or fmt.chroma_height(16) < 16


def _output_format(source: str, deep: bool, formats: list[str]) -> str:
    """The source's pixel format where the encoder takes it (a ``yuvj`` one as its ``yuv``
    twin, full range kept as a tag), else 10-bit 4:2:0 for a deep source where possible, else
    8-bit 4:2:0."""
    for candidate in (source, source.replace("yuvj", "yuv")):
        if candidate in formats:
            return candidate
    for candidate in (["yuv420p10le"] if deep else []) + ["yuv420p"]:
        if candidate in formats:
            return candidate
    return formats[0]

