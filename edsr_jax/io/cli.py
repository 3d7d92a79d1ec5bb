"""How the command-line programs parse options and report errors: one convention for all.

Every CLI (``python -m edsr_jax.train|evaluate|upscale|prepare|export``) builds a
``cli.ArgumentParser`` and runs as ``sys.exit(cli.run(main))``. Exit codes:

- 0: done; also ``--help`` (the help on stdout).
- 1: the program ran but something failed along the way (e.g. skipped images), said on stderr.
- 2: a usage problem (a bad option, value, path or config field): exactly one line
  ``error: ...`` on stderr naming it, nothing written. Option errors come from the parser
  (``ArgumentParser.error`` raises ``UsageError``), the rest from ``raise UsageError(...)``.
- 130: interrupted (Ctrl-C), no traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, NoReturn, Sequence


class UsageError(Exception):
    """A problem with the user's input (a path, an option, a value).

    The message names the thing at fault; CLIs print it as one line and exit 2.
    """


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors raise ``UsageError`` instead of printing a
    usage block and exiting: ``run`` then prints the one ``error: ...`` line (exit 2).
    ``--help`` prints the help and exits 0 (``SystemExit(0)``, returned as 0 by ``run``)."""

    def error(self, message: str) -> NoReturn:
        """Raise UsageError(``message``), e.g. "argument --tile: invalid int value: 'x'"."""
        raise UsageError(message)


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

    UsageError becomes ``error: MESSAGE`` on stderr and 2; Ctrl-C becomes 130 with no
    traceback; ``SystemExit`` (``--help``) becomes its code.
    """
    try:
        return int(main(argv) or 0)
    except UsageError as e:
        print(f"error: {_shorten_numbers(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)


def _shorten_numbers(message: str) -> str:
    """A value with thousands of digits echoed in a message is shown by its first digits
    and its length, so the error stays one readable line."""
    import re

    return re.sub(r"\d{40,}", lambda m: f"{m.group()[:12]}...({len(m.group())} digits)", message)
