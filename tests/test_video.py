"""Video in, video out: ``upscale clip.mp4`` keeps the frames, their timestamps, the audio and
the stream's properties, and each frame is the image path's upscale up to the codec's loss.

The clips are made here with PyAV (moving text over a panning photograph, an AAC track);
tests that need PyAV skip without it, the missing-PyAV message is checked either way."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from edsr_jax import upscale
from edsr_jax.io import cli
from edsr_jax.io.video_files import have_av

ROOT = Path(__file__).resolve().parents[1]
needs_av = pytest.mark.skipif(not have_av(), reason="PyAV not installed (pip install 'edsr-jax[video]')")
W, H = 64, 48


def scene(n: int, w: int = W, h: int = H, rgba: bool = False) -> list[np.ndarray]:
    """``n`` frames: a photograph panning left and a word moving right across it."""
    from edsr_jax.data.samples import data_dir

    photo = Image.open(data_dir() / "chelsea.png").convert("RGB").resize((2 * w, h), Image.BICUBIC)
    font = ImageFont.load_default()
    frames = []
    for i in range(n):
        img = photo.crop((3 * i, 0, 3 * i + w, h))
        draw = ImageDraw.Draw(img)
        draw.text((2 + 4 * i, h // 3), "EDSR", fill=(255, 240, 40), font=font)
        array = np.asarray(img)
        if rgba:
            alpha = np.full((h, w), 255, np.uint8)
            alpha[:, : 8 + i] = 0
            array = np.dstack([array, alpha])
        frames.append(array)
    return frames


def make_clip(path: Path, n: int = 10, *, pix_fmt: str = "yuv420p", codec: str = "libx264",
              time_base=Fraction(1, 12800), steps=(512,), audio: bool = True, rotation: int | None = None,
              color_range: int | None = None, options=None, size: tuple[int, int] = (W, H)) -> Path:
    """A clip of ``scene(n)``: frame ``i`` lasts ``steps[i % len(steps)]`` ticks (variable
    rate when several), near-lossless video, an AAC mono track as long as the video."""
    import av

    with av.open(str(path), "w", options=options or {}) as out:
        video = out.add_stream(codec, rate=25)
        video.width, video.height, video.pix_fmt = *size, pix_fmt
        video.time_base = video.codec_context.time_base = time_base
        video.options = {"crf": "4"} if codec == "libx264" else {"crf": "10", "b": "0"}
        if color_range is not None:
            video.codec_context.color_range = color_range
        if rotation is not None:
            video.set_display_rotation(rotation)
        sound = out.add_stream("aac", rate=8000, layout="mono") if audio else None
        pts = 0
        for i, rgb in enumerate(scene(n, *size)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
                format=pix_fmt, dst_color_range=color_range or 1)
            frame.pts, frame.time_base = pts, time_base
            frame.duration = steps[i % len(steps)]
            pts += frame.duration
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            samples = int(pts * time_base * 8000)
            t = np.arange(samples) / 8000
            wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for k in range(0, samples, 1024):
                chunk = av.AudioFrame.from_ndarray(wave[None, k:k + 1024], format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 8000, k
                out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))
    return path


def probe(path: Path) -> dict:
    """Frames (RGB, or RGB48 for deep formats), their times in seconds, audio packet bytes,
    and the stream's properties."""
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        info = {"format": c.format.name, "duration": c.duration, "frames": [], "times": [], "durations": [],
                "audio": [bytes(p) for p in c.demux(audio=0) if p.size] if c.streams.audio else []}
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        for f in c.decode(v):
            deep = max(comp.bits for comp in f.format.components) > 8
            rng = 2 if f.color_range == 2 or f.format.name.startswith("yuvj") else 1
            info["frames"].append(f.to_ndarray(format="rgb48le" if deep else "rgb24", src_color_range=rng))
            info["times"].append(f.pts * v.time_base)
            info["durations"].append(f.duration * v.time_base)
            info.update(pix_fmt=f.format.name, color_range=int(f.color_range), rotation=f.rotation,
                        codec=v.codec_context.name, size=(f.width, f.height))
    return info


