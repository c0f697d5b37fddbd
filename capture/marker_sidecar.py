"""The data-marker sidecar process: folds the marker ring into cursors and writes marker segments.

Loop, top to bottom:

1. Take everything the kernel published (validated by each record's ``rseq``, see
   capture/markers.py) into a bounded backlog, freeing the ring at once, and fold the backlog in
   chunks between takes. Behind: go round again at once. A trickle: nap ~1 ms first, so that
   each pass folds a batch rather than a few records (per-pass numpy costs dominate small
   batches). Nothing new: idle through the wait strategy, never past the next deadline (safety
   flush, commit), so a timer fires even when no message arrives.
2. Fold it (:class:`MarkerFolder`, no I/O): one cursor per (class, instrument) stream, a
   ``marker.cursor`` snapshot of the advanced cursors whenever ``event_seq_before`` moves (an
   entry was appended since), one ``marker.hifi`` per message of a high-fidelity instrument, a
   ``marker.stream`` dictionary record per new stream, a ``marker.gap`` where observation
   numbers jump (the kernel dropped them on a full ring).
3. When data advanced but no snapshot was written for ``safety_flush_interval``: snapshot.
4. Commit (at most every ``commit_latency_s``, or when much is waiting): frames to the marker
   segments; the :class:`Syncer` thread fdatasyncs them and then publishes
   ``DURABLE_MARKER_SEQ``/``DURABLE_OBS``, so a slow disk delays durability, never draining.
5. On the kernel's close request: drain up to ``FINAL_RSEQ``, a last snapshot, a trailing gap
   for drops after the last delivered observation, commit, ``CLOSED``. When the kernel process
   is gone: the same without the trailing gap; the run stays for the recovery sweep.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from ringtape.capture.child import ChildArgs, serve, spawn_child
from ringtape.capture.control import STATE_CLOSED
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
    SIDECAR_STATE,
    WAKE_NEVER,
    WAKE_SEQ,
    MarkerGeometry,
    MarkerRingReader,
    MarkerViews,
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
BUSY_TAKE: Final = 1024  # a take this large means the sidecar is behind: no nap
MAX_BACKLOG: Final = 1 << 20
FRAME_RECORDS: Final = 4096
COMMIT_RECORDS: Final = 16384
IDLE_SLEEP_S: Final = 0.05
NAP_S: Final = 0.001


@dataclass(frozen=True)
class SidecarArgs(ChildArgs):
    """Everything the spawned sidecar needs; plain values so it pickles."""

    high_fidelity: tuple[str, ...] = ()
    safety_flush_s: float = 1.0
    commit_latency_s: float = 0.01


def spawn_sidecar(args: SidecarArgs) -> subprocess.Popen[bytes]:
    """Start the sidecar process (``sidecar_main``)."""
    return spawn_child(__name__, "sidecar_main", args)


class NapWait:
    """The sidecar's wait strategy: a few polls, then short naps, then a doorbell sleep.

    Markers are not latency-sensitive and the ring holds ``channel_capacity`` records, so
    instead of spinning the sidecar naps (``nap_s``, unannounced: the kernel rings no bell for
    it) and takes what piled up in one batch; only after ``naps`` empty naps in a row does it
    announce a real sleep through ``sleep`` (the doorbell wakes it). On a 2-core machine
    this keeps the sidecar from competing with the kernel's thread for a core.
    """

    def __init__(
        self,
        sleep: Callable[[float], None],
        *,
        polls: int = 4,
        naps: int = 100,
        nap_s: float = NAP_S,
        sleep_timeout: float = IDLE_SLEEP_S,
    ) -> None:
        self._sleep = sleep
        self._polls = polls
        self._naps = polls + naps
        self._nap_s = nap_s
        self._timeout = sleep_timeout

    @property
    def trickle(self) -> int:
        """The streak to idle with after taking a few records: straight to a nap."""
        return self._polls

    def idle(self, streak: int) -> None:
        if streak < self._polls:
            return
        if streak < self._naps:
            time.sleep(self._nap_s)
            return
        self._sleep(self._timeout)


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
        self.backlog: deque[npt.NDArray[np.void]] = deque()
        self.backlog_len = 0
        self.wait = NapWait(self._sleep)
        self.out_since = 0.0
        self.stop_requested = False

    # -- waiting ----------------------------------------------------------------------------

    def deadline(self) -> float | None:
        """The next moment something must happen without a new message (flush, commit)."""
        d: float | None = None
        if self.folder.dirty:
            d = self.folder.dirty_since + self.args.safety_flush_s
        if self.folder.out:
            c = self.out_since + self.args.commit_latency_s
            d = c if d is None else min(d, c)
        return d

    def _sleep(self, timeout: float) -> None:
        ctrl = self.ctrl
        d = self.deadline()
        if d is not None:
            # At least a nap: a commit that waits for the syncer must not make this a spin.
            timeout = min(timeout, max(NAP_S, d - time.monotonic()))
        ctrl[WAKE_SEQ] = self.ring.read + 1
        # Re-check after asking for a bell: a record published just before would ring none.
        if not self.ring.has_next() and not ctrl[CLOSE_REQUEST]:
            self.doorbell.wait(timeout)
        ctrl[WAKE_SEQ] = WAKE_NEVER

    def parent_gone(self) -> bool:
        return self.stop_requested or os.getppid() != self.args.parent_pid

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        ctrl = self.ctrl
        folder = self.folder
        streak = 0
        while True:
            self.syncer.check()
            took = self.pull()
            rows = self.next_chunk()
            now = time.monotonic()
            if rows is not None:
                if not folder.out:
                    self.out_since = now
                folder.feed(rows, now)
            if folder.dirty and now - folder.dirty_since >= self.args.safety_flush_s:
                if not folder.out:
                    self.out_since = now
                folder.snapshot(REASON_SAFETY_FLUSH)
            if folder.out and (
                len(folder.out) >= COMMIT_RECORDS
                or now - self.out_since >= self.args.commit_latency_s
            ):
                self.commit()
            if self.backlog or took >= BUSY_TAKE:
                streak = 0  # behind: take and fold again at once
                continue
            if took or rows is not None:
                # A trickle: nap, then take what piled up meanwhile in one batch. Polling again
                # at once would fold a few records per pass, paying the per-batch cost each time.
                streak = self.wait.trickle
                self.wait.idle(streak)
                continue
            if ctrl[CLOSE_REQUEST] and self.ring.read >= int(ctrl[FINAL_RSEQ]):
                folder.finish(int(ctrl[FINAL_OBS]))
                self.commit(final=True)
                ctrl[SIDECAR_STATE] = STATE_CLOSED
                return
            if self.parent_gone():
                folder.finish(None)  # unknown: what the kernel dropped at the end is lost
                self.commit(final=True)
                return
            streak += 1
            self.wait.idle(streak)

    def pull(self) -> int:
        """Take everything published into the backlog, freeing ring space at once; returns
        how many records were taken.

        Taking is a copy, far cheaper than folding: a sidecar that gets little CPU for a
        while (a busy 2-core machine) still empties the ring whenever it runs, and folds the
        backlog in chunks between pulls. The backlog is bounded (``MAX_BACKLOG`` records);
        past that the ring fills and the kernel's drops become gaps, as they must.
        """
        took = 0
        while self.backlog_len < MAX_BACKLOG and (rows := self.ring.take()) is not None:
            self.backlog.append(rows)
            self.backlog_len += len(rows)
            took += len(rows)
            if len(rows) < BUSY_TAKE:
                break  # caught up: what trickles in meanwhile waits for the next pass
        return took

    def next_chunk(self) -> npt.NDArray[np.void] | None:
        """Up to ``FOLD_CHUNK`` records from the front of the backlog, in one array."""
        backlog = self.backlog
        if not backlog:
            return None
        parts = []
        n = 0
        while backlog and n < FOLD_CHUNK:
            rows = backlog.popleft()
            if n + len(rows) > FOLD_CHUNK:
                backlog.appendleft(rows[FOLD_CHUNK - n :])
                rows = rows[: FOLD_CHUNK - n]
            parts.append(rows)
            n += len(rows)
        self.backlog_len -= n
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def close(self) -> None:
        self.segments.close()
        self.doorbell.close()
        self.lock.release()

    def commit(self, *, final: bool = False) -> None:
        """Write frames for everything produced and hand them to the syncer. While the syncer
        is inside an fdatasync the frames wait in memory and the loop goes on draining the
        ring. ``final``: stop the syncer, then write and sync here."""
        if final:
            self.syncer.stop()
        elif not self.syncer.io.acquire(blocking=False):
            return
        try:
            records, first_seq = self.folder.take_output()
            for i in range(0, len(records), FRAME_RECORDS):
                chunk = records[i : i + FRAME_RECORDS]
                lengths = np.fromiter((len(r) for r in chunk), np.int64, len(chunk))
                offsets = np.cumsum(lengths) - lengths
                self.segments.append(b"".join(chunk), offsets, first_seq + i)
        finally:
            if not final:
                self.syncer.io.release()
        mark = (self.folder.next_seq - 1, self.folder.accounted)
        self.ctrl[GAP_RECORDS] = self.folder.gap_records
        self.ctrl[GAP_OBSERVATIONS] = self.folder.gap_observations
        if final:
            self.segments.sync()
            self.syncer.publish(mark)
        else:
            self.syncer.request(mark)


def sidecar_main(args: SidecarArgs) -> None:
    """The sidecar process (``capture/child.py`` starts it): fold markers until told to stop."""

    def setup(views: MarkerViews) -> SidecarLoop:
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
