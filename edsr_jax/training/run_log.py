"""What a training run tells the outside world, and what it hears back.

``Logger``: the progress bar (step, loss, learning rate, patches/s, ETA) on stderr, scalars
and the evaluation panel as TensorBoard events in ``workdir/tb``, one JSON line per
evaluation in ``workdir/metrics.jsonl``; silent off process 0.
``StopRequest``: SIGTERM / SIGINT turned into a flag the training loop checks between steps.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

from edsr_jax.training.workdir import EVENTS, METRICS, start_logs


class Logger:
    """Progress bar, TensorBoard events and ``metrics.jsonl`` of one run; silent when not ``enabled``.

    ``total`` steps of the run, the first at ``start`` (``start``, the method, called once the
    first step is known, puts the workdir's logs in order, ``workdir.start_logs``, and opens the
    TensorBoard writer). The bar is drawn from ``open_bar`` (or the first ``train``) on, so a run
    with nothing left to train shows none. Use it as a context manager, or call ``close``.

    The events file is written by tensorboardX's writer thread; an OS error there (a full
    disk) never reaches that thread (``_EventFiles``): events stop, the run goes on, and one
    ``warning:`` line says so (the checkpoints and ``metrics.jsonl`` are what a run keeps).
    """

    def __init__(self, workdir: Path, total: int, start: int, enabled: bool):
        self.enabled = enabled
        self.bar = self.tb = None
        self.total, self.first_step = total, start
        self.workdir = Path(workdir)
        self.jsonl = self.workdir / METRICS
        self.events_dir = self.workdir / EVENTS
        self._events_error_said = False

    def __enter__(self) -> "Logger":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failing=exc_type is not None)

    def say(self, text: str) -> None:
        """One line of text on stderr, between progress bar updates."""
        if self.enabled:
            (self.bar.write if self.bar else print)(text, file=sys.stderr)

    def start(self, step: int, *, fresh: bool) -> None:
        """The run starts at ``step``: ``fresh`` (no checkpoint restored) sets an earlier run's
        logs aside, a resume moves the records after ``step`` to ``metrics.superseded.jsonl``
        (``workdir.start_logs``); then the TensorBoard writer opens (on a resume hiding the
        events of steps after ``step``: ``purge_step``) and the bar shows ``step``."""
        if not self.enabled:
            return
        start_logs(self.workdir, step, fresh=fresh, say=self.say)
        self._open_events(None if fresh else int(step) + 1)
        self.first_step = step
        if self.bar is not None:
            self.bar.n = step
            self.bar.refresh()

    def open_bar(self) -> None:
        """Draw the progress bar (step, loss, lr, patches/s, ETA) from the current step on."""
        if self.enabled and self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=self.first_step, unit="step", dynamic_ncols=True,
                            file=sys.stderr, mininterval=1.0)

    def _open_events(self, purge_step: int | None) -> None:
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(_EventFiles.logdir(self.events_dir), purge_step=purge_step)

    def _events(self):
        """The TensorBoard writer (opened here when ``start`` was not called); says once that
        events are no longer written after an OS error in the writer."""
        if self.tb is None:
            self._open_events(None)
        self._say_events_error()
        return self.tb

    def _say_events_error(self) -> None:
        error = _EventFiles.error(self.events_dir)
        if error is not None and not self._events_error_said:
            self._events_error_said = True
            from edsr_jax.io.outputs import describe_os_error

            self.say(f"warning: {self.events_dir}: TensorBoard events are no longer written "
                     f"({describe_os_error(error)}); training goes on (the checkpoints and "
                     f"{METRICS} are what a run keeps)")

    def train(self, step: int, scalars: dict, advanced: int) -> None:
        """Training scalars at ``step`` (``loss``, ``lr`` and ``patches_per_s`` at least; floats),
        the bar moved on by ``advanced`` steps."""
        if not self.enabled:
            return
        self.open_bar()
        self.bar.update(advanced)
        self.bar.set_postfix(loss=f"{scalars['loss']:.3f}", lr=f"{scalars['lr']:.2e}",
                             patches_s=f"{scalars['patches_per_s']:.1f}")
        tb = self._events()
        for k, v in scalars.items():
            tb.add_scalar(f"train/{k}", v, step)

    def eval(self, step: int, result: dict) -> None:
        """An evaluation at ``step``: ``result`` holds ``psnr`` (dB), ``ssim``, ``bicubic_psnr``,
        ``bicubic_ssim``, ``images`` and optionally ``panel`` ((h, w, 3) uint8) and ``per_image``.
        The JSON line holds the scalars (not the panel, nor the per-image list), as strict JSON
        (``outputs.json_text``: an infinite PSNR is ``"inf"``, NaN ``null``)."""
        if not self.enabled:
            return
        record = {k: v for k, v in result.items() if k not in ("panel", "per_image")}
        record = {"step": step, **record, "time": time.time()}
        from edsr_jax.io import outputs

        outputs.append_line(self.jsonl, outputs.json_text(record))  # a torn last line never swallows it
        tb = self._events()
        for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim"):
            tb.add_scalar(f"eval/{k}", result[k], step)
        if result.get("panel") is not None:
            tb.add_image("eval/lr_bicubic_sr_hr", result["panel"], step, dataformats="HWC")
        self.say(f"step {step}: PSNR {result['psnr']:.2f} dB (bicubic {result['bicubic_psnr']:.2f}), "
                 f"SSIM {result['ssim']:.4f} (bicubic {result['bicubic_ssim']:.4f}) "
                 f"on {result['images']} images")

    def close(self, failing: bool = False) -> None:
        """Close the event file and the bar; safe to call twice. Events that could not be
        written (a full disk) are one warning line, not an error: the checkpoints are what a
        run keeps; when the run ends ``failing`` (an exception, whose own line is what the
        user needs: on a full disk, the checkpoint's), the warning is left out."""
        if not self.enabled:
            return
        if self.tb is not None:
            self.tb.close()
            if not failing:
                self._say_events_error()
            _EventFiles.forget(self.events_dir)
        if self.bar is not None:
            self.bar.close()
        self.enabled = False


class _EventFiles:
    """The files tensorboardX writes events into, for log dirs named ``edsrjax-tb:PATH``
    (registered with ``tensorboardX.record_writer.register_writer_factory``): ordinary files
    at PATH, except that an OS error while writing or flushing one (a full disk) is kept, per
    folder, instead of raised. Raised, it would end tensorboardX's writer thread with a
    traceback, and the run would then block on the thread's full queue; kept, the events
    after it are dropped and ``Logger`` says so in one line."""

    PREFIX = "edsrjax-tb"
    _errors: dict[str, OSError] = {}
    _registered = False

    @classmethod
    def logdir(cls, folder: Path) -> str:
        """The log dir to give ``SummaryWriter`` for ``folder`` (registers the factory once)."""
        if not cls._registered:
            from tensorboardX import record_writer

            record_writer.register_writer_factory(cls.PREFIX, cls())
            cls._registered = True
        cls._errors.pop(str(Path(folder).absolute()), None)
        return f"{cls.PREFIX}:{Path(folder).absolute()}"

    @classmethod
    def error(cls, folder: Path) -> OSError | None:
        """The first OS error met writing events into ``folder``, or None."""
        return cls._errors.get(str(Path(folder).absolute()))

    @classmethod
    def forget(cls, folder: Path) -> None:
        cls._errors.pop(str(Path(folder).absolute()), None)

    @staticmethod
    def _path(name: str) -> str:
        return name.split(":", 1)[1]

    def directory_check(self, name: str) -> None:
        """tensorboardX's hook: create the folder."""
        os.makedirs(self._path(name), exist_ok=True)

    def open(self, name: str) -> "_GuardedFile":
        """tensorboardX's hook: open an events file for writing."""
        path = self._path(name)
        return _GuardedFile(path, lambda e: self._errors.setdefault(os.path.dirname(path), e))


class _GuardedFile:
    """A binary file for tensorboardX's record writer whose OS errors go to ``failed`` (once)
    instead of being raised; after one, writes are dropped."""

    def __init__(self, path: str, failed: Callable[[OSError], object]):
        self._failed, self._broken = failed, False
        self._file = open(path, "wb")

    def _guard(self, action: Callable[[], object]) -> None:
        if self._broken:
            return
        try:
            action()
        except OSError as e:
            self._broken = True
            self._failed(e)

    def write(self, data: bytes) -> None:
        self._guard(lambda: self._file.write(data))

    def flush(self) -> None:
        self._guard(lambda: (self._file.flush(), os.fsync(self._file.fileno())))

    def close(self) -> None:
        self.flush()
        try:
            self._file.close()
        except OSError:  # the buffer could not be written: the failure is already kept
            pass


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
