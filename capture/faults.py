"""Fault injection for the writer process: how tests make disks fail and processes die at
chosen points. Production stores never set it; every hook is a no-op when the plan is empty.

Crash points (``crash_at``) are named places in the writer where it SIGKILLs itself, so a test
gets a real crash at an exact step of the protocol:

- ``after_write``      frames written, before the fdatasync (group commit not durable)
- ``after_fsync``      fdatasync done, before the durable seq is published
- ``after_publish``    durable seq published (the next poll would continue)
- ``mid_frame_write``  half of a frame's bytes written (a torn tail on disk)

``hang_at`` names the same points but sleeps forever there instead (a stalled disk).

``kernel_crash_at`` names points in the kernel process itself (the store), for the crash
matrix: ``blob_mid_write`` (half a snapshot blob written), ``seal_before_manifest``
(``RunEnded`` durable, manifest not yet ``ended``) and ``manifest_before_rename`` (the new
manifest written to its temp file, not yet renamed over the old one).
``crash_after_commits`` delays the crash/hang until that many group commits have happened.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

CRASH_POINTS: Final = ("after_write", "after_fsync", "after_publish", "mid_frame_write")
KERNEL_CRASH_POINTS: Final = ("blob_mid_write", "seal_before_manifest", "manifest_before_rename")


@dataclass(frozen=True)
class FaultPlan:
    crash_at: str | None = None
    hang_at: str | None = None
    crash_after_commits: int = 0
    enospc_after_bytes: int | None = None
    eio_after_bytes: int | None = None
    kernel_crash_at: str | None = None

    def __post_init__(self) -> None:
        for point in (self.crash_at, self.hang_at):
            if point is not None and point not in CRASH_POINTS:
                raise ValueError(f"unknown fault point {point!r}; one of {CRASH_POINTS}")
        if self.kernel_crash_at is not None and self.kernel_crash_at not in KERNEL_CRASH_POINTS:
            raise ValueError(
                f"unknown kernel fault point {self.kernel_crash_at!r}; one of {KERNEL_CRASH_POINTS}"
            )

    @property
    def writer_plan(self) -> FaultPlan:
        """The part of the plan the writer process acts on."""
        return FaultPlan(
            self.crash_at,
            self.hang_at,
            self.crash_after_commits,
            self.enospc_after_bytes,
            self.eio_after_bytes,
        )

    def kernel_point(self, name: str) -> None:
        """In the kernel process: die here if the plan says so."""
        if self.kernel_crash_at == name:
            os.kill(os.getpid(), signal.SIGKILL)

    def kernel_partial_write(self, name: str) -> Callable[[int, bytes], None] | None:
        """A write hook that writes half the bytes and dies, when ``name`` is the crash point."""
        if self.kernel_crash_at != name:
            return None

        def half_then_die(fd: int, data: bytes) -> None:
            os.write(fd, data[: max(1, len(data) // 2)])
            os.fsync(fd)
            os.kill(os.getpid(), signal.SIGKILL)

        return half_then_die

    @property
    def empty(self) -> bool:
        return self == FaultPlan()


class FaultInjector:
    """The writer's view of a plan: counts bytes and commits, fires at the chosen point."""

    def __init__(self, plan: FaultPlan) -> None:
        self._plan = plan
        self._written = 0
        self.commits = 0

    def guard_write(self, fd: int, data: bytes) -> None:
        """Before ``data`` is written to ``fd``: raise the errno a full or failing disk would
        once the byte budget is spent, or write half of it and die (``mid_frame_write``)."""
        self._written += len(data)
        p = self._plan
        if p.crash_at == "mid_frame_write" and self.commits >= p.crash_after_commits:
            os.write(fd, data[: max(1, len(data) // 2)])
            os.kill(os.getpid(), signal.SIGKILL)
        if p.enospc_after_bytes is not None and self._written > p.enospc_after_bytes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if p.eio_after_bytes is not None and self._written > p.eio_after_bytes:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    def point(self, name: str) -> None:
        p = self._plan
        if self.commits < p.crash_after_commits:
            return
        if p.crash_at == name:
            os.kill(os.getpid(), signal.SIGKILL)
        if p.hang_at == name:
            while True:
                time.sleep(3600)
