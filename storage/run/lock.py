"""Run locks: how anyone tells a live run from a dead one.

``fcntl.flock(LOCK_EX)`` on ``<run_dir>/writer.lock`` is held from *before* the run's first
manifest is written until *after* its last one is: the kernel takes it in ``open()`` and hands
the same open file to the writer process, so the lock lives as long as either of them does.
The kernel releases such a lock when the process dies, however it dies, so a ``running``
manifest whose lock can be taken belongs to a run nobody is writing. The lock file names its
owner (``pid create_time``) so a sweep can tell "the kernel is alive" from "the kernel died
and its writer is still draining". The marker sidecar holds ``markers.lock`` the same way.

Probing (:func:`writer_alive`) takes a shared lock on a read-only descriptor for an instant
and never writes. Recovery holds every lock of a run exclusively for as long as it works on it
(:func:`hold_run`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from ringtape.storage.run.layout import FILE_MODE, LOCK_NAME, MARKER_LOCK_NAME, open_regular

RUN_LOCKS = (LOCK_NAME, MARKER_LOCK_NAME)


class LockHeldError(RuntimeError):
    """Another live process holds the run's writer lock."""


class WriterLock:
    """An exclusive flock on a run's lock file, held until ``release()``."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self.path = path

    @property
    def fd(self) -> int:
        return self._fd

    @classmethod
    def acquire(
        cls, run_dir: Path, name: str = LOCK_NAME, *, wait_s: float = 0.0, create: bool = True
    ) -> WriterLock:
        """Lock ``run_dir/name``; retry for up to ``wait_s`` (a probe holds it for an instant).
        With ``create=False`` a missing lock file raises ``FileNotFoundError``."""
        path = run_dir / name
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        fd = os.open(path, flags | (os.O_CREAT if create else 0), FILE_MODE)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise LockHeldError(f"{path} is not a regular file; the run is left alone")
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return cls(fd, path)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockHeldError(f"{run_dir}: {name} is held by a live process") from None
            time.sleep(0.002)

    @classmethod
    def adopt(cls, fd: int, path: Path) -> WriterLock:
        """Take over a descriptor whose open file already holds the lock (passed by a parent)."""
        return cls(fd, path)

    def record_owner(self, pid: int | None = None) -> None:
        """Write ``pid create_time`` of the owning kernel into the lock file."""
        pid = os.getpid() if pid is None else pid
        created = psutil.Process(pid).create_time()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{pid} {created:.3f}\n".encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def writer_alive(run_dir: Path, name: str = LOCK_NAME) -> bool:
    """True when a live process holds the run's lock ``name`` (no lock file: not alive)."""
    try:
        fd = os.open(run_dir / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False  # not a lock ringtape made (a FIFO, say): nobody holds it
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)
    return False


def owner_alive(run_dir: Path) -> bool:
    """Whether the kernel named in ``writer.lock`` still runs (unknown owner: assume it does)."""
    try:
        pid_text, created_text = open_regular(run_dir / LOCK_NAME, 64).decode().split()
        pid, created = int(pid_text), float(created_text)
    except (OSError, ValueError, UnicodeDecodeError):
        return True
    try:
        return bool(abs(psutil.Process(pid).create_time() - created) < 0.01)
    except psutil.Error:
        return False


@contextlib.contextmanager
def hold_run(run_dir: Path, *, orphan_wait_s: float = 10.0) -> Iterator[None]:
    """Hold every lock of a run exclusively, or raise ``LockHeldError`` if the run is live.

    When the lock is held but its owning kernel is dead, the writer is still draining what
    the kernel published: wait (up to ``orphan_wait_s``) for it to finish rather than call
    the run live.
    """
    wait = 0.0 if owner_alive(run_dir) else orphan_wait_s
    held: list[WriterLock] = []
    try:
        for name in RUN_LOCKS:
            try:  # no lock file: nobody ever wrote this stream live (nothing to hold)
                lock = WriterLock.acquire(run_dir, name, wait_s=max(wait, 0.05), create=False)
            except FileNotFoundError:
                continue
            held.append(lock)
        yield
    finally:
        for lock in held:
            lock.release()
