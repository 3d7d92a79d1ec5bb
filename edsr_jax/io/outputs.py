"""Writing output files: the one way every tool does it.

- ``atomic_write``: a temporary file in the target's folder, flushed and renamed over the
  target, so a reader (or a later run) sees the old file or the complete new one, never a
  torn one; the rename replaces a symlink at the target instead of writing through it.
  Files get the usual permissions (``0o666 & ~umask``, not ``mkstemp``'s 0600).
- Without ``overwrite`` a file is created exclusively: the complete temporary file is
  hard-linked to its final name, which fails when that name exists, however late another
  process created it (checking first and renaming after would replace the other's file).
  ``TakenMeanwhile`` (a ``FileExistsError``) says so, and the other process's file stays.
  Folders (``atomic_dir``) the same way: ``renameat2(RENAME_NOREPLACE)``.
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


class TakenMeanwhile(FileExistsError):
    """The output did not exist when this process checked, but another process created it
    before this one could: this one's output is not written, the other's is left as it is."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(errno.EEXIST, f"{path}: created by another process while this one was writing it; "
                                       "left as it is (pass --overwrite to replace it)", str(path))

    def __str__(self) -> str:
        return self.strerror


TEMP_PREFIX = ".tmp-"  # temporary files and folders of the writers; readers skip such names


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
    """The WriteError for ``e`` met while writing ``path`` (a name or path too long for the file
    system: ``cli.name_too_long``'s line)."""
    if e.errno == errno.ENAMETOOLONG:
        from edsr_jax.io.cli import name_too_long

        return WriteError(name_too_long(e.filename or path))
    return WriteError(f"{path}: could not write{' ' + what if what else ''} "
                      f"({describe_os_error(e)}); nothing was left half-written")


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[IO], None], *,
                 overwrite: bool = False, binary: bool | None = None) -> Path:
    """Write ``data`` (bytes, text, or a function writing into an open file) to ``path``.

    Raises FileExistsError when ``path`` exists and ``overwrite`` is False, ``TakenMeanwhile``
    (a FileExistsError) when another process created it while this one wrote; WriteError
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
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=path.suffix, dir=path.parent)
        os.close(fd)
        fill(tmp)
        os.chmod(tmp, file_mode())
        if overwrite:
            os.replace(tmp, path)
            tmp = None
        else:
            _publish(tmp, path)
    except TakenMeanwhile:
        raise
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return path


def _publish(tmp: str | os.PathLike, path: Path) -> None:
    """Give the complete file ``tmp`` the name ``path`` only if no file has it: a hard link,
    which the kernel refuses (EEXIST) when the name is taken, whenever it was taken. Where
    the file system has no hard links, the name is claimed with ``O_CREAT | O_EXCL`` and the
    file renamed onto the claim. ``TakenMeanwhile`` when another process has the name; the
    caller removes ``tmp``."""
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        raise TakenMeanwhile(path) from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode()))
    except FileExistsError:
        raise TakenMeanwhile(path) from None
    os.replace(tmp, path)


def _publish_dir(tmp: Path, path: Path) -> None:
    """Rename the complete folder ``tmp`` to ``path`` only if ``path`` does not exist, or is an
    empty folder (removed first; the rename then must not find it filled or re-created):
    ``renameat2(RENAME_NOREPLACE)`` where the kernel has it, else ``mkdir`` claims the name
    and the rename replaces the empty claim. ``TakenMeanwhile`` when another process has it."""
    if path.is_dir() and not path.is_symlink():
        try:
            path.rmdir()  # the caller accepted an empty folder; a filled one stays (ENOTEMPTY)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise TakenMeanwhile(path) from None
            if e.errno != errno.ENOENT:
                raise
    if _rename_noreplace(tmp, path):
        return
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        raise TakenMeanwhile(path) from None
    try:
        os.rename(tmp, path)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):  # filled by another process meanwhile
            raise TakenMeanwhile(path) from None
        raise


def _rename_noreplace(src: Path, dst: Path) -> bool:
    """``renameat2(src, dst, RENAME_NOREPLACE)`` through libc: True when renamed, False when
    this system has no such call (the caller falls back); TakenMeanwhile when ``dst`` exists."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_noreplace = -100, 1
    if call(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_noreplace) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        raise TakenMeanwhile(dst)
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def rename_new(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename the file or folder ``src`` to ``dst`` only if nothing has that name
    (``renameat2(RENAME_NOREPLACE)``; where the kernel lacks it, checked just before the
    rename, which suffices for a caller holding the folder's lock). ``TakenMeanwhile`` when
    ``dst`` exists: nothing is ever replaced."""
    src, dst = Path(src), Path(dst)
    if _rename_noreplace(src, dst):
        return
    if dst.exists() or dst.is_symlink():
        raise TakenMeanwhile(dst)
    os.rename(src, dst)


def json_text(data, **dumps_kw) -> str:
    """``json.dumps(data, **dumps_kw)`` that strict parsers accept: an infinite float (the PSNR
    of an image scored against itself) becomes the string ``"inf"`` / ``"-inf"`` (Python's
    ``float()`` reads it back), NaN becomes ``null``; never the bare ``Infinity`` / ``NaN``
    tokens, which are not JSON."""
    import json
    import math

    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(data), allow_nan=False, **dumps_kw)


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
    ``final`` (which must not exist, or be an empty folder), on any error removed. When another
    process created ``final`` meanwhile, ``TakenMeanwhile`` and its folder stays as it is. A
    temporary folder left by a killed earlier attempt (``.tmp-<name>-*`` next to it) is
    removed first, so it never blocks a retry."""
    path = Path(path)
    for stale in path.parent.glob(f"{TEMP_PREFIX}{path.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{path.name}-", dir=path.parent))
        os.chmod(tmp, dir_mode())
    except OSError as e:
        raise write_error(path, e) from None
    try:
        yield tmp
        _publish_dir(tmp, path)
    except TakenMeanwhile:
        _remove_tree(tmp)
        raise
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
