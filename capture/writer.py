"""The writer process: drains the ring into segment files and publishes the durable seq.

Loop, top to bottom:

1. Nothing published (``RingConsumer.has`` on the next seq): idle through the wait strategy
   (``capture/wait.py``; by default an announced sleep at once: ``WAKE_SEQ`` names the next seq,
   so the producer's first append rings the doorbell, once).
2. Something published: a batch window is open since the writer last saw the ring empty (or
   last took from it). Sleep once, until ``max_batch_latency`` after that moment, asking for a
   bell only if the ring fills to half its capacity first (or a close request comes): one wake
   per batch, however many entries the producer appends meanwhile, and no system call on the
   producer's side while the batch fills.
3. Commit: take everything published (bounded by ``GROUP_BYTES``), one frame per
   ``max_batch_entries``, append them all, one ``fdatasync`` (group commit), then publish
   ``DURABLE_SEQ``. The ring's record bytes are the frame's entry bytes: per batch the work is a
   few numpy calls, one compress, one hash and one write per frame. A take that came back full
   (a backlog) commits again at once.
4. Stop when the producer's close request is durable (``CLOSED``), when the kernel process is
   gone (drain what was published; the run stays ``running`` for the recovery sweep), on a disk
   error (``FAILED`` with the errno: the store halts), or when the next record claims to be
   published but does not validate for ``halt_threshold`` (``FAILED``, kind ``InvalidRecord``,
   naming the seq and ring position): a writer never waits forever on a record.

Memory ordering: Python has no fences. The sleep handshake (set ``WAKE_SEQ``, look at the ring
once more, then sleep) could in theory miss a bell if a store and a load cross in a store
buffer; every sleep is therefore bounded (``IDLE_SLEEP_S``, or the batch deadline), which bounds
the cost of that race to one late batch. Record validation (seq, length, position chain) never
relies on ordering it cannot check.

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

import numpy as np

from ringtape.capture.blob_writer import BlobWriter
from ringtape.capture.child import ChildArgs, Spares, serve
from ringtape.capture.doorbell import DoorbellListener
from ringtape.capture.faults import FaultInjector, FaultPlan
from ringtape.capture.ring import (
    BYTES_RAW,
    BYTES_STORED,
    CLOSE_REQUEST,
    DURABLE_SEQ,
    FRAMES_WRITTEN,
    SYNCS,
    TS_BACKWARDS,
    TS_BACKWARDS_FIRST,
    WAKE_NEVER,
    WAKE_SEQ,
    WRITER_HEARTBEAT_NS,
    Batch,
    RingConsumer,
    RingGeometry,
    RingViews,
)
from ringtape.capture.wait import WAIT_STRATEGIES
from ringtape.storage.format.frame import STREAM_EVENTS
from ringtape.storage.run.layout import BLOB_DIR, LOCK_NAME, make_private_dir
from ringtape.storage.run.lock import WriterLock, write_live_stats
from ringtape.storage.segment.writer import SegmentWriter

GROUP_BYTES: Final = 16 * 1024 * 1024
GROUP_ENTRIES: Final = 8192
IDLE_SLEEP_S: Final = 0.05  # the longest idle sleep: how soon a dead kernel is noticed
INVALID_POLL_S: Final = 0.001  # how often an invalid next record is looked at again
STATS_INTERVAL_S: Final = 1.0


class InvalidRecord(RuntimeError):
    """The next record claims to be published but does not validate (and never did, for
    ``halt_threshold``): the ring holds something the producer never writes."""


@dataclass(frozen=True)
class WriterArgs(ChildArgs):
    """Everything the spawned writer needs; plain values so it pickles."""

    max_batch_entries: int = 100
    max_batch_latency_s: float = 0.005
    publish_clock: str = "wall"  # "wall", or "ts_init" to copy ts_init (backtests)
    wait: str = "sleep"  # a name in capture.wait.WAIT_STRATEGIES
    anchor_board: str = ""  # the shared region snapshots come through (capture/anchor_board.py)
    prune_blobs: bool = False  # keep only the newest anchors' blobs (SnapshotAnchored)
    halt_threshold_s: float = 0.25  # how long a record that does not validate is tolerated
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
        blobs: BlobWriter | None = None,
    ) -> None:
        self.args = args
        self.blobs = blobs
        self.v = views
        self.ring = RingConsumer(views)
        self.segments = segments
        self.doorbell = doorbell
        self.faults = faults
        self.lock = lock
        self.wait = WAIT_STRATEGIES[args.wait](self._idle_sleep)
        self.stop_requested = False
        # When the writer last saw the ring empty (or last took from it): the open batch's
        # first entry came after this, so its latency runs from here at the latest.
        self.window_start = time.monotonic()
        # Ask for a bell during a batch only when the ring is this full.
        self.half_ring = max(1, args.capacity // 2)
        self.invalid_since: float | None = None
        self.started_ns = time.time_ns()
        self.stats_due = 0.0
        views.ctrl[WRITER_HEARTBEAT_NS] = time.monotonic_ns()

    def close(self) -> None:
        if self.blobs is not None:  # every anchor whose entry was taken gets its blob first
            self.blobs.close(self.ring.read_seq)
        self.segments.close()
        self.publish_stats()
        self.doorbell.close()
        self.lock.release()

    def parent_gone(self) -> bool:
        return self.stop_requested or os.getppid() != self.args.parent_pid

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> bool:
        ctrl = self.v.ctrl
        streak = 0
        while True:
            if self.ring.has(self.ring.read_seq + 1):
                streak = 0
                self._wait_for_batch()
                self._commit()
                continue
            self.window_start = time.monotonic()
            close = int(ctrl[CLOSE_REQUEST])
            if close and self.ring.read_seq >= close:
                return True  # serve() says CLOSED once the segments are closed
            if self.parent_gone():
                return False  # everything published is durable; the sweep seals the run
            streak += 1
            self.wait.idle(streak)

    def _sleep_until(self, wake: int, timeout: float) -> None:
        """Sleep at most ``timeout`` s, asking the producer to ring once seq ``wake`` is
        published (or the kernel to ring with a close request)."""
        ctrl = self.v.ctrl
        ctrl[WAKE_SEQ] = wake
        # Look again after asking for a bell: a record published just before would ring none.
        if not self.ring.has(wake) and not ctrl[CLOSE_REQUEST]:
            self.doorbell.wait(timeout)
        ctrl[WAKE_SEQ] = WAKE_NEVER
        ctrl[WRITER_HEARTBEAT_NS] = time.monotonic_ns()

    def _idle_sleep(self, timeout: float) -> None:
        """The wait strategy's announced sleep: until the next seq is published."""
        problem = self._check_next_record()
        if problem:  # look again soon: an invalid record rings no bell
            timeout = min(timeout, INVALID_POLL_S)
        self._sleep_until(self.ring.read_seq + 1, min(timeout, IDLE_SLEEP_S))
        # Whatever is published now was published while we slept: most likely just now.
        self.window_start = now = time.monotonic()
        if self.blobs is not None:  # a slot filled after its entry was taken (the kernel rings)
            self.blobs.poll(self.ring.read_seq)
        if now >= self.stats_due:
            self.publish_stats()

    def _wait_for_batch(self) -> None:
        """One timed sleep until the open batch must close: ``max_batch_latency`` after the
        window opened, sooner if the ring fills to half, a close is requested, or the kernel
        is gone."""
        deadline = self.window_start + self.args.max_batch_latency_s
        ctrl = self.v.ctrl
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or ctrl[CLOSE_REQUEST] or self.parent_gone():
                return
            wake = self.ring.read_seq + self.half_ring
            if self.ring.has(wake):
                return
            self._sleep_until(wake, min(remaining, IDLE_SLEEP_S))

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
            self.window_start = time.monotonic()  # what this take leaves is newer than this
            publish = time.time_ns() if self.args.publish_clock == "wall" else None
            batch = self.ring.take(full, GROUP_BYTES - taken, publish)
            if batch is None:
                break  # nothing more is published (or not fully visible yet)
            self._append(batch)
            taken += len(batch.records)
            last = batch.last_seq
            if batch.count < full:
                break
        if not last:
            # has() saw the next record but take() would not have it: it does not validate.
            self._check_next_record()
            time.sleep(INVALID_POLL_S)
            return
        self.invalid_since = None
        self.segments.flush()
        self.faults.point("after_write")
        self.segments.sync()
        ctrl[SYNCS] += 1
        self.faults.point("after_fsync")
        ctrl[DURABLE_SEQ] = last
        ctrl[WRITER_HEARTBEAT_NS] = time.monotonic_ns()
        self.faults.commits += 1
        self.faults.point("after_publish")
        if self.blobs is not None:
            self.blobs.poll(self.ring.read_seq)
        if self.window_start >= self.stats_due:
            self.publish_stats()

    def _check_next_record(self) -> str | None:
        """Whether the next record claims to be published but does not validate; raises
        ``InvalidRecord`` once that has lasted ``halt_threshold``."""
        problem = self.ring.frontier_problem()
        if problem is None:
            self.invalid_since = None
            return None
        now = time.monotonic()
        if self.invalid_since is None:
            self.invalid_since = now
        elif now - self.invalid_since >= self.args.halt_threshold_s:
            raise InvalidRecord(problem)
        return problem

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
            "ts_init_backwards": int(ctrl[TS_BACKWARDS]),
        }
        write_live_stats(self.lock, json.dumps(stats, separators=(",", ":")))

    def _append(self, batch: Batch) -> None:
        if batch.ts_backwards:
            ctrl = self.v.ctrl
            if not ctrl[TS_BACKWARDS]:
                ctrl[TS_BACKWARDS_FIRST] = batch.ts_backwards_first
            ctrl[TS_BACKWARDS] += batch.ts_backwards
        seg = self.segments
        stored = 0
        frames = batch.frames(self.args.max_batch_entries)
        back = batch.ts_backwards_seqs if batch.ts_backwards else None
        for first_seq, records, offsets in frames:
            k = 0
            if back is not None:  # the checkpoint counts them per segment
                k = int(np.count_nonzero((back >= first_seq) & (back < first_seq + len(offsets))))
            index = batch.frame_index(first_seq, len(offsets))
            stored += seg.append(records, offsets, first_seq, index=index, ts_backwards=k)
        ctrl = self.v.ctrl
        ctrl[FRAMES_WRITTEN] += len(frames)
        ctrl[BYTES_STORED] += stored
        ctrl[BYTES_RAW] += len(batch.records)


