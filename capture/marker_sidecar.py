"""The data-marker sidecar process: folds the marker ring into cursors and writes marker segments.

Loop, top to bottom:

1. Take what the kernel has published (validated by each record's ``rseq``, see
   capture/marker_ring.py), freeing the ring at once, and fold it in chunks. A pass ends at
   the first take that finds fewer records than it could hold: what is published during the
   pass waits for the next one, rather than being chased a few records per take.
2. Fold it (:class:`~ringtape.capture.marker_fold.MarkerFolder`, no I/O): one cursor per
   (class, instrument) stream, a ``marker.cursor`` snapshot of the advanced cursors whenever
   ``event_seq_before`` moves (an entry was appended since), one ``marker.hifi`` per message of
   a high-fidelity instrument, a ``marker.stream`` dictionary record per new stream, a
   ``marker.gap`` where observation numbers jump (the kernel dropped them on a full ring).
3. When data advanced but no snapshot was written for ``safety_flush_interval``: snapshot.
4. Write frames for what was folded; ask the :class:`Syncer` thread for an ``fdatasync`` at
   most every ``sync_interval_s`` (it publishes ``DURABLE_MARKER_SEQ``/``DURABLE_OBS`` only after
   it), so a slow disk delays durability, never draining.
5. Sleep until the next pass: ``interval_s`` (or the next safety flush), sooner only if the ring
   fills to half its capacity (``WAKE_SEQ``: the kernel rings once). Markers are not on the
   entries' durability path, so the sidecar works in a few large passes a second rather than
   chasing each record: on a 2-core machine its CPU is the trading thread's.
6. On the kernel's close request: drain up to ``FINAL_RSEQ``, a last snapshot, a trailing gap
   for drops after the last delivered observation, write, ``fdatasync``, ``CLOSED``. When the
   kernel process is gone: the same without the trailing gap; the run stays for the recovery
   sweep. A record that claims to be published but does not validate for ``stall_s`` ends the
   sidecar with a ``ProtocolError`` (the lane records ``MarkerLaneFailed``).

Durability of markers: every marker record is durable within about ``sync_interval_s`` +
``interval_s`` of its observation (1.2 s by default); ``DURABLE_MARKER_SEQ`` says exactly how far.
Process deaths lose nothing written (the page cache keeps it); a power loss may lose the last
second of markers, never an entry, and recovery cuts the marker stream's torn tail.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ringtape.capture.child import ChildArgs, Spares, serve
from ringtape.capture.doorbell import DoorbellListener
from ringtape.capture.marker_fold import MarkerFolder
from ringtape.capture.marker_ring import (
    CLOSE_REQUEST,
    DURABLE_MARKER_SEQ,
    DURABLE_OBS,
    FINAL_OBS,
    FINAL_RSEQ,
    GAP_OBSERVATIONS,
    GAP_RECORDS,
    WAKE_NEVER,
    WAKE_SEQ,
    MarkerGeometry,
    MarkerRingReader,
    MarkerViews,
    ProtocolError,
)
from ringtape.storage.format.frame import STREAM_MARKERS
from ringtape.storage.format.markers import (
    MARKER_STREAM,
    REASON_SAFETY_FLUSH,
)
from ringtape.storage.run.layout import MARKER_LOCK_NAME
from ringtape.storage.run.lock import WriterLock
from ringtape.storage.segment.writer import SegmentWriter

FOLD_CHUNK: Final = 2048
MAX_PASS: Final = 1 << 18  # records folded in one pass before the loop looks around again
FRAME_RECORDS: Final = 4096
MIN_SLEEP_S: Final = 0.001
INVALID_POLL_S: Final = 0.005  # how often an invalid next record is looked at again
SIDECAR_NICE: Final = 10


@dataclass(frozen=True)
class SidecarArgs(ChildArgs):
    """Everything the spawned sidecar needs; plain values so it pickles."""

    high_fidelity: tuple[str, ...] = ()
    safety_flush_s: float = 1.0
    # Between passes, unless the ring fills to half first. A pass has a fixed cost (a few
    # numpy calls per fold, on cold caches): at 10k observations/s, 50 ms passes cost the
    # sidecar 2.7 us per observation, 200 ms passes 2.0.
    interval_s: float = 0.2
    sync_interval_s: float = 1.0  # between fdatasyncs of the marker segments
    stall_s: float = 0.25  # how long a record that does not validate is tolerated


def spawn_sidecar(args: SidecarArgs, spares: Spares) -> subprocess.Popen[bytes]:
    """Start the sidecar process (``sidecar_main``; a spare if one is ready)."""
    return spares.spawn(__name__, "sidecar_main", args)


class Syncer:
    """fdatasync off the drain path. The loop writes frames and asks for a sync up to a mark;
    this thread syncs (holding ``io``, so no frame is written or segment rolled meanwhile) and
    only then publishes the mark as ``DURABLE_MARKER_SEQ``/``DURABLE_OBS``. A disk under
    other load can take hundreds of milliseconds for one fdatasync: the ring must not wait."""

    def __init__(self, segments: SegmentWriter, ctrl: memoryview) -> None:
        self.io = threading.Lock()
        self._segments = segments
        self._ctrl = ctrl
        self._cv = threading.Condition()
        self._mark: tuple[int, int] | None = None
        self._stopping = False
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="marker-syncer", daemon=True)
        self._thread.start()

    def request(self, mark: tuple[int, int]) -> None:
        """Make everything written so far durable, then publish ``mark`` (seq, accounted)."""
        with self._cv:
            self._mark = mark
            self._cv.notify()

    def publish(self, mark: tuple[int, int]) -> None:
        self._ctrl[DURABLE_MARKER_SEQ] = mark[0]
        self._ctrl[DURABLE_OBS] = mark[1]

    def check(self) -> None:
        """Raise the syncer's disk error, if it had one, in the loop's thread."""
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Finish the sync asked for, then end the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join()
        self.check()

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._mark is None and not self._stopping:
                    self._cv.wait()
                mark, self._mark = self._mark, None
            if mark is None:
                return
            try:
                with self.io:
                    self._segments.sync()
            except OSError as exc:
                self._error = exc
                return
            self.publish(mark)


class SidecarLoop:
    def __init__(
        self,
        args: SidecarArgs,
        views: MarkerViews,
        segments: SegmentWriter,
        doorbell: DoorbellListener,
        lock: WriterLock,
    ) -> None:
        self.args = args
        self.lock = lock
        self.ctrl = views.ctrl
        self.ring = MarkerRingReader(views)
        self.segments = segments
        self.doorbell = doorbell
        self.folder = MarkerFolder(args.high_fidelity)
        self.syncer = Syncer(segments, views.ctrl)
        self.half_ring = max(1, views.geometry.capacity // 2)
        self.sync_due = 0.0
        self.unsynced = False  # frames written since the last sync request
        self.invalid_since: float | None = None
        self.stop_requested = False

    def parent_gone(self) -> bool:
        return self.stop_requested or os.getppid() != self.args.parent_pid

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> bool:
        ctrl = self.ctrl
        folder = self.folder
        while True:
            self.syncer.check()
            took = self.drain()
            now = time.monotonic()
            if folder.dirty and now - folder.dirty_since >= self.args.safety_flush_s:
                folder.snapshot(REASON_SAFETY_FLUSH)
            if folder.out or (self.unsynced and now >= self.sync_due):
                self.commit(sync=now >= self.sync_due)
            if took >= MAX_PASS:
                continue  # behind: go round again at once
            if ctrl[CLOSE_REQUEST] and self.ring.read >= int(ctrl[FINAL_RSEQ]):
                folder.finish(int(ctrl[FINAL_OBS]))
                self.commit(final=True)
                return True  # serve() says CLOSED once the segments are closed
            if self.parent_gone():
                # Everything the kernel published before it went: the pass above stopped at
                # its first short take, and nothing will ring for the rest.
                self.drain(to_the_end=True)
                folder.finish(None)  # unknown: what the kernel dropped at the end is lost
                self.commit(final=True)
                return False
            self._sleep()

    def drain(self, *, to_the_end: bool = False) -> int:
        """Take and fold what is published, up to ``MAX_PASS`` records (``to_the_end``: all of
        it, however many takes); returns how many."""
        took = 0
        while (to_the_end or took < MAX_PASS) and (rows := self.ring.take()) is not None:
            now = time.monotonic()
            for start in range(0, len(rows), FOLD_CHUNK):
                self.folder.feed(rows[start : start + FOLD_CHUNK], now)
            took += len(rows)
            if len(rows) < self.ring.max_take and not to_the_end:
                # The frontier as of this take. What the kernel publishes meanwhile waits for
                # the next pass: chasing it here would fold a few records per take, each take
                # costing as much as a full one.
                break
        if took:
            self.invalid_since = None
        return took

    def _sleep(self) -> None:
        """Until the next pass, the next safety flush, or the ring half full (a bell)."""
        ctrl = self.ctrl
        timeout = self.args.interval_s
        if self.unsynced:
            timeout = min(timeout, max(MIN_SLEEP_S, self.sync_due - time.monotonic()))
        if self.folder.dirty:
            flush_in = self.folder.dirty_since + self.args.safety_flush_s - time.monotonic()
            timeout = min(timeout, max(MIN_SLEEP_S, flush_in))
        problem = self.ring.frontier_problem()
        if problem is not None:
            now = time.monotonic()
            self.invalid_since = self.invalid_since or now
            if now - self.invalid_since >= self.args.stall_s:
                raise ProtocolError(problem)
            timeout = min(timeout, INVALID_POLL_S)
        wake = self.ring.read + self.half_ring
        ctrl[WAKE_SEQ] = wake
        # Look again after asking for a bell: records published just before would ring none.
        if not self.ring.has(wake) and not ctrl[CLOSE_REQUEST]:
            self.doorbell.wait(timeout)
        ctrl[WAKE_SEQ] = WAKE_NEVER

    def close(self) -> None:
        self.segments.close()
        self.doorbell.close()
        self.lock.release()

    def commit(self, *, sync: bool = False, final: bool = False) -> None:
        """Write frames for everything folded; with ``sync``, hand a sync to the syncer (if it
        is inside an fdatasync already, the frames wait in memory and the loop goes on
        draining the ring). ``final``: stop the syncer, then write and sync here."""
        if final:
            self.syncer.stop()
        elif not self.syncer.io.acquire(blocking=False):
            return
        try:
            out = self.folder.take_output()
            data, offsets, n = memoryview(out.data), out.offsets, len(out.offsets)
            for i in range(0, n, FRAME_RECORDS):
                j = min(n, i + FRAME_RECORDS)
                lo, hi = int(offsets[i]), int(offsets[j]) if j < n else len(data)
                self.segments.append(data[lo:hi], offsets[i:j] - lo, out.first_seq + i)
                self.unsynced = True
        finally:
            if not final:
                self.syncer.io.release()
        mark = (self.folder.next_seq - 1, self.folder.accounted)
        self.ctrl[GAP_RECORDS] = self.folder.gap_records
        self.ctrl[GAP_OBSERVATIONS] = self.folder.gap_observations
        if final:
            self.segments.sync()
            self.syncer.publish(mark)
        elif sync and self.unsynced:
            self.sync_due = time.monotonic() + self.args.sync_interval_s
            self.unsynced = False
            self.syncer.request(mark)


def sidecar_main(args: SidecarArgs, fds: tuple[int, ...]) -> None:
    """The sidecar process (``capture/child.py`` starts it): fold markers until told to stop."""

    def setup(views: MarkerViews) -> SidecarLoop:
        # Below the writer: on a machine with a core or two, a sidecar pass that runs when the
        # writer wakes for its batch must yield to it (markers are off the durability path).
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, SIDECAR_NICE)
        run_dir = Path(args.run_dir)
        # A verify or retention probe may hold the lock shared for an instant: retry briefly.
        lock = WriterLock.acquire(run_dir, MARKER_LOCK_NAME, wait_s=1.0)
        segments = SegmentWriter(
            run_dir,
            args.run_id,
            MARKER_STREAM,
            STREAM_MARKERS,
            max_segment_bytes=args.segment_max_bytes,
            compression_level=args.compression_level,
        )
        return SidecarLoop(args, views, segments, DoorbellListener(args.doorbell), lock)

    geometry = MarkerGeometry.for_capacity(args.capacity)
    serve("marker sidecar", args, lambda buf: MarkerViews(buf, geometry), setup)
