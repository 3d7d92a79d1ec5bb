"""One process at a time per folder: an exclusive lock on a file in it. One trainer per
workdir (``<workdir>/train.lock``, the defaults), one ``prepare`` per prepared folder
(``<out>/prepare.lock``). A clean exit removes the file; after a kill it stays behind, naming
the dead holder, until the next holder takes the lock and releases it.

The lock is ``fcntl.flock`` on an open file, so the kernel releases it whenever the holder
ends, by any means (exit, exception, ``kill -9``, a crash): a lock left by a dead process is
never stale, the next process simply takes it. The file holds the holder's host, pid and
start time, for the message the second process prints. On file systems without ``flock``
(some network mounts) the lock cannot be taken and the message says so.

Readers (``evaluate``, ``upscale``, ``export``) take no lock: they read only committed
checkpoint steps and fall back to an older one when a step vanishes under them
(``restore.restore_newest``).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = "train.lock"


class WorkdirBusy(RuntimeError):
    """Another live process holds the folder's lock; the message names its host and pid."""


class CannotLock(OSError):
    """The folder's lock cannot be taken (no ``flock`` on this file system, or the lock file
    is a symbolic link, which is never followed); ``str()`` is the one-line message."""

    def __str__(self) -> str:
        return self.strerror


class RunLock:
    """``with RunLock(workdir) as lock:`` holds the workdir for this process.

    ``name``: the lock file's name in the folder; ``option`` and ``holder`` word the message
    ("--workdir W: another trainer is running in it ..."; prepare: ``--out``, ``prepare``);
    ``remove`` (default): the file is removed on release, so a clean end leaves the folder as
    it was; after a kill it stays, holding the dead holder's record, until the next holder
    releases it. ``remove=False`` empties it instead.
    ``lock.previous`` is the holder record (``{"host", "pid", "started"}``) left by a process
    that ended without releasing it cleanly (killed), else None.
    """

    def __init__(self, workdir: str | os.PathLike, *, name: str = LOCK_NAME, option: str = "--workdir",
                 holder: str = "trainer", remove: bool = True):
        self.workdir = Path(workdir)
        self.path = self.workdir / name
        self.option, self.holder, self.remove = option, holder, remove
        self.previous: dict | None = None
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise WorkdirBusy (another live holder) / CannotLock (an OSError: no
        ``flock`` here, or the lock file is a symbolic link)."""
        import fcntl

        while True:
            try:  # never through a link: the holder record would be written wherever it points
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
            except OSError as e:
                if e.errno != errno.ELOOP:
                    raise
                raise CannotLock(e.errno, f"{self.option} {self.workdir}: {self.path} is a symbolic link "
                                          f"(to {os.readlink(self.path)}); the lock is never taken through "
                                          "a link: remove it") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _read_record(fd)
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise WorkdirBusy(f"{self.option} {self.workdir}: another {self.holder} is running in it "
                                      f"({describe(holder)}); wait for it, stop it, or use another "
                                      f"{self.option}") from None
                raise CannotLock(e.errno, f"{self.option} {self.workdir}: cannot lock {self.path} "
                                       f"({e.strerror}); this file system may not support locks") from None
            if _is_file_at(fd, self.path):
                break
            os.close(fd)  # a holder releasing with ``remove`` unlinked it since our open: take the new one
        self.previous = _read_record(fd) or None
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        except OSError:  # a full disk: the lock holds all the same, only the message loses detail
            pass
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the record, or remove the file (``remove``), and release the lock; idempotent."""
        import fcntl

        if self._fd is None:
            return
        try:
            if self.remove:  # still locked: a process that opened it meanwhile retries (acquire)
                os.unlink(self.path)
            else:
                os.ftruncate(self._fd, 0)
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _is_file_at(fd: int, path: Path) -> bool:
    """True when the open ``fd`` is the file at ``path`` (not one removed since it was opened)."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _read_record(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        record = json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def describe(record: dict | None) -> str:
    """``host H, pid P, since HH:MM:SS`` (or what is known of it) for messages."""
    if not record:
        return "holder unknown"
    parts = [f"host {record.get('host', '?')}", f"pid {record.get('pid', '?')}"]
    if isinstance(record.get("started"), (int, float)):
        parts.append("since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["started"])))
    return ", ".join(parts)
