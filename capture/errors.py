"""Errors and halt reasons of the live store.

A halt is fail-stop: once the store halts, every later ``append`` raises :class:`StoreHalted`
carrying the reason, and the run is left ``running`` for the next boot's recovery sweep.
"""

from __future__ import annotations

import errno as errno_mod
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class HaltReason:
    """Why the store stopped accepting entries."""

    kind: str  # "BackpressureStall" | "WriterDied" | "BackendDisk" | "WriterError" | "AnchorStall"
    detail: str
    errno: int | None = None
    stalled_for_s: float | None = None
    threshold_s: float | None = None

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"

    @classmethod
    def backpressure(cls, stalled_for_s: float, threshold_s: float) -> HaltReason:
        return cls(
            "BackpressureStall",
            f"ring full for {stalled_for_s * 1e3:.1f} ms (threshold {threshold_s * 1e3:.1f} ms)",
            stalled_for_s=stalled_for_s,
            threshold_s=threshold_s,
        )

    @classmethod
    def disk(cls, err: int, detail: str) -> HaltReason:
        name = errno_mod.errorcode.get(err, str(err))
        return cls("BackendDisk", f"{name} ({os.strerror(err)}): {detail}", errno=err)


DISK_ERRNOS = frozenset({errno_mod.ENOSPC, errno_mod.EIO, errno_mod.EDQUOT, errno_mod.EFBIG})


class EventStoreError(RuntimeError):
    """Base class of the store's errors."""


class StoreHalted(EventStoreError):
    """``append`` after a halt: nothing was written, the entry was not accepted."""

    def __init__(self, reason: HaltReason) -> None:
        super().__init__(f"event store halted: {reason}")
        self.reason = reason


class StoreNotOpen(EventStoreError):
    """``append`` before ``open`` or after ``seal``."""


class RunStartedTimeout(EventStoreError):
    """``RunStarted`` was not durable within ``run_started_timeout``."""


class WrongThread(EventStoreError):
    """A call from a thread other than the store's producer thread; nothing was written."""


class EntryTooLarge(EventStoreError, ValueError):
    """An entry larger than the ring (or the format) accepts; nothing was written."""


class ReplayError(EventStoreError):
    """The replay source cannot be used (missing, quarantined, damaged)."""


class AnchorRefused(EventStoreError):
    """A snapshot anchor behind the previous anchor (anchors never go backwards)."""
