"""What a training run tells the outside world, and what it hears back.

``Logger``: the progress bar (step, loss, learning rate, patches/s, ETA) on stderr, scalars
and the evaluation panel as TensorBoard events in ``workdir/tb``, one JSON line per
evaluation in ``workdir/metrics.jsonl``; silent off process 0.
``StopRequest``: SIGTERM / SIGINT turned into a flag the training loop checks between steps.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path


class Logger:
    """Progress bar, TensorBoard events and ``metrics.jsonl`` of one run; silent when not ``enabled``.

    ``total`` steps of the run; the bar starts at ``start`` (``resume`` moves it) and is drawn
    from ``open_bar`` (or the first ``train``) on, so a run with nothing left to train shows
    none. Use it as a context manager, or call ``close``.
    """

    def __init__(self, workdir: Path, total: int, start: int, enabled: bool):
        self.enabled = enabled
        self.bar = self.tb = None
        self.total, self.start = total, start
        self.jsonl = Path(workdir) / "metrics.jsonl"
        if enabled:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(Path(workdir) / "tb"))

    def __enter__(self) -> "Logger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def say(self, text: str) -> None:
        """One line of text on stderr, between progress bar updates."""
        if self.enabled:
            (self.bar.write if self.bar else print)(text, file=sys.stderr)

    def open_bar(self) -> None:
        """Draw the progress bar (step, loss, lr, patches/s, ETA) from the current step on."""
        if self.enabled and self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=self.start, unit="step", dynamic_ncols=True,
                            file=sys.stderr, mininterval=1.0)

    def resume(self, step: int) -> None:
        """Start the bar at ``step`` (a resumed run)."""
        self.start = step
        if self.bar is not None:
            self.bar.n = step
            self.bar.refresh()

    def train(self, step: int, scalars: dict, advanced: int) -> None:
        """Training scalars at ``step`` (``loss``, ``lr`` and ``patches_per_s`` at least; floats),
        the bar moved on by ``advanced`` steps."""
        if not self.enabled:
            return
        self.open_bar()
        self.bar.update(advanced)
        self.bar.set_postfix(loss=f"{scalars['loss']:.3f}", lr=f"{scalars['lr']:.2e}",
                             patches_s=f"{scalars['patches_per_s']:.1f}")
        for k, v in scalars.items():
            self.tb.add_scalar(f"train/{k}", v, step)

    def eval(self, step: int, result: dict) -> None:
        """An evaluation at ``step``: ``result`` holds ``psnr`` (dB), ``ssim``, ``bicubic_psnr``,
        ``bicubic_ssim``, ``images`` and optionally ``panel`` ((h, w, 3) uint8) and ``per_image``.
        The JSON line holds the scalars (not the panel, nor the per-image list)."""
        if not self.enabled:
            return
        record = {k: v for k, v in result.items() if k not in ("panel", "per_image")}
        record = {"step": step, **record, "time": time.time()}
        from edsr_jax.io import outputs

        outputs.append_line(self.jsonl, json.dumps(record))  # a torn last line never swallows it
        for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim"):
            self.tb.add_scalar(f"eval/{k}", result[k], step)
        if result.get("panel") is not None:
            self.tb.add_image("eval/lr_bicubic_sr_hr", result["panel"], step, dataformats="HWC")
        self.say(f"step {step}: PSNR {result['psnr']:.2f} dB (bicubic {result['bicubic_psnr']:.2f}), "
                 f"SSIM {result['ssim']:.4f} (bicubic {result['bicubic_ssim']:.4f}) "
                 f"on {result['images']} images")

    def close(self) -> None:
        """Close the bar and flush the event file; safe to call twice. An event file that
        cannot be flushed (a full disk) is a warning: the checkpoints are what a run keeps."""
        if self.enabled:
            if self.bar is not None:
                self.bar.close()
            self.enabled = False
            try:
                self.tb.close()
            except OSError as e:
                from edsr_jax.io.outputs import describe_os_error

                print(f"warning: {self.tb.logdir}: TensorBoard events not all written "
                      f"({describe_os_error(e)})", file=sys.stderr)


class StopRequest:
    """Turns SIGTERM / SIGINT into a flag (``signal``: the signal number, or None) that the loop
    checks between steps; a second SIGINT raises KeyboardInterrupt. A context manager that
    restores the previous handlers (installs none off the main thread)."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
