"""Writing output files: the one way every tool does it.

- ``atomic_write``: a temporary file in the target's folder, flushed and renamed over the
  target, so a reader (or a later run) sees the old file or the complete new one, never a
  torn one; the rename replaces a symlink at the target instead of writing through it.
  Files get the usual permissions (``0o666 & ~umask``, not ``mkstemp``'s 0600).
- ``inside``: an output path built from options (``--suffix``, ``--name``...) resolved and
  checked to stay under its output folder.
- ``check_not_input``: no tool writes over a file it reads, even with ``--overwrite``.
- A full disk (or any other OS error while writing) is ``WriteError``, a ``cli.UsageError``
  whose one line names the file; nothing half-written is left behind.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, IO

from edsr_jax.io.cli import UsageError

_UMASK: int | None = None
_UMASK_LOCK = threading.Lock()


class WriteError(UsageError):
    """A file could not be written (full disk, permissions, ...); names the file."""


def file_mode() -> int:
    """``0o666 & ~umask``: what ``open(path, "w")`` would give a new file."""
    global _UMASK
    with _UMASK_LOCK:
        if _UMASK is None:
            _UMASK = os.umask(0)
            os.umask(_UMASK)
    return 0o666 & ~_UMASK


def dir_mode() -> int:
    """``0o777 & ~umask``: what ``mkdir`` would give a new folder."""
    file_mode()
    return 0o777 & ~_UMASK


def describe_os_error(e: OSError) -> str:
    """``no space left on device`` / the error's own text, lower case, one line."""
    if e.errno == errno.ENOSPC:
        return "no space left on device"
    if e.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return (e.strerror or str(e)).lower()


def write_error(path: str | os.PathLike, e: OSError, what: str = "") -> WriteError:
    """The WriteError for ``e`` met while writing ``path``."""
    return WriteError(f"{path}: could not write{' ' + what if what else ''} "
                      f"({describe_os_error(e)}); nothing was left half-written")


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[IO], None], *,
                 overwrite: bool = False, binary: bool | None = None) -> Path:
    """Write ``data`` (bytes, text, or a function writing into an open file) to ``path``.

    Raises FileExistsError when ``path`` exists and ``overwrite`` is False; WriteError
    (one line naming ``path``) on a full disk or any other OS error, leaving no temporary
    file and the old ``path`` (if any) untouched. Returns ``path``.
    """
    if binary is None:
        binary = not isinstance(data, str)

    def fill(tmp: str) -> None:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())

    return _replace(path, fill, overwrite)


def _replace(path: str | os.PathLike, fill: Callable[[str], None], overwrite: bool) -> Path:
    """Fill a temporary file beside ``path`` (``fill(tmp_name)``), give it a normal file's
    permissions and rename it onto ``path``: the one write path of ``atomic_write`` and
    ``save_with`` (FileExistsError / WriteError as they say)."""
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise FileExistsError(f"{path}: exists (pass --overwrite to replace it)")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
        os.close(fd)
        fill(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return path


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line (a JSON record) to a log file, fsynced. When the file's last line was
    torn by a crash (no final newline), the new line starts on a line of its own, so the
    torn one never swallows it. WriteError (one line naming ``path``) on a full disk."""
    path = Path(path)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    try:
        with open(path, "ab+") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    data = b"\n" + data
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise write_error(path, e, "a record") from None


def check_appendable(path: str | os.PathLike) -> None:
    """UsageError naming ``path`` when an existing log file cannot be opened for appending
    (a folder, no permission); checked before a long run, not after its first hour."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    try:
        with open(path, "ab"):
            pass
    except OSError as e:
        raise UsageError(f"{path}: cannot be appended to ({describe_os_error(e)})") from None


def save_with(path: str | os.PathLike, save: Callable[[str], None], *, overwrite: bool = False) -> Path:
    """``atomic_write`` for libraries that save to a file name (``save(tmp_name)``, e.g. PIL)."""
    return _replace(path, save, overwrite)


@contextmanager
def atomic_dir(path: str | os.PathLike):
    """``with atomic_dir(final) as tmp:`` fill the folder ``tmp``; on success it is renamed to
    ``final`` (which must not exist), on any error removed. A temporary folder left by a
    killed earlier attempt (``.tmp-<name>-*`` next to it) is removed first, so it never
    blocks a retry."""
    path = Path(path)
    for stale in path.parent.glob(f".tmp-{path.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
        os.chmod(tmp, dir_mode())
    except OSError as e:
        raise write_error(path, e) from None
    try:
        yield tmp
        os.rename(tmp, path)
    except OSError as e:
        _remove_tree(tmp)
        raise write_error(path, e) from None
    except BaseException:
        _remove_tree(tmp)
        raise


def _remove_tree(tmp: Path) -> None:
    """Remove a temporary folder; a library's background writer may still re-create parts
    of it for a moment (TensorStore after a failed write), so try again for up to 3 s,
    and once more at exit."""
    import atexit
    import time

    for _ in range(30):
        shutil.rmtree(tmp, ignore_errors=True)
        time.sleep(0.1)
        if not tmp.exists():
            break
    if tmp.exists():
        atexit.register(shutil.rmtree, tmp, True)


def inside(folder: str | os.PathLike, name: str, *, option: str) -> Path:
    """``folder / name`` resolved; a UsageError naming ``option`` when it would leave ``folder``
    (``..``, an absolute name, a symlink pointing out) or is longer than the file system allows."""
    folder = Path(folder)
    if not name or "\x00" in name:
        raise UsageError(f"{option}: output name {name!r} is empty or has a NUL character")
    try:
        limit = os.pathconf(folder if folder.is_dir() else folder.parent if folder.parent.is_dir() else ".",
                            "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    for part in Path(name).parts:
        if len(os.fsencode(part)) > limit:
            raise UsageError(f"{option}: output name {part[:40]!r}... is {len(os.fsencode(part))} bytes, "
                             f"longer than the file system allows ({limit})")
    base = folder.resolve()
    joined = folder / name
    # The folders on the way are resolved (a link among them may point out); the file itself
    # is not followed: writers replace a link at the target, they never write through it.
    target = joined.parent.resolve() / joined.name
    if joined.name in ("", ".", "..") or (target != base and base not in target.parents):
        raise UsageError(f"{option}: output {folder / name} would be written outside {folder}")
    return folder / name


def check_not_input(output: str | os.PathLike, inputs: Iterable[str | os.PathLike], *, option: str) -> None:
    """UsageError naming ``option`` when ``output`` is (the same file as) one of ``inputs``,
    even through a symlink or hard link; ``--overwrite`` never makes that allowed."""
    out = Path(output)
    out_r = out.resolve()
    for p in inputs:
        p = Path(p)
        same = p.resolve() == out_r
        if not same and out.exists() and p.exists():
            try:
                same = os.path.samefile(out, p)
            except OSError:
                same = False
        if same:
            raise UsageError(f"{option} {out}: is an input of this command ({p}); it is never overwritten")
