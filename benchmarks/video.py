"""Video upscaling speed: the video pipeline beside the image path and a PyTorch frame loop.

    python benchmarks/video.py                        # 640x360 -> 1280x720 x2, EDSR-baseline, 4 frames
    python benchmarks/video.py --frames 8 --size 320x180 --json video.json

One short clip (a photograph panning under moving text, H.264 with an AAC track, made here
with PyAV), three ways, side by side in one run:

- **video**: ``inference.video.upscale_file``, what ``python -m edsr_jax.upscale clip.mp4``
  runs: decoding, the model (frames in batches, tiles for frames larger than one tile) and
  H.264 encoding (crf 18) overlap in three threads; the audio is copied.
- **image path**: the same frames, decoded before the clock starts, through the same
  ``Upscaler`` one call per frame: the model alone, nothing decoded or encoded. ``video /
  image - 1`` is the pipeline's overhead.
- **PyTorch loop**: in the manner of EDSR-PyTorch's ``videotester.py``: read one frame, make a
  float tensor, run the PyTorch EDSR on the whole frame, quantize, write the frame, then the
  next; one thread of control, nothing overlapped. ``videotester.py`` reads and writes with
  OpenCV, which is not installed here: PyAV does both (libx264 crf 18, as the video path).

The JAX paths run the built-in ``photo-x2`` (EDSR-baseline x2, compiled before the clock
starts); PyTorch the same architecture with random weights (speed does not depend on them),
``torch.set_num_threads(os.cpu_count())``.

Then the accelerator dry-run's compiler estimates (``benchmarks/accelerators.py``, recorded in
``results/accelerators/gpu.json``: estimated milliseconds per Upscaler tile on one H100 and
H200) as frames/s for 1080p -> 4K (x2) and 540p -> 4K (x4) in bfloat16: tiles per frame times
the estimate per tile. Estimates from compiled programs, not measurements.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_size(text: str) -> tuple[int, int]:
    """``"640x360"`` -> ``(height, width)``."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected WIDTHxHEIGHT, e.g. 640x360") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"size {text!r}: at least 16x16")
    return h, w


