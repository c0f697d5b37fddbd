"""The writer lock: how anyone tells a live run from a dead one.

The writer process holds ``fcntl.flock(LOCK_EX)`` on ``<run_dir>/writer.lock`` for as long as
it may append. The kernel releases such a lock when the process dies, however it dies, so a
``running`` manifest whose lock can be taken belongs to a writer that is gone. Probing takes a
shared lock on a read-only descriptor and never writes to the run.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from storage.layout import FILE_MODE, LOCK_NAME


class LockHeldError(RuntimeError):
    """Another live process holds the run's writer lock."""


class WriterLock:
    """An exclusive, non-blocking flock on ``writer.lock``, held until ``release()``."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self.path = path

    @classmethod
    def acquire(cls, run_dir: Path, name: str = LOCK_NAME) -> WriterLock:
        """Lock ``run_dir/name`` (the marker sidecar passes ``MARKER_LOCK_NAME``)."""
        path = run_dir / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise LockHeldError(f"{run_dir} is held by a live writer") from None
            raise
        return cls(fd, path)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def writer_alive(run_dir: Path, name: str = LOCK_NAME) -> bool:
    """True when a live process holds the run's lock ``name`` (no lock file: not alive)."""
    try:
        fd = os.open(run_dir / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)
    return False
