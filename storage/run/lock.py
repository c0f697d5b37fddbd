"""Run locks: how anyone tells a live run from a dead one.

``fcntl.flock(LOCK_EX)`` on ``<run_dir>/writer.lock`` is held from *before* the run's first
manifest is written until *after* its last one is: the kernel takes it in ``open()`` and hands
the same open file to the writer process, so the lock lives as long as either of them does.
The kernel releases such a lock when the process dies, however it dies, so a ``running``
manifest whose lock can be taken belongs to a run nobody is writing. The lock file's first line
names its owner (``pid create_time``) so that a sweep can tell "the kernel is alive" from "the
kernel died and its writer is still draining"; its second line is the writer's live totals
(for ``ringtape inspect``). The marker sidecar holds ``markers.lock`` the same way.

Probing (:func:`writer_alive`) takes a shared lock on a read-only descriptor for an instant
and never writes. Recovery holds every lock of a run exclusively for as long as it works on it
(:func:`hold_run`). Whether a process is alive is not this package's to know: the caller passes
that test in (``capture/liveness.py`` has it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ringtape.storage.run.layout import (
    FILE_MODE,
    LOCK_NAME,
    MARKER_LOCK_NAME,
    fsync_dir,
    open_regular,
)

RUN_LOCKS = (LOCK_NAME, MARKER_LOCK_NAME)
MAX_LOCK_FILE_BYTES = 4096

# Whether the kernel that owns a run (``run_dir``) is still alive.
OwnerAlive = Callable[[Path], bool]


class LockHeldError(RuntimeError):
    """Another live process holds the run's writer lock."""


class LockFileError(RuntimeError):
    """The lock file is not a regular file (a FIFO, a device): nobody can hold it, nobody may
    act on the run; the sweep reports it as skipped rather than as live."""


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
        try:
            fd = os.open(path, flags | (os.O_CREAT | os.O_EXCL if create else 0), FILE_MODE)
        except FileExistsError:
            fd = os.open(path, flags, FILE_MODE)
        else:
            if create:  # a new lock file: its name must survive a power loss like the run's
                try:
                    fsync_dir(run_dir)
                except BaseException:
                    os.close(fd)
                    raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise LockFileError(f"{path} is not a regular file; the run is left alone")
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

    def record_owner(self, pid: int, created: float) -> None:
        """Write the owning kernel's ``pid create_time`` as the lock file's first line."""
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


def read_owner(run_dir: Path) -> tuple[int, float] | None:
    """``(pid, create_time)`` from the first line of ``writer.lock`` (``None``: unknown)."""
    try:
        first = open_regular(run_dir / LOCK_NAME, MAX_LOCK_FILE_BYTES).split(b"\n", 1)[0]
        pid_text, created_text = first.decode().split()
        return int(pid_text), float(created_text)
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def write_live_stats(lock: WriterLock, line: str) -> None:
    """Put ``line`` (one line of JSON, the writer's totals) after the owner line."""
    first = os.pread(lock.fd, MAX_LOCK_FILE_BYTES, 0).split(b"\n", 1)[0]
    data = first + b"\n" + line.encode() + b"\n"
    os.pwrite(lock.fd, data, 0)
    os.ftruncate(lock.fd, len(data))


def read_live_stats(run_dir: Path) -> str | None:
    """The second line of ``writer.lock``, as the writer last wrote it (``None``: none)."""
    try:
        lines = open_regular(run_dir / LOCK_NAME, MAX_LOCK_FILE_BYTES).split(b"\n")
    except OSError:
        return None
    if len(lines) < 2 or not lines[1]:
        return None
    return lines[1].decode("utf-8", "replace")


@contextlib.contextmanager
def hold_run(
    run_dir: Path, *, orphan_wait_s: float = 10.0, owner_alive: OwnerAlive | None = None
) -> Iterator[None]:
    """Hold every lock of a run exclusively, or raise ``LockHeldError`` if the run is live.

    When the lock is held but its owning kernel is dead (``owner_alive`` says so; without it
    the owner is assumed alive), the writer is still draining what the kernel published: wait
    (up to ``orphan_wait_s``) for it to finish rather than call the run live.
    """
    dead = owner_alive is not None and not owner_alive(run_dir)
    wait = orphan_wait_s if dead else 0.0
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
