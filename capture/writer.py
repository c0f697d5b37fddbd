"""The writer process: drains the ring into segment files and publishes the durable seq.

Loop, top to bottom:

1. Poll ``WRITE_SEQ``. Nothing new: idle through the wait strategy (spin, yield, then sleep
   with ``CONSUMER_SLEEPING`` set so the producer rings the doorbell).
2. Something new: the batch closes when ``max_batch_entries`` are waiting, when
   ``max_batch_latency`` has passed since the writer first saw its first entry, or at once when
   a close is requested.
3. Commit: take everything published (bounded by ``GROUP_BYTES``), one frame per
   ``max_batch_entries``, append them all, one ``fdatasync`` (group commit), then publish
   ``DURABLE_SEQ``. The ring's record bytes are the frame's entry bytes: per batch the work is a
   few numpy calls, one compress, one hash and one write per frame.
   Memory ordering: Python has no fences. The sleep handshake (set ``CONSUMER_SLEEPING``, look
   at the ring once more, then sleep) could in theory miss a bell if a store and a load cross
   in a store buffer; the sleep is therefore bounded (50 ms), which bounds the cost of that
   race to one late batch. Record validation (seq, length, position chain) never relies on
   ordering it cannot check.
4. Stop when the producer's close request is durable (``CLOSED``), when the kernel process is
   gone (drain what was published; the run stays ``running`` for the recovery sweep), or on a
   disk error (``FAILED`` with the errno in the control block: the store halts).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ringtape.capture.child import (
    EXIT_ATTACH_FAILED,
    EXIT_OK,
    describe_failure,
    ignore_group_signals,
    read_child_args,
    spawn_child,
)
from ringtape.capture.control import report_failure
from ringtape.capture.doorbell import DoorbellListener
from ringtape.capture.faults import FaultInjector, FaultPlan
from ringtape.capture.ring import (
    BYTES_RAW,
    BYTES_STORED,
    CLOSE_REQUEST,
    CONSUMER_SLEEPING,
    DURABLE_SEQ,
    FRAMES_WRITTEN,
    STATE_CLOSED,
    STATE_FAILED,
    STATE_RUNNING,
    SYNCS,
    WRITER_ERRNO,
    WRITER_HEARTBEAT_NS,
    WRITER_PID,
    WRITER_STATE,
    Batch,
    RingConsumer,
    RingGeometry,
    RingViews,
    stamp_publish_time,
)
from ringtape.capture.shm import SharedRegion
from ringtape.capture.wait import BackoffWait
from ringtape.storage.format.frame import STREAM_EVENTS
from ringtape.storage.run.layout import LOCK_NAME
from ringtape.storage.run.lock import WriterLock
from ringtape.storage.segment.writer import SegmentWriter

GROUP_BYTES: Final = 16 * 1024 * 1024
GROUP_ENTRIES: Final = 8192
BATCH_POLL_S: Final = 0.0002


@dataclass(frozen=True)
class WriterArgs:
    """Everything the spawned writer needs; plain values so it pickles."""

    shm_name: str
    capacity: int
    run_dir: str
    run_id: str
    doorbell: bytes
    parent_pid: int
    max_batch_entries: int
    max_batch_latency_s: float
    segment_max_bytes: int
    compression_level: int
    publish_clock: str = "wall"  # "wall", or "ts_init" to copy ts_init (backtests)
    lock_fd: int = -1  # the run's writer.lock, already locked by the kernel and passed down
    faults: FaultPlan = field(default_factory=FaultPlan)


class WriterLoop:
    def __init__(
        self,
        args: WriterArgs,
        views: RingViews,
        segments: SegmentWriter,
        doorbell: DoorbellListener,
        faults: FaultInjector,
    ) -> None:
        self.args = args
        self.v = views
        self.ring = RingConsumer(views)
        self.segments = segments
        self.doorbell = doorbell
        self.faults = faults
        self.wait = BackoffWait(self._sleep)
        self.stop_requested = False
        self.empty_at = time.monotonic()

    def parent_gone(self) -> bool:
        return self.stop_requested or os.getppid() != self.args.parent_pid

    def _sleep(self, timeout: float) -> None:
        ctrl = self.v.ctrl
        ctrl[CONSUMER_SLEEPING] = 1
        # Re-check after announcing sleep: an entry published just before would get no bell.
        if not self.ring.has(self.ring.read_seq + 1) and not ctrl[CLOSE_REQUEST]:
            self.doorbell.wait(timeout)
        # Whatever is published now was published while we slept: most likely just now.
        self.empty_at = time.monotonic()
        ctrl[CONSUMER_SLEEPING] = 0
        ctrl[WRITER_HEARTBEAT_NS] = time.monotonic_ns()

    def run(self) -> None:
        ctrl = self.v.ctrl
        streak = 0
        while True:
            if self.ring.has(self.ring.read_seq + 1):
                streak = 0
                self._close_batch()
                self._commit()
                continue
            self.empty_at = time.monotonic()
            close = int(ctrl[CLOSE_REQUEST])
            if close and self.ring.read_seq >= close:
                ctrl[WRITER_STATE] = STATE_CLOSED
                return
            if self.parent_gone():
                return  # everything published is durable; the sweep seals the run
            streak += 1
            self.wait.idle(streak)

    def _close_batch(self) -> None:
        """Wait until the batch should close (count, latency, close request or orphaned).

        The latency runs from the batch's first entry. The writer cannot see when that was
        appended, only that it came after the ring was last seen empty (``empty_at``: the last
        empty poll, or the last take of the previous commit), so it counts from then: a batch
        may close a little early, never late — entries that arrived during a long fdatasync
        do not wait another full latency.
        """
        deadline = self.empty_at + self.args.max_batch_latency_s
        # A batch larger than the ring can never fill: then only the latency closes it.
        want = self.ring.read_seq + min(self.args.max_batch_entries, self.args.capacity)
        ctrl = self.v.ctrl
        while (
            not self.ring.has(want)
            and not ctrl[CLOSE_REQUEST]
            and (remaining := deadline - time.monotonic()) > 0
            and not self.parent_gone()
        ):
            time.sleep(min(remaining, BATCH_POLL_S))

    def _commit(self) -> None:
        """Take what is published (group commit), write frames, fdatasync, publish.

        The group is what was published when the commit started: another take follows only
        when the last one came back full (a backlog). Chasing a producer that keeps
        publishing would postpone the fdatasync, and the durable seq with it, indefinitely.
        """
        ctrl = self.v.ctrl
        last = 0
        taken = 0
        full = min(GROUP_ENTRIES, self.args.capacity)
        while taken < GROUP_BYTES:
            self.empty_at = time.monotonic()  # what this take leaves behind is newer than this
            batch = self.ring.take(full, GROUP_BYTES - taken)
            if batch is None:
                break  # nothing more is published (or not fully visible yet)
            self._append(batch)
            taken += len(batch.records)
            last = batch.last_seq
            if batch.count < full:
                break
        if not last:
            os.sched_yield()
            return
        self.segments.flush()
        self.faults.point("after_write")
        self.segments.sync()
        ctrl[SYNCS] += 1
        self.faults.point("after_fsync")
        ctrl[DURABLE_SEQ] = last
        ctrl[WRITER_HEARTBEAT_NS] = time.monotonic_ns()
        self.faults.commits += 1
        self.faults.point("after_publish")

    def _append(self, batch: Batch) -> None:
        if self.args.publish_clock == "wall":
            stamp_publish_time(batch, time.time_ns())
        else:
            stamp_publish_time(batch, None)
        seg = self.segments
        stored = 0
        frames = batch.frames(self.args.max_batch_entries)
        for first_seq, records, offsets in frames:
            stored += seg.append(records, offsets, first_seq)
        ctrl = self.v.ctrl
        ctrl[FRAMES_WRITTEN] += len(frames)
        ctrl[BYTES_STORED] += stored
        ctrl[BYTES_RAW] += len(batch.records)


def _report_failure(views: RingViews, err: int, text: str) -> None:
    report_failure(
        views.ctrl, text, err, errno_word=WRITER_ERRNO, state_word=WRITER_STATE, failed=STATE_FAILED
    )


def writer_main(args: WriterArgs) -> None:
    """Entry point of the spawned writer process."""
    try:
        region = SharedRegion.attach(args.shm_name)
    except OSError as exc:
        print(f"ringtape writer: cannot attach {args.shm_name}: {exc}", file=sys.stderr)
        sys.exit(EXIT_ATTACH_FAILED)
    views = RingViews(region.buf, RingGeometry.for_capacity(args.capacity))
    views.ctrl[WRITER_PID] = os.getpid()
    run_dir = Path(args.run_dir)
    faults = FaultInjector(args.faults)
    code = EXIT_OK
    try:
        lock = WriterLock.adopt(args.lock_fd, run_dir / LOCK_NAME)
        doorbell = DoorbellListener(args.doorbell)
        segments = SegmentWriter(
            run_dir,
            args.run_id,
            "events",
            STREAM_EVENTS,
            max_segment_bytes=args.segment_max_bytes,
            compression_level=args.compression_level,
            write_guard=None if args.faults.empty else faults.guard_write,
        )
        loop = WriterLoop(args, views, segments, doorbell, faults)

        ignore_group_signals()
        views.ctrl[WRITER_STATE] = STATE_RUNNING
        loop.run()
        segments.close()
        doorbell.close()
        lock.release()
    except Exception as exc:  # the store must learn why its writer stopped
        err, text, code = describe_failure(exc)
        _report_failure(views, err, text)
    finally:
        views.release()
        region.close()
    sys.exit(code)


def spawn_writer(args: WriterArgs) -> subprocess.Popen[bytes]:
    """Start the writer process (see ``ringtape.capture.child``), passing it the locked run lock."""
    fds = (args.lock_fd,) if args.lock_fd >= 0 else ()
    return spawn_child("ringtape.capture.writer", args, pass_fds=fds)


def child_main() -> None:
    """The spawned interpreter's entry point: arguments come pickled on stdin."""
    args = read_child_args()
    assert isinstance(args, WriterArgs)
    writer_main(args)
