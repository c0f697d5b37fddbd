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
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import xxhash

from ringtape.capture.child import (
    EXIT_ATTACH_FAILED,
    EXIT_OK,
    describe_failure,
    ignore_group_signals,
    read_child_args,
)
from ringtape.capture.config import DataMarkerClass
from ringtape.capture.control import report_failure
from ringtape.capture.doorbell import DoorbellListener
from ringtape.capture.markers import (
    CLOSE_REQUEST,
    CONSUMER_SLEEPING,
    DURABLE_MARKER_SEQ,
    DURABLE_OBS,
    FINAL_OBS,
    FINAL_RSEQ,
    GAP_OBSERVATIONS,
    GAP_RECORDS,
    KIND_NAME,
    KIND_OBS,
    KIND_STREAM,
    NAME_CHUNK,
    READ_SEQ,
    SIDECAR_ERRNO,
    SIDECAR_PID,
    SIDECAR_STATE,
    STATE_CLOSED,
    STATE_FAILED,
    STATE_RUNNING,
    MarkerGeometry,
    MarkerViews,
    SidecarArgs,
)
from ringtape.capture.shm import SharedRegion
from ringtape.storage.format.frame import STREAM_MARKERS
from ringtape.storage.format.markers import (
    GAP_OVERFLOW,
    MARKER_STREAM,
    REASON_BOUNDARY,
    REASON_CLOSE,
    REASON_SAFETY_FLUSH,
    encode_cursor,
    encode_gap,
    encode_hifi,
    encode_stream,
    stream_seed,
)
from ringtape.storage.run.layout import MARKER_LOCK_NAME
from ringtape.storage.run.lock import WriterLock
from ringtape.storage.segment.writer import SegmentWriter

MAX_TAKE: Final = 8192
FOLD_CHUNK: Final = 2048
BUSY_TAKE: Final = 1024  # a take this large means the sidecar is behind: no nap
MAX_BACKLOG: Final = 1 << 20
FRAME_RECORDS: Final = 4096
COMMIT_RECORDS: Final = 16384
IDLE_SLEEP_S: Final = 0.05
NAP_S: Final = 0.001


CLASS_NAMES: Final = [c.value for c in DataMarkerClass.all()]
_QUAD: Final = struct.Struct("<QQQQ")
_TS_PAIR: Final = struct.Struct("<QQ")


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


class ProtocolError(RuntimeError):
    """The ring holds something the kernel side never writes."""


