"""Fault injection for the writer process: how tests make disks fail and processes die at
chosen points. Production stores never set it; every hook is a no-op when the plan is empty.

Crash points (``crash_at``) are named places in the writer where it SIGKILLs itself, so a test
gets a real crash at an exact step of the protocol:

- ``after_write``      frames written, before the fdatasync (group commit not durable)
- ``after_fsync``      fdatasync done, before the durable seq is published
- ``after_publish``    durable seq published (the next poll would continue)
- ``mid_frame_write``  half of a frame's bytes written (a torn tail on disk)

``hang_at`` names the same points but sleeps forever there instead (a stalled disk).

``blob_crash_at`` names points in the writer's blob thread, for the anchor ``crash_anchor``
(its entry is durable at each of them): ``blob_taken`` (the slot taken, nothing of the blob
written), ``blob_mid_write`` (half a blob file written and synced, not renamed) and
``blob_durable`` (the blob renamed and synced, its result not yet reported to the kernel).
``blob_write_delay_s`` makes every blob write slow.

``sync_eio_after_commits`` makes the fdatasync of the group commit after that many commits fail
with EIO, as a failing disk's does (PostgreSQL's "fsyncgate": the kernel may drop the dirty pages
and report the error once). The writer must halt on it, never retry.

``kernel_crash_at`` names points in the kernel process itself (the store), for the crash
matrix: ``open_before_manifest`` (the run directory and its lock made, no manifest yet: an
open that never becomes durable), ``seal_before_manifest`` (``RunEnded`` durable, manifest not
yet ``ended``), ``manifest_before_rename`` (the new manifest written to its temp file, not yet
renamed over the old one) and ``anchor_before_entry`` (a snapshot copied to its anchor slot, its
entry not yet appended; for the anchor ``crash_anchor``).
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

from ringtape.storage.format.frame import FormatError, decode_frame_header


def torn_length(data: bytes) -> int:
    """How much of a write of whole frames, end to end, a crash mid-frame leaves: up to half
    of the frame that holds the middle byte. Half of ``data`` itself can fall exactly between
    two frames of the same size, which tears nothing. Anything else (a segment header): half."""
    middle, pos = len(data) // 2, 0
    try:
        while pos < len(data):
            size = decode_frame_header(data, pos).size
            if pos + size > middle:
                return pos + max(1, size // 2)
            pos += size
    except FormatError:
        pass
    return max(1, middle)


CRASH_POINTS: Final = ("after_write", "after_fsync", "after_publish", "mid_frame_write")
BLOB_CRASH_POINTS: Final = ("blob_taken", "blob_mid_write", "blob_durable")
KERNEL_CRASH_POINTS: Final = (
    "open_before_manifest",
    "seal_before_manifest",
    "manifest_before_rename",
    "anchor_before_entry",
)


@dataclass(frozen=True)
class FaultPlan:
    crash_at: str | None = None
    hang_at: str | None = None
    crash_after_commits: int = 0
    enospc_after_bytes: int | None = None
    eio_after_bytes: int | None = None
    kernel_crash_at: str | None = None
    blob_crash_at: str | None = None  # in the writer's blob thread (BLOB_CRASH_POINTS)
    crash_anchor: int = 1  # the anchor id the blob and anchor crash points hit
    blob_write_delay_s: float = 0.0  # before each write of a blob file: a slow disk
    sync_eio_after_commits: int | None = None

    def __post_init__(self) -> None:
        for point in (self.crash_at, self.hang_at):
            if point is not None and point not in CRASH_POINTS:
                raise ValueError(f"unknown fault point {point!r}; one of {CRASH_POINTS}")
        if self.blob_crash_at is not None and self.blob_crash_at not in BLOB_CRASH_POINTS:
            raise ValueError(
                f"unknown blob fault point {self.blob_crash_at!r}; one of {BLOB_CRASH_POINTS}"
            )
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
            blob_crash_at=self.blob_crash_at,
            crash_anchor=self.crash_anchor,
            blob_write_delay_s=self.blob_write_delay_s,
            sync_eio_after_commits=self.sync_eio_after_commits,
        )

    def kernel_point(self, name: str, anchor_id: int | None = None) -> None:
        """In the kernel process: die here if the plan says so (an anchor point only for the
        anchor ``crash_anchor``)."""
        if self.kernel_crash_at == name and anchor_id in (None, self.crash_anchor):
            os.kill(os.getpid(), signal.SIGKILL)

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
            os.write(fd, data[: torn_length(data)])
            os.kill(os.getpid(), signal.SIGKILL)
        if p.enospc_after_bytes is not None and self._written > p.enospc_after_bytes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if p.eio_after_bytes is not None and self._written > p.eio_after_bytes:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    def blob_write_hook(self, anchor_id: int) -> Callable[[int, bytes], None] | None:
        """Before each write of a blob file: a slow disk, or (the crash point's anchor) half
        the bytes written and synced, then death."""
        p = self._plan
        crash = p.blob_crash_at == "blob_mid_write" and anchor_id == p.crash_anchor
        if not crash and not p.blob_write_delay_s:
            return None
        writes = [0]

        def hook(fd: int, data: bytes) -> None:
            if p.blob_write_delay_s:
                time.sleep(p.blob_write_delay_s)
            writes[0] += 1
            if crash and writes[0] == 2:  # the header went whole, the snapshot half
                os.write(fd, data[: max(1, len(data) // 2)])
                os.fsync(fd)
                os.kill(os.getpid(), signal.SIGKILL)

        return hook

    def blob_point(self, name: str, anchor_id: int) -> None:
        p = self._plan
        if p.blob_crash_at == name and anchor_id == p.crash_anchor:
            os.kill(os.getpid(), signal.SIGKILL)

    def guard_sync(self, fd: int) -> None:
        """Before an fdatasync of ``fd``: fail it with EIO once the commit budget is spent."""
        after = self._plan.sync_eio_after_commits
        if after is not None and self.commits >= after:
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
