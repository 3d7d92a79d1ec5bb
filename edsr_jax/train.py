"""Training: ``python -m edsr_jax.train --config experiments/X.py --workdir runs/X``.

The command: its options, the config file with its ``--config.FIELD=VALUE`` overrides, joining
a cluster (``--distributed``), messages and exit codes. The run itself is
``edsr_jax.training.run.train``: one mesh over every device of every process (axis ``data``),
the global batch sharded over it, params and optimizer state replicated; re-running the same
command resumes.
"""

from __future__ import annotations

import os
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Sequence

import jax

from edsr_jax.inference.infer import Upscaler
from edsr_jax.io import cli
from edsr_jax.training import checkpoint
from edsr_jax.training.run import train
from edsr_jax.training.step import NonFiniteError


def build_parser() -> cli.ArgumentParser:
    """The training command's options. ``--config.FIELD=VALUE`` overrides are not declared
    here: ``parse_args`` takes them out first and hands them to ml_collections. The help ends
    with every config field, its default and its help line (``config_help.fields_help``)."""
    import argparse

    from edsr_jax.data.cache import HELP as CACHE_HELP
    from edsr_jax.training.config_help import fields_help

    p = cli.ArgumentParser(
        prog="python -m edsr_jax.train",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train EDSR (resumes when the workdir holds a checkpoint; a finished run says so "
                    "and prints its summary).",
        epilog="Override any field of the config with --config.FIELD=VALUE (or --config.FIELD VALUE),\n"
               "e.g. --config.optim.lr=2e-4 --config.train.steps=1000; values are parsed by the field's\n"
               "type (ml_collections config_flags).\n\n"
               + fields_help() + "\n\n" + "\n".join(textwrap.wrap(CACHE_HELP, 96)))
    p.add_argument("--config", required=True, metavar="FILE",
                   help="experiment config file (experiments/*.py) defining get_config()")
    p.add_argument("--workdir", metavar="DIR",
                   help="run folder: checkpoints, TensorBoard events, metrics.jsonl; re-running "
                        "with the same workdir resumes (required unless --print-config)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (the file, its overrides, and the LR variant and "
                        "validation damage the run would choose) as JSON and exit")
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() (cluster auto-detection, or the "
                        "options below)")
    p.add_argument("--coordinator_address", metavar="HOST:PORT",
                   help="address of process 0 (multi-host; implies --distributed)")
    p.add_argument("--num_processes", type=int, metavar="N", help="number of processes (multi-host)")
    p.add_argument("--process_id", type=int, metavar="I", help="this process's index (multi-host)")
    p.add_argument("--cpu_collectives", action="store_true",
                   help="gloo collectives between CPU processes (multi-process runs without "
                        "accelerators)")
    return p


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(overrides, rest)``: the ``--config.FIELD[=VALUE]`` arguments (a value given as the
    next argument joined as ``=VALUE``) and everything else, each in order."""
    overrides, rest = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            if "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                i += 1
                arg = f"{arg}={argv[i]}"
            overrides.append(arg)
        else:
            rest.append(arg)
        i += 1
    return overrides, rest


def load_config(path: str, overrides: Sequence[str] = ()):
    """The ``ml_collections.ConfigDict`` of config file ``path`` (``get_config()``; ``FILE:ARG``
    passes ARG) with ``--config.FIELD=VALUE`` overrides applied by ml_collections, which parses
    each value by the field's type. Raises ``cli.UsageError`` (one line) for a missing or
    broken file, an unknown field or a value of the wrong type."""
    from absl import flags
    from ml_collections import config_flags

    def one_line(e: BaseException) -> str:
        return " ".join(str(e).split())

    file = Path(path)
    if not file.is_file() and not (":" in path and Path(path.rsplit(":", 1)[0]).is_file()):
        raise cli.UsageError(f"--config {path}: no such file")
    argv = ["edsr_jax.train", f"--config={path}", *overrides]
    # ml_collections loads the file as module "config_config" with load_module, which reuses a
    # module of that name left by an earlier load: names the file lacks would come from there
    sys.modules.pop("config_config", None)
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "experiment config file", flag_values=fv,
                                    sys_argv=argv)
    try:
        with warnings.catch_warnings():  # config_flags loads the file with the deprecated load_module()
            warnings.filterwarnings("ignore", message=r"the load_module\(\) method is deprecated",
                                    category=DeprecationWarning)
            fv(argv)
            return fv.config
    except flags.Error as e:
        raise cli.UsageError(one_line(e)) from None
    except (KeyError, AttributeError) as e:  # ml_collections: an override of an unknown field
        if "get_config" in str(e):
            raise cli.UsageError(f"--config {path}: defines no get_config() (an experiment config is a "
                                 "Python file whose get_config() returns an ml_collections.ConfigDict)") from None
        raise cli.UsageError(_unknown_field(path, overrides)) from None
    except Exception as e:  # the config file itself failed: SyntaxError, its own errors, ...
        raise cli.UsageError(f"--config {path}: {type(e).__name__}: {one_line(e)}") from None


def _unknown_field(path: str, overrides: Sequence[str]) -> str:
    """The message for the first override naming a field the config of ``path`` lacks:
    ``unknown config field --config.optim.lrr: config.optim has no field 'lrr' (did you mean 'lr'?)``."""
    import difflib

    base = load_config(path)
    for arg in overrides:
        name = arg.split("=")[0]
        node, where = base, "config"
        for part in name.removeprefix("--config.").split("."):
            keys = list(node.keys()) if hasattr(node, "keys") else []
            if part not in keys:
                close = difflib.get_close_matches(part, keys, n=1)
                return (f"unknown config field {name}: {where} has no field {part!r}"
                        + (f" (did you mean {close[0]!r}?)" if close else ""))
            node, where = node[part], f"{where}.{part}"
    return f"unknown config field among {', '.join(a.split('=')[0] for a in overrides)}"


def parse_args(argv: Sequence[str] | None = None):
    """Parse the training command line: ``(options, config)``, the options of ``build_parser``
    and the config file with its overrides (``load_config``). Bad options raise
    ``cli.UsageError``; ``--help`` prints the help and exits 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides, rest = _split_overrides(argv)
    args = build_parser().parse_args(rest)
    if args.workdir is None and not args.print_config:
        raise cli.UsageError("the following arguments are required: --workdir")
    return args, load_config(args.config, overrides)


def print_config(config) -> None:
    """``--print-config``: the config after its overrides, checked (``config.validate``), with
    what a run resolves from the data filled in (``data.lr_name``, ``data.val_spec``; the
    lines saying so on stderr), as JSON on stdout. Bad values: ``cli.UsageError``."""
    from edsr_jax.training import config as config_lib
    from edsr_jax.training.config_help import config_text
    from edsr_jax.training.datasets import resolve_lr_name, resolve_val_spec

    try:
        config_lib.validate(config, jax.device_count())
    except ValueError as e:
        raise cli.UsageError(str(e)) from None
    for note in (resolve_lr_name(config), resolve_val_spec(config)):
        if note:
            print(note, file=sys.stderr)
    try:
        print(config_text(config), flush=True)
    except BrokenPipeError:  # ``--print-config | head``: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """The training CLI: parse, join the cluster when asked, and train (``--print-config``:
    print the config and return). Returns 0, or 1 when training stopped on non-finite values
    (usage errors: ``cli.UsageError``, exit 2)."""
    args, config = parse_args(argv)
    if args.print_config:
        print_config(config)
        return 0
    if args.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.distributed or args.coordinator_address:
        jax.distributed.initialize(coordinator_address=args.coordinator_address,
                                   num_processes=args.num_processes, process_id=args.process_id)
    try:
        train(config, args.workdir, upscaler=Upscaler)
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except checkpoint.CheckpointMismatch as e:
        raise cli.UsageError(str(e)) from None
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
