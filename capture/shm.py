"""Shared-memory regions as mmaps of files under /dev/shm, outside the resource tracker.

The kernel creates the file (0600, ``O_EXCL``); the consumer process maps it by name and then
unlinks the name at once. From then on the memory lives exactly as long as some process maps
it: nothing is left in /dev/shm whoever dies first, and no ``resource_tracker`` (which on 3.11
unlinks segments it merely attached to) is ever involved. Names carry the creator's pid so a
boot can remove a leftover whose creator died before any consumer attached.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
from pathlib import Path
from typing import Final

import psutil

SHM_DIR: Final = Path("/dev/shm")
PREFIX: Final = "ringtape-"


class SharedRegion:
    """A mapped region: ``buf`` is a writable memoryview of ``size`` bytes."""

    def __init__(self, name: str, fd: int, size: int) -> None:
        self.name = name
        self.size = size
        # MAP_POPULATE: map every page now, so the hot path never takes a first-touch fault.
        self._mmap = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
        self.buf: memoryview = memoryview(self._mmap)

    @classmethod
    def create(cls, size: int, tag: str = "ring", *, name: str | None = None) -> SharedRegion:
        """A new region of ``size`` bytes, every page allocated and mapped; its name carries
        this process's pid (``name`` must too, when given)."""
        name = name or f"{PREFIX}{os.getpid()}-{tag}-{secrets.token_hex(4)}"
        fd = os.open(SHM_DIR / name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            # Allocate every page now (tmpfs is sparse): the hot path must not page-fault.
            os.posix_fallocate(fd, 0, size)
            return cls(name, fd, size)
        except BaseException:
            os.unlink(SHM_DIR / name)
            raise
        finally:
            os.close(fd)

    @classmethod
    def attach(cls, name: str, *, unlink: bool = True) -> SharedRegion:
        """Map an existing region; by default remove its name so nothing can leak it."""
        path = SHM_DIR / name
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            region = cls(name, fd, size)
        finally:
            os.close(fd)
        if unlink:
            unlink_name(name)
        return region

    def close(self) -> None:
        """Unmap. Views handed out (numpy arrays, casts) must be released first."""
        self.buf.release()
        with contextlib.suppress(BufferError):
            self._mmap.close()


def unlink_name(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(SHM_DIR / name)


def unlink_family(prefix: str) -> None:
    """Unlink every region whose name starts with ``prefix`` (the data regions of a board)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(SHM_DIR):
            if name.startswith(prefix):
                unlink_name(name)


def remove_orphans() -> list[str]:
    """Unlink ringtape regions whose creating process is gone; returns the names removed."""
    removed = []
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return []
    for name in names:
        if not name.startswith(PREFIX):
            continue
        pid_text = name[len(PREFIX) :].split("-", 1)[0]
        if pid_text.isdigit() and not psutil.pid_exists(int(pid_text)):
            unlink_name(name)
            removed.append(name)
    return removed