class MarkerFolder:
    """Ring records in, marker entry records out (bytes, numbered from 1); no I/O.

    ``accounted`` is the highest observation number such that every observation up to it is in
    a record already produced (a cursor snapshot, or a gap): what ``DURABLE_OBS`` publishes.
    """

    def __init__(self, high_fidelity: Iterable[str]) -> None:
        self.hifi_names = frozenset(high_fidelity)
        self.next_seq = 1
        self.out: list[bytes] = []
        self.out_first_seq = 1
        self.count: list[int] = []
        self.hi: list[int] = []
        self.ordinal: list[int] = []
        self.hifi: list[bool] = []
        self.seed: list[int] = []
        self.dirty: dict[int, None] = {}  # streams advanced since the last snapshot, in order
        self.dirty_since = 0.0
        self.last_obs = 0
        self.esb = 0
        self.ts_init = 0
        self.accounted = 0
        self.chunks: list[bytes] = []
        self.gap_records = 0
        self.gap_observations = 0
        self.snapshots = 0

    def feed(self, rows: npt.NDArray[np.void], now: float) -> None:
        """Fold one batch of ring records (a structured array of ``RECORD_DTYPE``)."""
        control = np.flatnonzero(rows["kind"] != KIND_OBS)
        start = 0
        for i in control.tolist():  # stream definitions are rare: fold the runs between them
            if i > start:
                self._fold_observations(rows[start:i], now)
            r = rows[i]
            self._control_record(
                int(r["a"]), int(r["b"]), int(r["esb"]), int(r["obs"]), int(r["stream"]),
                int(r["kind"]),
            )  # fmt: skip
            start = i + 1
        if start < len(rows):
            self._fold_observations(rows[start:], now)

    def _fold_observations(self, rows: npt.NDArray[np.void], now: float) -> None:
        """Fold observation records. The batch is checked and cut with numpy where an entry
        boundary or a gap falls; the loop between two cuts only moves cursors."""
        esb, obs, stream = rows["esb"], rows["obs"], rows["stream"]
        prev_esb = np.empty_like(esb)
        prev_esb[0], prev_esb[1:] = self.esb, esb[:-1]
        prev_obs = np.empty_like(obs)
        prev_obs[0], prev_obs[1:] = self.last_obs, obs[:-1]
        if bool((esb < prev_esb).any()) or bool((obs <= prev_obs).any()):
            raise ProtocolError("event_seq_before or the observation number goes back")
        if int(stream.max()) >= len(self.count):
            raise ProtocolError(f"an observation names a stream beyond {len(self.count) - 1}")
        marks = np.flatnonzero((esb != prev_esb) | (obs != prev_obs + 1)).tolist()
        a_l, b_l, e_l, o_l = (rows[k].tolist() for k in ("a", "b", "esb", "obs"))
        s_l = stream.tolist()
        count, hi, ordinal, hifi, dirty, out = (
            self.count, self.hi, self.ordinal, self.hifi, self.dirty, self.out,
        )  # fmt: skip
        seeds, pack_ts, digest = self.seed, _TS_PAIR.pack, xxhash.xxh3_64_intdigest
        n = len(s_l)
        pos = 0
        for stop in [*marks, n]:
            if not dirty:
                self.dirty_since = now
            esb_run, seq = self.esb, self.next_seq
            for i in range(pos, stop):  # no boundary, no gap: cursors only
                st = s_l[i]
                b = b_l[i]
                count[st] += 1
                h = hi[st]
                if b > h:
                    hi[st] = b
                    ordinal[st] = 0
                elif b == h:
                    ordinal[st] += 1
                dirty[st] = None
                if hifi[st]:
                    a = a_l[i]
                    fp = digest(pack_ts(a, b), seeds[st])
                    out.append(encode_hifi(seq, b, o_l[i], esb_run, st, ordinal[st], a, fp))
                    seq += 1
            self.next_seq = seq
            if stop == n:
                break
            if stop > 0:  # the state as of the record before the mark
                self.esb, self.last_obs, self.ts_init = e_l[stop - 1], o_l[stop - 1], b_l[stop - 1]
            if e_l[stop] != self.esb:
                self.snapshot(REASON_BOUNDARY)  # an entry was appended since
            if o_l[stop] != self.last_obs + 1:
                self.gap(self.last_obs + 1, o_l[stop] - 1, GAP_OVERFLOW)
            self.esb = e_l[stop]
            pos = stop
        self.esb, self.last_obs, self.ts_init = e_l[-1], o_l[-1], b_l[-1]

    def _control_record(self, a: int, b: int, esb: int, obs: int, stream: int, kind: int) -> None:
        if kind == KIND_NAME:
            self.chunks.append(_QUAD.pack(a, b, esb, obs))
            return
        if kind != KIND_STREAM:
            raise ProtocolError(f"unknown ring record kind {kind}")
        name = b"".join(self.chunks)
        self.chunks.clear()
        if (
            stream != len(self.count)
            or a >= len(CLASS_NAMES)
            or not 0 <= len(name) - b < NAME_CHUNK
        ):
            raise ProtocolError(f"stream definition {stream} (class {a}, {b} bytes) is invalid")
        instrument = name[:b].decode()
        data_class = CLASS_NAMES[a]
        hifi = instrument in self.hifi_names
        self.count.append(0)
        self.hi.append(-1)  # below any ts_init: the first observation sets it, ordinal 0
        self.ordinal.append(0)
        self.hifi.append(hifi)
        self.seed.append(stream_seed(data_class, instrument))
        self.out.append(
            encode_stream(self.next_seq, self.ts_init, stream, data_class, instrument, hifi)
        )
        self.next_seq += 1

    def snapshot(self, reason: int) -> None:
        """A ``marker.cursor`` record of the streams advanced since the last one."""
        if not self.dirty:
            return
        count, hi, ordinal = self.count, self.hi, self.ordinal
        items: list[int] = []
        add = items.extend
        for s in self.dirty:
            add((s, ordinal[s], count[s], hi[s]))
        self.out.append(
            encode_cursor(self.next_seq, self.ts_init, self.last_obs, self.esb, reason, items)
        )
        self.next_seq += 1
        self.snapshots += 1
        self.dirty.clear()
        self.accounted = self.last_obs

    def gap(self, obs_from: int, obs_to: int, reason: str) -> None:
        self.out.append(encode_gap(self.next_seq, self.ts_init, obs_from, obs_to, reason, self.esb))
        self.next_seq += 1
        self.gap_records += 1
        self.gap_observations += obs_to - obs_from + 1
        self.last_obs = obs_to
        if not self.dirty:
            self.accounted = obs_to

    def finish(self, final_obs: int | None) -> None:
        """The end of the stream: a last snapshot, and a gap for drops after the last record."""
        self.snapshot(REASON_CLOSE)
        if final_obs is not None and final_obs > self.last_obs:
            self.gap(self.last_obs + 1, final_obs, GAP_OVERFLOW)

    def take_output(self) -> tuple[list[bytes], int]:
        """The records produced since the last call and the marker seq of the first."""
        out, first = self.out, self.out_first_seq
        self.out = []
        self.out_first_seq = self.next_seq
        return out, first