def stored(rgb: np.ndarray, pix_fmt: str, color_range: int = 1) -> np.ndarray:
    """``rgb`` (uint8, or uint16 for rgb48) as a lossless encoder in ``pix_fmt`` gives it back:
    the reference once the pixel format's own loss (4:2:0 chroma) is counted, so that only the
    codec's loss is left (4:2:0 alone costs about 41 dB on these small colourful frames)."""
    import av

    fmt = "rgb48le" if rgb.dtype == np.uint16 else "rgb24"
    frame = av.VideoFrame.from_ndarray(rgb, format=fmt).reformat(format=pix_fmt, dst_color_range=color_range)
    return frame.to_ndarray(format=fmt, src_color_range=color_range)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(peak ** 2 / mse)


def run(argv, capsys):
    code = cli.run(upscale.main, [str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def photo_x2():
    from edsr_jax.inference.infer import Upscaler

    return Upscaler.from_pretrained("photo-x2")


@needs_av
def test_mp4_keeps_frames_times_audio_rotation_and_matches_image_path(tmp_path, capsys, photo_x2):
    src = make_clip(tmp_path / "clip.mp4", 10, rotation=90)
    code, err = run([src, "--model", "photo-x2", "--crf", "8", "--out", tmp_path / "up"], capsys)
    assert code == 0, err
    assert "10 frame(s) upscaled x2 to 128x96 (h264 crf 8)" in err
    assert sorted(os.listdir(tmp_path / "up")) == ["clip.mp4"]  # nothing temporary left
    a, b = probe(src), probe(tmp_path / "up" / "clip.mp4")
    assert b["format"] == a["format"] and b["codec"] == "h264" and b["size"] == (2 * W, 2 * H)
    assert len(b["frames"]) == len(a["frames"]) == 10
    assert b["times"] == a["times"] and b["durations"] == a["durations"]
    assert b["duration"] == a["duration"]
    assert b["rotation"] == a["rotation"] == 90
    assert b["pix_fmt"] == "yuv420p"
    assert a["audio"] and b["audio"] == a["audio"]  # copied bit for bit, none dropped
    for lr, sr in zip(a["frames"], b["frames"]):
        assert psnr(sr, stored(photo_x2(lr), "yuv420p")) >= 40.0  # only the codec differs from the image path


@needs_av
def test_mkv_variable_rate_deep_full_range_kept(tmp_path, capsys, photo_x2):
    # 10-bit 4:4:4, full range, frames lasting 40 and 80 ms: all of it comes back as it was
    src = make_clip(tmp_path / "vfr.mkv", 8, pix_fmt="yuv444p10le", steps=(40, 80, 40, 120),
                    time_base=Fraction(1, 1000), color_range=2, audio=False)
    code, err = run([src, "--model", "photo-x2", "--crf", "4", "--out", tmp_path / "up"], capsys)
    assert code == 0, err
    a, b = probe(src), probe(tmp_path / "up" / "vfr.mkv")
    assert len(b["frames"]) == 8 and b["times"] == a["times"] == [Fraction(t, 1000) for t in
                                                                   (0, 40, 120, 160, 280, 320, 400, 440)]
    assert b["pix_fmt"] == "yuv444p10le" and b["color_range"] == 2
    for lr, sr in zip(a["frames"], b["frames"]):
        hr = photo_x2.predict(lr.astype(np.float32) / 257) * 257  # the model on the 16-bit values
        hr = np.clip(np.floor(hr + 0.5), 0, 65535).astype(np.uint16)
        assert psnr(sr, stored(hr, "yuv444p10le", 2), peak=65535.0) >= 40.0


@needs_av
def test_webm_gets_vp9_and_batches_match_single_frames(tmp_path, capsys, photo_x2):
    from edsr_jax.inference import video

    assert video.frames_per_call(photo_x2, H, W) > 1  # several frames per device call here
    src = make_clip(tmp_path / "clip.webm", 6, codec="libvpx-vp9", time_base=Fraction(1, 1000),
                    steps=(40,), audio=False)
    code, err = run([src, "--model", "photo-x2", "--crf", "4", "--out", tmp_path / "up"], capsys)
    assert code == 0, err
    a, b = probe(src), probe(tmp_path / "up" / "clip.webm")
    assert b["codec"] == "vp9" and b["format"].startswith("matroska") and len(b["frames"]) == 6
    for lr, sr in zip(a["frames"], b["frames"]):
        assert psnr(sr, stored(photo_x2(lr), "yuv420p")) >= 40.0


def test_animated_gif_and_apng(tmp_path, capsys, photo_x2):
    frames = scene(6)
    durations = [100, 200, 100, 300, 100, 150]
    Image.fromarray(frames[0]).save(tmp_path / "loop.gif", save_all=True, duration=durations, loop=0,
                                    append_images=[Image.fromarray(f) for f in frames[1:]])
    rgba = scene(4, rgba=True)
    Image.fromarray(rgba[0]).save(tmp_path / "anim.png", save_all=True, duration=[80, 120, 80, 40], loop=3,
                                  append_images=[Image.fromarray(f) for f in rgba[1:]])
    code, err = run([tmp_path / "loop.gif", tmp_path / "anim.png", "--model", "photo-x2",
                     "--out", tmp_path / "up"], capsys)
    assert code == 0, err
    with Image.open(tmp_path / "loop.gif") as lr, Image.open(tmp_path / "up" / "loop.gif") as sr:
        assert sr.n_frames == 6 and sr.size == (2 * W, 2 * H) and sr.info.get("loop") == 0
        for i in range(6):
            lr.seek(i)
            sr.seek(i)
            assert sr.info["duration"] == durations[i]
            expected = photo_x2(np.asarray(lr.convert("RGB")))
            assert psnr(np.asarray(sr.convert("RGB")), expected) >= 30.0  # a 256-colour palette per frame
    from edsr_jax.degradation.imresize import imresize

    with Image.open(tmp_path / "up" / "anim.png") as sr:  # APNG: lossless, so exactly the image path
        assert sr.n_frames == 4 and sr.info.get("loop") == 3
        for i, frame in enumerate(rgba):
            sr.seek(i)
            out = np.asarray(sr.convert("RGBA"))
            np.testing.assert_array_equal(out[..., :3], photo_x2(frame[..., :3]))
            np.testing.assert_array_equal(out[..., 3], imresize(frame[..., 3], 2))
            assert sr.info["duration"] == [80, 120, 80, 40][i]


def test_video_without_pyav_is_one_error_line(tmp_path, capsys, monkeypatch):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00" * 64)
    monkeypatch.setitem(sys.modules, "av", None)  # import av raises ImportError
    code, err = run([clip, "--out", tmp_path / "up"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: {clip}: reading and writing video needs PyAV: pip install 'edsr-jax[video]' (or: pip install av)"]
    assert not (tmp_path / "up").exists()


@needs_av
def test_codec_and_crf_refused_where_they_do_not_apply(tmp_path, capsys):
    clip = make_clip(tmp_path / "clip.webm", 2, codec="libvpx-vp9", time_base=Fraction(1, 1000), steps=(40,),
                     audio=False)
    Image.fromarray(scene(1)[0]).save(tmp_path / "still.png")
    for argv, message in [
            ([clip, "--codec", "h264"], "error: --codec h264: a .webm file holds vp9, av1 only"),
            ([clip, "--crf", "70"], "error: --crf 70: vp9 takes 0..63"),
            ([tmp_path / "still.png", "--crf", "20"], "error: --crf applies to video inputs")]:
        code, err = run([*argv, "--out", tmp_path / "up"], capsys)
        assert code == 2 and err.startswith(message), err
    assert not (tmp_path / "up").exists()


@needs_av
def test_truncated_and_unreadable_videos_are_named_with_the_frame(tmp_path, capsys):
    whole = make_clip(tmp_path / "whole.mp4", 30, options={"movflags": "+faststart"})
    data = whole.read_bytes()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cut.mp4").write_bytes(data[: int(len(data) * 0.8)])
    (tmp_path / "in" / "junk.mkv").write_bytes(b"not a video" * 20)
    code, err = run([tmp_path / "in" / "cut.mp4", tmp_path / "in" / "junk.mkv", "--model", "photo-x2",
                     "--out", tmp_path / "up"], capsys)
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 2, err
    cut, junk = lines
    # a damaged packet fails the decoder, or the data just stops: either way the frame is named
    assert re.search(r"cut\.mp4: (decoding failed at frame \d+ of 30 |the file ends after frame \d+ of the 30 )", cut)
    written = int(cut.split("; the ")[1].split(" frame(s)")[0])
    assert 0 < written < 30 and f"were upscaled and written to {tmp_path / 'up' / 'cut.mp4'}" in cut
    assert len(probe(tmp_path / "up" / "cut.mp4")["frames"]) == written  # not silently dropped
    assert "junk.mkv: not a readable video" in junk
    assert sorted(os.listdir(tmp_path / "up")) == ["cut.mp4"]


@needs_av
def test_existing_output_needs_overwrite(tmp_path, capsys):
    src = make_clip(tmp_path / "clip.mp4", 2, audio=False)
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "clip.mp4").write_bytes(b"user data")
    code, err = run([src, "--model", "photo-x2", "--out", tmp_path / "up"], capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: 1 output(s) exist already")
    assert (tmp_path / "up" / "clip.mp4").read_bytes() == b"user data"
    code, err = run([src, "--model", "photo-x2", "--out", tmp_path / "up", "--overwrite"], capsys)
    assert code == 0, err
    assert len(probe(tmp_path / "up" / "clip.mp4")["frames"]) == 2


@needs_av
@pytest.mark.slow
def test_sigterm_leaves_no_partial_file_and_says_how_far(tmp_path):
    src = make_clip(tmp_path / "long.mp4", 400, audio=False)
    out = tmp_path / "up"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "edsr_jax.upscale", str(src), "--model", "photo-x2",
                             "--out", str(out)], stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not (out.is_dir() and any(p.name.startswith(".tmp-") for p in out.iterdir())):
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith(f"terminated (SIGTERM): {src}: stopped after ") and " of 400 frames" in last
    assert f"{out / 'long.mp4'} was not written (no partial file is left)" in last
    assert list(out.iterdir()) == []


@needs_av
def test_decoder_error_mid_stream_keeps_the_frames_before_it(tmp_path, capsys, monkeypatch):
    import av

    from edsr_jax.io import video_files

    src = make_clip(tmp_path / "clip.mkv", 10, time_base=Fraction(1, 1000), steps=(40,))
    decode = video_files.VideoReader._frame

    def failing(self, frame):  # the decoder refuses the 7th frame's data
        if self._decoded == 6:
            raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
        return decode(self, frame)

    monkeypatch.setattr(video_files.VideoReader, "_frame", failing)
    code, err = run([src, "--model", "photo-x2", "--out", tmp_path / "up"], capsys)
    assert code == 1
    line = next(line for line in err.splitlines() if line.startswith("error:"))
    assert line == (f"error: {src}: decoding failed at frame 7 (Invalid data found when processing input); the 6 "
                    f"frame(s) before that point were upscaled and written to {tmp_path / 'up' / 'clip.mkv'}")
    out = probe(tmp_path / "up" / "clip.mkv")
    assert len(out["frames"]) == 6 and out["times"] == probe(src)["times"][:6]
    assert out["audio"]  # the sound up to that point is kept too


@needs_av
def test_odd_output_sides_are_written_in_444(tmp_path, capsys):
    # x3 of a 63x45 VP9 clip is 189x135: H.264 cannot subsample chroma of odd sides
    src = make_clip(tmp_path / "odd.mkv", 3, codec="libvpx-vp9", time_base=Fraction(1, 1000), steps=(40,),
                    audio=False, size=(63, 45))
    code, err = run([src, "--model", "photo-x3", "--out", tmp_path / "up"], capsys)
    assert code == 0, err
    assert f"note: {src}: 189x135 has an odd side, which libx264 cannot subsample: written as yuv444p" in err
    out = probe(tmp_path / "up" / "odd.mkv")
    assert out["size"] == (189, 135) and out["pix_fmt"] == "yuv444p" and len(out["frames"]) == 3


@needs_av
def test_avi_frames_come_out_in_order_at_the_same_rate(tmp_path, capsys, photo_x2):
    # AVI has no presentation times: frames are numbered at the stream's rate, in decoding order
    src = make_clip(tmp_path / "old.avi", 5, time_base=Fraction(1, 25), steps=(1,), audio=False)
    code, err = run([src, "--model", "photo-x2", "--crf", "8", "--out", tmp_path / "up"], capsys)
    assert code == 0 and "note:" not in err, err
    a, b = probe(src), probe(tmp_path / "up" / "old.avi")
    assert b["format"] == "avi" and len(b["frames"]) == 5
    for lr, sr in zip(a["frames"], b["frames"]):  # the same order: each frame matches its own upscale
        assert psnr(sr, stored(photo_x2(lr), "yuv420p")) >= 40.0