def make_clip(path: Path, frames: int, h: int, w: int) -> Path:
    """An H.264 clip (yuv420p, 25 frames/s) of a photograph panning under moving text, with
    an AAC track as long as it."""
    import av
    from PIL import Image, ImageDraw, ImageFont

    from edsr_jax.data.samples import data_dir

    photo = Image.open(data_dir() / "astronaut.png").convert("RGB").resize((w + 8 * frames, h), Image.BICUBIC)
    font = ImageFont.load_default(size=max(10, h // 12))
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        video.options = {"crf": "18"}
        sound = out.add_stream("aac", rate=48000, layout="stereo")
        for i in range(frames):
            img = photo.crop((8 * i, 0, 8 * i + w, h))
            ImageDraw.Draw(img).text((10 + 12 * i, h // 2), "restored footage", fill=(255, 240, 40), font=font)
            frame = av.VideoFrame.from_ndarray(np.asarray(img), format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        samples = frames * 48000 // 25
        wave = (0.2 * np.sin(2 * np.pi * 440 * np.arange(samples) / 48000)).astype(np.float32)
        for k in range(0, samples, 1024):
            chunk = av.AudioFrame.from_ndarray(np.stack([wave[k:k + 1024]] * 2), format="fltp", layout="stereo")
            chunk.sample_rate, chunk.pts = 48000, k
            out.mux(sound.encode(chunk))
        out.mux(sound.encode(None))
    return path


def decoded_frames(path: Path) -> list[np.ndarray]:
    """Every frame of ``path`` as ``(H, W, 3)`` uint8 RGB, the way the video path decodes them."""
    from edsr_jax.io.video_files import Frame, VideoReader

    return [item.pixels for item in VideoReader(path).items() if isinstance(item, Frame)]


class Clock:
    """Wall and CPU seconds (``process_time``: every thread of this process) of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def run_video(upscaler, clip: Path, out: Path) -> Clock:
    """``upscale_file`` (decode + model + encode, overlapped)."""
    from edsr_jax.inference import video

    with Clock() as clock:
        result = video.upscale_file(upscaler, clip, out, overwrite=True, progress=False)
    assert result.frames > 0
    return clock


def run_image_path(upscaler, frames: list[np.ndarray]) -> tuple[Clock, list[np.ndarray]]:
    """The Upscaler on each already decoded frame (the model alone); its outputs."""
    with Clock() as clock:
        outputs = [upscaler(frame) for frame in frames]
    return clock, outputs


def run_codec_only(clip: Path, upscaled: list[np.ndarray], out: Path, scale: int) -> Clock:
    """What the video path adds to the model: decode ``clip`` and encode ``upscaled`` (its
    frames, already upscaled) with the video path's reader and writer, one after the other."""
    from edsr_jax.io.video_files import Frame, VideoReader, VideoWriter, choose_codec

    _, encoder, crf = choose_codec(".mp4", None, None)
    with Clock() as clock:
        reader = VideoReader(clip)
        writer = VideoWriter(out, reader, scale, encoder, crf)
        frames = iter(upscaled)
        for item in reader.items():
            if isinstance(item, Frame):
                writer.frame(next(frames), item)
            else:
                writer.packet(item)
        writer.finish()
    return clock


def run_torch_loop(clip: Path, out: Path, scale: int, blocks: int, features: int) -> tuple[Clock, str]:
    """A videotester.py-style loop: read a frame, model on the whole frame, quantize, write
    it; frame after frame. Returns (clock, description)."""
    import av
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from torch_edsr import EDSR, randomize

    torch.set_num_threads(os.cpu_count() or 1)
    model = randomize(EDSR(scale, blocks, features, 1.0)).eval()
    with torch.inference_mode():
        model(torch.zeros(1, 3, 32, 32))  # warm-up
    with Clock() as clock, av.open(str(clip)) as src, av.open(str(out), "w") as dst, torch.inference_mode():
        vin = src.streams.video[0]
        vout = dst.add_stream("libx264", rate=vin.average_rate)
        vout.width, vout.height, vout.pix_fmt = vin.width * scale, vin.height * scale, "yuv420p"
        vout.options = {"crf": "18"}
        for frame in src.decode(vin):
            lr = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).float()[None]
            sr = model(lr).clamp(0, 255).round()  # utility.quantize
            ndarr = sr[0].byte().permute(1, 2, 0).numpy()
            out_frame = av.VideoFrame.from_ndarray(ndarr, format="rgb24")
            out_frame.pts = frame.pts
            dst.mux(vout.encode(out_frame))
        dst.mux(vout.encode(None))
    return clock, f"torch {torch.__version__}, {torch.get_num_threads()} threads"


def accelerator_estimates(results: Path) -> list[dict]:
    """Frames/s on one H100 / H200 in bfloat16 for 1080p -> 4K x2 and 540p -> 4K x4 from the
    dry-run's estimated time per Upscaler tile (``results``: benchmarks/accelerators.py --json)."""
    from edsr_jax.inference import infer
    from edsr_jax.nets.edsr import preset, receptive_radius

    if not results.is_file():
        return []
    rows = json.loads(results.read_text())
    out = []
    for target in ("h100", "h200"):
        for scale, (h, w) in ((2, (1080, 1920)), (4, (540, 960))):
            config = preset("edsr_baseline", scale)
            tile = infer.tile_for_budget(config, 1024, "bfloat16")
            side = tile + 2 * receptive_radius(config)
            row = next((r for r in rows if r.get("program") == f"upscale_tile {side}x{side}" and r["target"] == target
                        and r["preset"] == "edsr_baseline" and r["scale"] == scale and r["dtype"] == "bfloat16"), None)
            if row is None:
                continue
            tiles = math.ceil(h / tile) * math.ceil(w / tile)
            out.append({"target": target, "scale": scale, "input": f"{w}x{h}", "output": f"{w * scale}x{h * scale}",
                        "tile": tile, "side": side, "tiles": tiles, "ms_per_tile": row["est_s"] * 1e3,
                        "frames_per_s": 1 / (tiles * row["est_s"])})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--size", type=parse_size, default=(360, 640), metavar="WxH", help="LR frame size (640x360)")
    p.add_argument("--frames", type=int, default=4, help="frames in the clip (default 4)")
    p.add_argument("--memory-budget-mb", type=float, default=1024, help="the Upscaler's budget (default 1024)")
    p.add_argument("--skip-torch", action="store_true", help="leave the PyTorch loop out")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    from edsr_jax.inference.infer import Upscaler

    h, w = args.size
    upscaler = Upscaler.from_pretrained("photo-x2", memory_budget_mb=args.memory_budget_mb)
    s = upscaler.scale
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "clip.mp4", args.frames, h, w)
        frames = decoded_frames(clip)
        upscaler(frames[0])  # compile before the clock starts (the video path reuses the program)
        from edsr_jax.inference import video

        per_call = video.frames_per_call(upscaler, h, w)
        if per_call > 1:
            upscaler(np.stack(frames[:per_call]))  # and the batched shape
        image_clock, upscaled = run_image_path(upscaler, frames)
        rows = [("video: upscale_file (decode + model + H.264 encode, overlapped)",
                 run_video(upscaler, clip, Path(tmp) / "up.mp4")),
                ("image path: Upscaler per decoded frame (model only)", image_clock)]
        torch_note = ""
        if not args.skip_torch:
            clock, torch_note = run_torch_loop(clip, Path(tmp) / "torch.mp4", s, upscaler.config.num_blocks,
                                               upscaler.config.num_features)
            rows.append(("PyTorch loop as videotester.py (whole frames, sequential)", clock))
        rows.append(("decode + encode alone, no model (what the video path adds)",
                     run_codec_only(clip, upscaled, Path(tmp) / "codec.mp4", s)))
    tiled = per_call == 1 and (h * w > upscaler.tile ** 2)
    print(f"\nEDSR-baseline x{s}, {args.frames} frames {w}x{h} -> {w * s}x{h * s}, {os.cpu_count()} CPU(s), "
          f"jax {jax.__version__} {upscaler.conv_backend} convolutions, Upscaler tile {upscaler.tile} "
          f"(+{upscaler.overlap}), {'tiled' if tiled else f'{per_call} frame(s) per call'}; {torch_note}\n")
    print("| path | wall s | frames/s | wall vs image path | CPU s (all threads) | CPU vs image path |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, c in rows:
        print(f"| {name} | {c.wall:.1f} | {args.frames / c.wall:.3f} | {c.wall / image_clock.wall:.3f}x | "
              f"{c.cpu:.1f} | {c.cpu / image_clock.cpu:.3f}x |")
    estimates = accelerator_estimates(ROOT / "results" / "accelerators" / "gpu.json")
    if estimates:
        print("\nDry-run estimates (results/accelerators/gpu.json: compiler roofline per Upscaler tile, "
              "bfloat16, EDSR-baseline; not measured):\n")
        print("| device | video | tile (+overlap) | tiles per frame | est. ms per tile | est. frames/s |")
        print("| --- | --- | --- | ---: | ---: | ---: |")
        for e in estimates:
            print(f"| {e['target']} | {e['input']} -> {e['output']} (x{e['scale']}) | {e['tile']} "
                  f"(+{(e['side'] - e['tile']) // 2}) | {e['tiles']} | {e['ms_per_tile']:.2f} | {e['frames_per_s']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"frames": args.frames, "size": [w, h], "scale": s,
                                               "rows": [{"path": n, "wall_s": c.wall, "cpu_s": c.cpu}
                                                        for n, c in rows],
                                               "estimates": estimates}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