class MarkerRingReader:
    """The consumer's side of the marker ring: validated bulk takes (see capture/markers.py)."""

    def __init__(self, views: MarkerViews) -> None:
        self.v = views
        g = views.geometry
        self.smask = g.slots - 1
        self.mask = np.uint64(g.slots - 1)
        self.max_take = min(MAX_TAKE, g.capacity)
        self.read = int(views.ctrl[READ_SEQ])

    def has_next(self) -> bool:
        nxt = self.read + 1
        return int(self.v.rseq[nxt & self.smask]) == nxt

    def take(self) -> npt.NDArray[np.void] | None:
        """Copy out the published records after ``read`` and free their slots."""
        if not self.has_next():
            return None
        window = min(256, self.max_take)
        while True:  # widen the look-ahead geometrically while everything in it is published
            first = self.read + 1
            seqs = np.arange(first, first + window, dtype=np.uint64)
            idx = (seqs & self.mask).astype(np.intp)
            ok = self.v.rseq[idx] == seqs  # the commit words first, then the bodies
            n = window if bool(ok.all()) else int(np.argmin(ok))
            if n < window or window == self.max_take:
                break
            window = min(self.max_take, window * 4)
        rows = self.v.records[idx[:n]]
        if not bool(np.all(rows["rseq"] == seqs[:n])):
            raise ProtocolError(f"ring records after {self.read} changed while being read")
        self.read += n
        self.v.ctrl[READ_SEQ] = self.read
        return rows


class SidecarLoop:
    def __init__(
        self,
        args: SidecarArgs,
        views: MarkerViews,
        segments: SegmentWriter,
        doorbell: DoorbellListener,
    ) -> None:
        self.args = args
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
        ctrl[CONSUMER_SLEEPING] = 1
        # Re-check after announcing sleep: a record published just before would get no bell.
        if not self.ring.has_next() and not ctrl[CLOSE_REQUEST]:
            self.doorbell.wait(timeout)
        ctrl[CONSUMER_SLEEPING] = 0

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


def _report_failure(views: MarkerViews, err: int, text: str) -> None:
    report_failure(
        views.ctrl,
        text,
        err,
        errno_word=SIDECAR_ERRNO,
        state_word=SIDECAR_STATE,
        failed=STATE_FAILED,
    )


def sidecar_main(args: SidecarArgs) -> None:
    """Entry point of the spawned sidecar process."""
    try:
        region = SharedRegion.attach(args.shm_name)
    except OSError as exc:
        print(f"ringtape marker sidecar: cannot attach {args.shm_name}: {exc}", file=sys.stderr)
        sys.exit(EXIT_ATTACH_FAILED)
    views = MarkerViews(region.buf, MarkerGeometry.for_capacity(args.capacity))
    views.ctrl[SIDECAR_PID] = os.getpid()
    code = EXIT_OK
    try:
        run_dir = Path(args.run_dir)
        # A verify or retention probe may hold the lock shared for an instant: retry briefly.
        lock = WriterLock.acquire(run_dir, MARKER_LOCK_NAME, wait_s=1.0)
        doorbell = DoorbellListener(args.doorbell)
        segments = SegmentWriter(
            run_dir,
            args.run_id,
            MARKER_STREAM,
            STREAM_MARKERS,
            max_segment_bytes=args.segment_max_bytes,
            compression_level=args.compression_level,
        )
        loop = SidecarLoop(args, views, segments, doorbell)

        ignore_group_signals()
        views.ctrl[SIDECAR_STATE] = STATE_RUNNING
        loop.run()
        segments.close()
        doorbell.close()
        lock.release()
    except Exception as exc:  # the kernel must learn why its sidecar stopped
        err, text, code = describe_failure(exc)
        _report_failure(views, err, text)
    finally:
        views.release()
        region.close()
    sys.exit(code)


def child_main() -> None:
    """The spawned interpreter's entry point (``capture/child.py``): arguments come on stdin."""
    args = read_child_args()
    assert isinstance(args, SidecarArgs)
    sidecar_main(args)
