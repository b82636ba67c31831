"""One process at a time in an output folder: an operating-system lock on ``<folder>/.nnlib.lock``.

``fcntl.flock`` locks belong to the open file, so the kernel drops them
when the process ends in any way (kill -9 included): a killed run never
blocks its own ``--resume``. While a run holds the lock, the lock file
names its PID, host and start time, which a refused run quotes; a released
lock file is empty (a killed run's keeps its note). On NFS (v4) Linux
emulates ``flock`` with byte-range locks the server holds, so the lock
holds across hosts and is freed when the holder's lease ends.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path

from nnlib.errors import NnlibError

LOCK_NAME = ".nnlib.lock"


class FolderLock:
    """The exclusive hold of one folder by this process, until :meth:`release` or the process's end."""

    def __init__(self, folder: Path, fd: int):
        self.folder = folder
        self._fd: int | None = fd

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def release(self) -> None:
        """Drop the lock; the lock file is emptied first, so it names a holder only while one holds it (a
        refused run leaves the folder as it found it)."""
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass  # the note is a courtesy; closing still drops the lock
            os.close(self._fd)  # closing the file drops the lock
            self._fd = None


def holder(folder: Path) -> str:
    """Who the lock file of ``folder`` says holds it: ``PID 123 on host h (since 2026-12-06 21:13:17)``."""
    try:
        fields = dict(line.split("=", 1) for line in (folder / LOCK_NAME).read_text().splitlines() if "=" in line)
    except OSError:
        fields = {}
    since = f" (since {fields['started']})" if "started" in fields else ""
    return f"PID {fields.get('pid', '?')} on host {fields.get('host', '?')}{since}"


def in_use(folder: Path, what: str = "--out") -> NnlibError | None:
    """The error that refuses ``folder`` when another live process holds its lock (this process holding it on
    another open file counts too), else None. Nothing is created."""
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None  # no lock file: nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return _busy(folder, what)
        return None
    finally:
        os.close(fd)  # drops the shared lock, if taken


def _busy(folder: Path, what: str) -> NnlibError:
    return NnlibError(
        f"{what}: {folder} is in use by another run, {holder(folder)}; wait for it to end, or choose another folder"
    )


def hold(folder: Path, what: str = "--out") -> FolderLock:
    """Lock ``folder`` (which must exist) for this process, or raise :class:`NnlibError` naming the holder."""
    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise NnlibError(f"{what}: cannot create the lock file {path} ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise _busy(folder, what) from None
        raise NnlibError(f"{what}: cannot lock {path} ({exc.strerror})") from None
    stamp = (f"pid={os.getpid()}\nhost={socket.gethostname()}\nstarted={time.strftime('%Y-%m-%d %H:%M:%S')}\n").encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, stamp, 0)
    except OSError:
        pass  # the holder's note is a courtesy; the lock itself is held
    return FolderLock(folder, fd)
