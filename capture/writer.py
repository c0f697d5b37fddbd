"""The writer process: drains the ring into segment files and publishes the durable seq.

Loop, top to bottom:

1. Look at the next seq's index slot (``RingConsumer.has``). Nothing published: idle through
   the wait strategy (``capture/wait.py``: spin, yield, then sleep with ``WAKE_SEQ`` set
   so that the producer rings the doorbell).
2. Something new: the batch closes when ``max_batch_entries`` are waiting, when
   ``max_batch_latency`` has passed since the writer first saw its first entry, or at once when
   a close is requested.
3. Commit: take everything published (bounded by ``GROUP_BYTES``), one frame per
   ``max_batch_entries``, append them all, one ``fdatasync`` (group commit), then publish
   ``DURABLE_SEQ``. The ring's record bytes are the frame's entry bytes: per batch the work is a
   few numpy calls, one compress, one hash and one write per frame.
   Memory ordering: Python has no fences. The sleep handshake (set ``WAKE_SEQ``, look
   at the ring once more, then sleep) could in theory miss a bell if a store and a load cross
   in a store buffer; the sleep is therefore bounded (50 ms), which bounds the cost of that
   race to one late batch. Record validation (seq, length, position chain) never relies on
   ordering it cannot check.
4. Stop when the producer's close request is durable (``CLOSED``), when the kernel process is
   gone (drain what was published; the run stays ``running`` for the recovery sweep), or on a
   disk error (``FAILED`` with the errno in the control block: the store halts).

Once a second (checked when it commits or wakes) the writer mirrors its totals into the second
line of ``writer.lock`` (FORMAT.md, "writer.lock"), for ``ringtape inspect`` of a live run.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ringtape.capture.child import ChildArgs, serve, spawn_child
from ringtape.capture.control import STATE_CLOSED
from ringtape.capture.doorbell import DoorbellListener
from ringtape.capture.faults import FaultInjector, FaultPlan
from ringtape.capture.ring import (
    BYTES_RAW,
    BYTES_STORED,
    CLOSE_REQUEST,
    DURABLE_SEQ,
    FRAMES_WRITTEN,
    SYNCS,
    WAKE_NEVER,
    WAKE_SEQ,
    WRITER_HEARTBEAT_NS,
    WRITER_STATE,
    Batch,
    RingConsumer,
    RingGeometry,
    RingViews,
    stamp_publish_time,
)
from ringtape.capture.wait import WAIT_STRATEGIES
from ringtape.storage.format.frame import STREAM_EVENTS
from ringtape.storage.run.layout import LOCK_NAME
from ringtape.storage.run.lock import WriterLock, write_live_stats
from ringtape.storage.segment.writer import SegmentWriter

GROUP_BYTES: Final = 16 * 1024 * 1024
GROUP_ENTRIES: Final = 8192
BATCH_POLL_S: Final = 0.0002


STATS_INTERVAL_S: Final = 1.0


@dataclass(frozen=True)
class WriterArgs(ChildArgs):
    """Everything the spawned writer needs; plain values so it pickles."""

    max_batch_entries: int = 100
    max_batch_latency_s: float = 0.005
    publish_clock: str = "wall"  # "wall", or "ts_init" to copy ts_init (backtests)
    lock_fd: int = -1  # the run's writer.lock, already locked by the kernel and passed down
    wait: str = "backoff"  # a name in capture.wait.WAIT_STRATEGIES
    faults: FaultPlan = field(default_factory=FaultPlan)


class WriterLoop:
    def __init__(
        self,
        args: WriterArgs,
        views: RingViews,
        segments: SegmentWriter,
        doorbell: DoorbellListener,
        faults: FaultInjector,
        lock: WriterLock,
    ) -> None:
        self.args = args
        self.v = views
        self.ring = RingConsumer(views)
        self.segments = segments
        self.doorbell = doorbell
        self.faults = faults
        self.lock = lock
        self.wait = WAIT_STRATEGIES[args.wait](self._sleep)
        self.stop_requested = False
        self.empty_at = time.monotonic()
        self.started_ns = time.time_ns()
        self.stats_due = 0.0
        views.ctrl[WRITER_HEARTBEAT_NS] = time.monotonic_ns()

    def close(self) -> None:
        self.segments.close()
        self.publish_stats()
        self.doorbell.close()
        self.lock.release()

    def parent_gone(self) -> bool:
        return self.stop_requested or os.getppid() != self.args.parent_pid

    def _sleep(self, timeout: float) -> None:
        ctrl = self.v.ctrl
        wake = self.ring.read_seq + 1
        ctrl[WAKE_SEQ] = wake
        # Re-check after asking for a bell: an entry published just before would ring none.
        if not self.ring.has(wake) and not ctrl[CLOSE_REQUEST]:
            self.doorbell.wait(timeout)
        # Whatever is published now was published while we slept: most likely just now.
        self.empty_at = now = time.monotonic()
        ctrl[WAKE_SEQ] = WAKE_NEVER
        ctrl[WRITER_HEARTBEAT_NS] = time.monotonic_ns()
        if now >= self.stats_due:
            self.publish_stats()

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
        if self.empty_at >= self.stats_due:
            self.publish_stats()

    def publish_stats(self) -> None:
        """Mirror the writer's totals into ``writer.lock`` (for ``ringtape inspect``)."""
        ctrl = self.v.ctrl
        self.stats_due = time.monotonic() + STATS_INTERVAL_S
        published = self.ring.published_seq()
        stats = {
            "started_ns": self.started_ns,
            "updated_ns": time.time_ns(),
            "capacity": self.args.capacity,
            "taken_seq": self.ring.read_seq,
            "published_seq": published,
            "durable_seq": int(ctrl[DURABLE_SEQ]),
            "commits": int(ctrl[SYNCS]),
            "frames": int(ctrl[FRAMES_WRITTEN]),
            "bytes_raw": int(ctrl[BYTES_RAW]),
            "bytes_stored": int(ctrl[BYTES_STORED]),
        }
        write_live_stats(self.lock, json.dumps(stats, separators=(",", ":")))

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


def writer_main(args: WriterArgs) -> None:
    """The writer process (``capture/child.py`` starts it): drain the ring until told to stop."""

    def setup(views: RingViews) -> WriterLoop:
        run_dir = Path(args.run_dir)
        faults = FaultInjector(args.faults)
        lock = WriterLock.adopt(args.lock_fd, run_dir / LOCK_NAME)
        segments = SegmentWriter(
            run_dir,
            args.run_id,
            "events",
            STREAM_EVENTS,
            max_segment_bytes=args.segment_max_bytes,
            compression_level=args.compression_level,
            write_guard=None if args.faults.empty else faults.guard_write,
        )
        return WriterLoop(args, views, segments, DoorbellListener(args.doorbell), faults, lock)

    geometry = RingGeometry.for_capacity(args.capacity)
    serve("writer", args, lambda buf: RingViews(buf, geometry), setup)


def spawn_writer(args: WriterArgs) -> subprocess.Popen[bytes]:
    """Start the writer process, passing it the run lock the kernel holds."""
    fds = (args.lock_fd,) if args.lock_fd >= 0 else ()
    return spawn_child(__name__, "writer_main", args, pass_fds=fds)
