"""How the command-line programs parse options and report errors: one convention for all.

Every CLI (``python -m edsr_jax.train|evaluate|upscale|prepare|export``) builds a
``cli.ArgumentParser`` and runs as ``sys.exit(cli.run(main))``. Exit codes:

- 0: done; also ``--help`` (the help on stdout).
- 1: the program ran but something failed along the way (e.g. skipped images), said on stderr.
- 2: a usage problem (a bad option, value, path or config field): exactly one line
  ``error: ...`` on stderr naming it, nothing written. Option errors come from the parser
  (``ArgumentParser.error`` raises ``UsageError``), the rest from ``raise UsageError(...)``.
- 130: interrupted (Ctrl-C), no traceback; 143: terminated (SIGTERM), which ``run`` turns
  into the same ``KeyboardInterrupt`` (``Terminated``), so every command stops as on Ctrl-C:
  ``finally`` blocks run, temporaries are removed, one line says so (with the command's
  ``hint``, e.g. how to resume).
- 1 also for ``Failed``: the command could not finish (one ``error: ...`` line).

A path the file system cannot hold (a name over 255 bytes, a path over 4,096: ``OSError``
``ENAMETOOLONG`` wherever it is met) is a usage problem too: one line naming the path and the
limit (``name_too_long``), exit 2.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
from pathlib import Path
from typing import Callable, NoReturn, Sequence


class UsageError(Exception):
    """A problem with the user's input (a path, an option, a value).

    The message names the thing at fault; CLIs print it as one line and exit 2.
    """


class Failed(Exception):
    """The command ran but could not finish (e.g. a worker process was killed); ``run`` prints
    ``error: MESSAGE`` and returns 1."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is (``run`` installs the handler) so the command
    unwinds as on Ctrl-C; ``signum`` is the signal."""

    def __init__(self, signum: int):
        super().__init__()
        self.signum = signum


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors raise ``UsageError`` instead of printing a
    usage block and exiting: ``run`` then prints the one ``error: ...`` line (exit 2).
    ``--help`` prints the help and exits 0 (``SystemExit(0)``, returned as 0 by ``run``).

    A blank value (``--model ''``, ``--spec ' '``, an empty INPUT) is refused for every option
    and argument, since none of them means anything blank (an empty path would be the
    current folder, an empty name the default); ``blank_ok`` names the destinations where
    blank is a value (e.g. ``suffix``: no suffix)."""

    def __init__(self, *args, blank_ok: Sequence[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.blank_ok = set(blank_ok)

    def error(self, message: str) -> NoReturn:
        """Raise UsageError(``message``), e.g. "argument --tile: invalid int value: 'x'"."""
        raise UsageError(message)

    def parse_known_args(self, args=None, namespace=None):
        """argparse's, then UsageError for a blank string value given to an option or argument
        (one that is not its default) outside ``blank_ok``."""
        namespace, extras = super().parse_known_args(args, namespace)
        for action in self._actions:
            if action.dest in self.blank_ok or not hasattr(namespace, action.dest):
                continue
            value = getattr(namespace, action.dest)
            if value is action.default:
                continue
            values = value if isinstance(value, list) else [value]
            if any(isinstance(v, str) and not v.strip() for v in values):
                name = "/".join(action.option_strings) or action.metavar or action.dest
                self.error(f"argument {name}: empty value {next(v for v in values if isinstance(v, str) and not v.strip())!r}")
        return namespace, extras


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for integers ``>= minimum``; other text gets one error line
    ("expected a whole number, got 'x'" / "must be at least 1, got 0")."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)`` and return its exit code (see the module docstring).

    UsageError becomes ``error: MESSAGE`` on stderr and 2; ``Failed`` ``error: MESSAGE`` and
    1; Ctrl-C becomes ``interrupted`` and 130, SIGTERM ``terminated (SIGTERM)`` and 143, no
    traceback (a ``hint`` attribute set on the KeyboardInterrupt by the command is added:
    ``interrupted: HINT``); ``SystemExit`` (``--help``) becomes its code; an ``OSError``
    ENAMETOOLONG becomes ``error: PATH: ...`` (``name_too_long``) and 2.
    """
    previous = _on_sigterm_raise()
    try:
        return int(main(argv) or 0)
    except UsageError as e:
        print(f"error: {_shorten_numbers(str(e))}", file=sys.stderr)
        return 2
    except Failed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno != errno.ENAMETOOLONG:
            raise
        print(f"error: {name_too_long(e.filename)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        hint = getattr(e, "hint", "")
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"{what}: {hint}" if hint else what, file=sys.stderr)
        return 128 + e.signum if isinstance(e, Terminated) else 130
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _on_sigterm_raise():
    """Make SIGTERM raise ``Terminated`` in the main thread (when it still has the default
    action, i.e. nobody else handles it); returns the handler to put back, or None."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        return None

    def handle(signum, frame):
        raise Terminated(signum)

    signal.signal(signal.SIGTERM, handle)
    return previous


def _shorten_numbers(message: str) -> str:
    """A value with thousands of digits echoed in a message is shown by its first digits
    and its length, so the error stays one readable line."""
    import re

    return re.sub(r"\d{40,}", lambda m: f"{m.group()[:12]}...({len(m.group())} digits)", message)


NAME_MAX = 255   # bytes in one path component (ext4, XFS, btrfs, tmpfs...)
PATH_MAX = 4096  # bytes in a whole path (Linux)


def name_too_long(path: str | bytes | os.PathLike | None) -> str:
    """The one-line message for a path the file system refuses as too long (ENAMETOOLONG):
    ``PATH: its name 'aaaa...' is 300 bytes, longer than the file system allows (255)`` or
    ``PATH: the path is 5000 bytes, longer than the file system allows (4096)``; PATH is
    shown with each long name cut to its first characters and its length."""
    if path is None:
        return "a path is longer than the file system allows (a name over 255 bytes or a path over 4096)"
    raw = os.fsencode(path)
    text = os.fsdecode(raw)
    parts = text.split("/")
    shown = "/".join(p if len(p) <= 40 else f"{p[:24]}...({len(os.fsencode(p))} bytes)" for p in parts)
    if len(shown) > 120:
        shown = f"{text[:48]}...({len(raw)} bytes)"
    limit = _limit(text, "PC_NAME_MAX", NAME_MAX)
    for part in parts:
        if len(os.fsencode(part)) > limit:
            return (f"{shown}: its name {part[:24]!r}... is {len(os.fsencode(part))} bytes, longer than "
                    f"the file system allows ({limit}); choose a shorter name")
    limit = _limit(text, "PC_PATH_MAX", PATH_MAX)
    return (f"{shown}: the path is {len(raw)} bytes, longer than the file system allows ({limit}); "
            "choose a shorter path")


def _limit(path: str, name: str, default: int) -> int:
    """``os.pathconf`` of the nearest existing folder above ``path`` (``default`` when unknown)."""
    folder = os.path.dirname(os.path.abspath(path)) if len(os.fsencode(path)) < PATH_MAX else os.getcwd()
    while folder and folder != "/":
        try:
            if os.path.isdir(folder):
                break
        except (OSError, ValueError):
            pass
        folder = os.path.dirname(folder)
    try:
        return int(os.pathconf(folder or "/", name))
    except (OSError, ValueError):
        return default
