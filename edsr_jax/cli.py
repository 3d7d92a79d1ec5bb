"""How the command-line programs report errors: one clear line, exit code 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Sequence


class UsageError(Exception):
    """A problem with the user's input (a path, an option, a value).

    The message names the thing at fault; CLIs print it as one line and exit 2.
    """


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``, turning UsageError into ``error: ...`` on stderr and exit 2.

    Ctrl-C exits with 130 and no traceback. Returns the exit code.
    """
    try:
        return int(main(argv) or 0)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def image_folder(folder: str | Path) -> list[Path]:
    """The image files of a folder given on the command line, sorted by name.

    Raises UsageError naming the folder when it does not exist, is not a folder, or
    holds no image files.
    """
    from edsr_jax.images import ImageError, image_files

    try:
        return image_files(folder)
    except ImageError as e:
        raise UsageError(str(e)) from None
