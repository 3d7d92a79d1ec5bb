"""How a finished run ends: a few lines saying what it reached and what to do with it.

``summary_lines`` gives the best checkpoint's validation PSNR against bicubic (from the run's
``metrics.jsonl`` and the checkpoints the tools will read), where the checkpoints are, the wall
time of this invocation, and the next commands (evaluate, upscale, export) with this workdir,
spelled with the Python that runs the trainer.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

from edsr_jax.training import checkpoint


def metrics_records(workdir: str | os.PathLike) -> list[dict]:
    """The evaluation records of ``workdir/metrics.jsonl`` in order (a torn or foreign line is
    skipped): dicts with ``step``, ``psnr``, ``bicubic_psnr``, ``ssim``, ``images``, ``protocol``..."""
    try:
        text = (Path(workdir) / "metrics.jsonl").read_text(errors="replace")
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and "psnr" in record:
            records.append(record)
    return records


def best_record(workdir: str | os.PathLike, protocol: int) -> dict | None:
    """The evaluation record of the checkpoint the tools read (``checkpoint.ranked_steps``: the
    best by validation PSNR, else the newest) under validation protocol ``protocol``, the last
    one logged for that step; None when it has none."""
    steps = checkpoint.ranked_steps(Path(workdir) / checkpoint.CHECKPOINT_DIR)
    if not steps:
        return None
    found = [r for r in metrics_records(workdir)
             if r["step"] == steps[0] and int(r.get("protocol", 0)) == protocol]
    return found[-1] if found else None


def python_command() -> str:
    """How to spell this Python in a command to paste: ``python`` in an activated virtual
    environment or elsewhere, a path relative to the current folder (``.venv/bin/python``)
    when it was called by that path without activating."""
    executable = Path(sys.executable)
    if os.environ.get("VIRTUAL_ENV") and Path(os.environ["VIRTUAL_ENV"]).resolve() == Path(sys.prefix).resolve():
        return "python"
    try:
        relative = executable.relative_to(Path.cwd())
    except ValueError:
        return "python"
    return shlex.quote(str(relative))


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m} min" if hours else f"{m} min {s} s" if m else f"{s} s"


def next_commands(workdir: str | os.PathLike, config, python: str | None = None) -> list[str]:
    """The commands that use the run: evaluate on the validation images (the run's damage),
    upscale images, export to StableHLO; ``workdir`` as given, quoted for a shell."""
    from edsr_jax.training import config as config_lib

    python = python or python_command()
    w = shlex.quote(str(workdir))
    name = Path(workdir).name or "model"
    d = config.data
    scales = config_lib.train_scales(config)
    mdsr = config_lib.is_mdsr(config)
    where = d.val if isinstance(d.val, str) and d.val != "builtin" else "samples/val"
    spec = f" --spec {shlex.quote(d.val_spec)}" if d.val_spec else ""
    evaluate = f"{python} -m edsr_jax.evaluate --checkpoint {w} --bicubic{spec} {shlex.quote(where)}"
    if where == "samples/val":
        evaluate += f"   # {python} -m edsr_jax.sample_data samples writes samples/val"
    scale = f" --scale {max(scales)}" if mdsr else ""
    out_dir = shlex.quote(f"upscaled/{name}")
    artifact = shlex.quote(str(Path(workdir).with_name(f"{name}{f'_x{max(scales)}' if mdsr else ''}.shlo")))
    return [evaluate,
            f"{python} -m edsr_jax.upscale YOUR_IMAGES --checkpoint {w}{scale} --out {out_dir}",
            f"{python} -m edsr_jax.export --checkpoint {w}{scale} --out {artifact}"]


def summary_lines(workdir: str | os.PathLike, config, *, step: int, protocol: int = 0,
                  wall_s: float | None = None, already: bool = False) -> list[str]:
    """The lines a run ends with: ``finished``/``already finished at step N``, the best
    checkpoint's validation PSNR and SSIM against bicubic, the checkpoints, the next commands.
    ``wall_s``: this invocation's time (omitted when None)."""
    from edsr_jax.training import config as config_lib

    total = int(config.train.steps)
    head = (f"already finished at step {step} (train.steps={total}); nothing to train: "
            "a larger --config.train.steps continues it" if already else
            f"finished: step {step} of {total}")
    if wall_s is not None:
        head += f" in {_duration(wall_s)} (this invocation, setup and compilation included)"
    lines = [head]
    record = best_record(workdir, protocol)
    val = "the built-in validation photographs" if config.data.val == "builtin" else config.data.val
    damage = repr(config.data.val_spec) if config.data.val_spec else "MATLAB bicubic"
    if record is not None:
        gain = record["psnr"] - record.get("bicubic_psnr", float("nan"))
        mean = (" (mean over " + ", ".join(f"x{s}" for s in config_lib.train_scales(config)) + ")"
                if config_lib.is_mdsr(config) else "")
        lines.append(f"best: step {record['step']}, PSNR {record['psnr']:.2f} dB against bicubic "
                     f"{record.get('bicubic_psnr', float('nan')):.2f} ({gain:+.2f} dB), SSIM "
                     f"{record.get('ssim', float('nan')):.4f}{mean}; validation: {record.get('images', '?')} "
                     f"images of {val}, LR by {damage}")
    directory = Path(workdir) / checkpoint.CHECKPOINT_DIR
    steps = checkpoint.step_numbers(directory)
    if steps:
        ranked = checkpoint.ranked_steps(directory)
        lines.append(f"checkpoints: {directory} (steps {', '.join(str(s) for s in sorted(steps))}); "
                     f"evaluate, upscale and export read step {ranked[0]}")
    lines.append("next:")
    lines += [f"  {command}" for command in next_commands(workdir, config)]
    return lines