def writer_main(args: WriterArgs, fds: tuple[int, ...]) -> None:
    """The writer process (``capture/child.py`` starts it): drain the ring until told to stop.
    ``fds[0]`` is the run's ``writer.lock``, locked by the kernel: the same open file, so the
    lock lives as long as either process does."""

    def setup(views: RingViews) -> WriterLoop:
        run_dir = Path(args.run_dir)
        faults = FaultInjector(args.faults)
        lock = WriterLock.adopt(fds[0], run_dir / LOCK_NAME)
        segments = SegmentWriter(
            run_dir,
            args.run_id,
            "events",
            STREAM_EVENTS,
            max_segment_bytes=args.segment_max_bytes,
            compression_level=args.compression_level,
            write_guard=None if args.faults.empty else faults.guard_write,
            sync_guard=None if args.faults.empty else faults.guard_sync,
        )
        blobs = None
        if args.anchor_board:
            # Made (and its name fsynced) here, before this process claims anything durable,
            # rather than by the blob thread while this one commits.
            make_private_dir(run_dir / BLOB_DIR)
            blobs = BlobWriter(
                args.anchor_board, run_dir, args.run_id, faults, prune=args.prune_blobs
            )
        doorbell = DoorbellListener(args.doorbell)
        return WriterLoop(args, views, segments, doorbell, faults, lock, blobs)

    geometry = RingGeometry.for_capacity(args.capacity)
    serve("writer", args, lambda buf: RingViews(buf, geometry), setup)


def spawn_writer(args: WriterArgs, lock_fd: int, spares: Spares) -> subprocess.Popen[bytes]:
    """Start the writer process (a spare if one is ready), passing it the run lock the kernel
    holds."""
    return spares.spawn(__name__, "writer_main", args, fds=(lock_fd,))
