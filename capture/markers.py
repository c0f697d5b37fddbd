"""The data-marker lane, kernel side: ``observe()`` on the hot path and the sidecar's lifecycle.

Rules of this module:

1. ``observe`` never blocks, never makes a system call unless the sidecar sleeps (the doorbell)
   and never raises for a full ring or a dead sidecar: the observation is dropped and counted,
   and its observation number stays used, so the loss is an explicit gap in the record.
2. ``observe`` runs on the kernel thread that appends entries: it reads the entry stream's last
   seq (``event_seq_before``) without a lock, and after a sidecar failure it appends the
   ``MarkerLaneFailed`` entry from that thread (the entry ring has one producer).
3. The marker lane never halts the store.

The ring itself is ``capture/marker_ring.py``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from ringtape.capture.child import Spares
from ringtape.capture.config import DataMarkerClass, DataMarkerConfig
from ringtape.capture.control import STATE_CLOSED, STATE_STARTING, wait_for_state
from ringtape.capture.doorbell import Doorbell, new_address
from ringtape.capture.errors import WrongThread
from ringtape.capture.marker_ring import (
    CLOSE_REQUEST,
    DURABLE_MARKER_SEQ,
    DURABLE_OBS,
    FINAL_OBS,
    FINAL_RSEQ,
    KIND_NAME,
    KIND_OBS,
    KIND_STREAM,
    MAX_INSTRUMENT_BYTES,
    NAME_CHUNK,
    NAME_RECORD,
    READ_SEQ,
    RECORD,
    RECORD_SIZE,
    SIDECAR_STATE,
    WAKE_SEQ,
    MarkerGeometry,
    MarkerViews,
)
from ringtape.capture.marker_sidecar import SidecarArgs, spawn_sidecar
from ringtape.capture.shm import SharedRegion, unlink_name
from ringtape.storage.check.stream import scan_stream
from ringtape.storage.format.markers import (
    GAP_WRITER_CLOSED,
    MARKER_STREAM,
    TOPIC_MARKER_LANE_FAILED,
    gap_body,
)
from ringtape.storage.run.layout import MARKER_LOCK_NAME, list_segments
from ringtape.storage.run.lock import writer_alive
from ringtape.storage.run.recovery import cut_torn_tail

log = logging.getLogger("ringtape.markers")

CLASS_CODES: Final = {c: i for i, c in enumerate(DataMarkerClass.all())}
_READY_POLL_S: Final = 0.001
MAX_GAP_RANGES: Final = 1024


class EntrySeq(Protocol):
    """What the lane reads on every observation: the entry stream's last appended seq, and the
    thread that may produce (``capture/producer.py``)."""

    seq: int
    owner: int

    def wrong_thread(self) -> Exception: ...


class EntryCursor:
    """An entry stream position for a lane driven without a store (benchmarks, tests): the
    calling thread produces, and ``seq`` is whatever the driver sets."""

    def __init__(self) -> None:
        self.seq = 0
        self.owner = threading.get_ident()

    def wrong_thread(self) -> Exception:
        return WrongThread(f"this lane is driven by thread {self.owner}")


@dataclass
class MarkerStats:
    """Counters of one lane (one run)."""

    observed: int  # observations numbered (enabled classes)
    dropped: int  # observations that never reached the sidecar
    gaps: int  # runs of consecutive dropped observations
    streams: int
    failed: bool
    durable_marker_seq: int
    durable_obs: int


class MarkerLane:
    """The kernel's end of the data-marker sidecar for one run.

    ``start`` creates the ring and spawns the sidecar; ``observe`` is the hot path;
    ``close`` drains and seals the marker stream; ``kill`` releases everything at once. When
    the sidecar dies, the lane turns into a counter of dropped observations and asks the store
    (``append_entry``, on the kernel thread) to record a ``MarkerLaneFailed`` gap.
    """

    def __init__(
        self,
        config: DataMarkerConfig,
        entries: EntrySeq,
        append_entry: Callable[[str, bytes], object],
        spares: Spares | None = None,
    ) -> None:
        self.config = config
        self._spares = spares or Spares()
        self._entries = entries
        self._append_entry = append_entry
        self._geometry = MarkerGeometry.for_capacity(config.channel_capacity)
        self._enabled: dict[object, dict[str, int]] = {}
        self._class_of: dict[object, DataMarkerClass] = {}
        self._pack = RECORD.pack_into
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._obs = 0
        self._rang = 0  # the WAKE_SEQ value the doorbell was last rung for
        self._rseq = 0
        self._limit = -1  # forces the slow path, which drops, until started
        self._smask = self._geometry.slots - 1
        self._streams = 0
        self._data: Any = None
        self._ctrl: Any = None
        self._bell: Callable[[], None] = _no_bell
        self._region: SharedRegion | None = None
        self._views: MarkerViews | None = None
        self._doorbell: Doorbell | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._monitor: threading.Thread | None = None
        self._run_dir: Path | None = None
        self._closing = False
        self._failed = False
        self._failure_pending = False
        self._failure_from = 1
        self._failure_detail = ""
        self.dropped = 0
        self.gaps = 0
        self.gap_ranges: list[tuple[int, int]] = []  # first MAX_GAP_RANGES drops, in order
        self._last_drop = -1
        self._durable_marker_seq = 0
        self._durable_obs = 0

    # -- lifecycle ------------------------------------------------------------------------

    def start(
        self,
        run_dir: Path,
        run_id: str,
        *,
        segment_max_bytes: int,
        compression_level: int,
        ready_timeout: float = 5.0,
        stall_s: float = 0.25,
    ) -> None:
        """Create the ring, spawn the sidecar and wait (up to ``ready_timeout``) until it runs,
        so that a burst of data right after ``open`` does not overflow a ring nobody drains yet.
        A sidecar that cannot start makes the lane fail (recorded, logged), never the run; an
        interruption (Ctrl-C) releases whatever was started and propagates."""
        self._reset()
        self._run_dir = run_dir
        try:
            self._start(run_id, segment_max_bytes, compression_level, ready_timeout, stall_s)
        except BaseException:
            self.kill()
            raise

    def _start(
        self,
        run_id: str,
        segment_max_bytes: int,
        compression_level: int,
        ready_timeout: float,
        stall_s: float,
    ) -> None:
        g = self._geometry
        try:
            self._region = region = SharedRegion.create(g.region_size, tag="markers")
        except OSError as exc:
            self._install_classes()
            self._fail(f"cannot create the marker ring: {exc}")
            return
        views = MarkerViews(region.buf, g)
        views.init_control(os.getpid())
        self.bind(views)
        address = new_address()
        self._doorbell = Doorbell(address)
        self._bell = self._doorbell.ring
        args = SidecarArgs(
            shm_name=region.name,
            capacity=g.capacity,
            run_dir=str(self._run_dir),
            run_id=run_id,
            doorbell=address,
            parent_pid=os.getpid(),
            high_fidelity=tuple(self.config.high_fidelity),
            safety_flush_s=self.config.safety_flush_interval.total_seconds(),
            segment_max_bytes=segment_max_bytes,
            compression_level=compression_level,
            stall_s=stall_s,
        )
        try:
            process = spawn_sidecar(args, self._spares)
        except OSError as exc:
            self._fail(f"cannot start the marker sidecar: {exc}")
            return
        self._process = process
        monitor = threading.Thread(
            target=self._watch, args=(process,), name="ringtape-marker-monitor", daemon=True
        )
        self._monitor = monitor
        monitor.start()
        deadline = time.monotonic() + ready_timeout
        while (
            views.ctrl[SIDECAR_STATE] == STATE_STARTING
            and process.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(_READY_POLL_S)

    def bind(self, views: MarkerViews) -> None:
        """Produce into the mapped ring ``views`` from its current ``READ_SEQ``. ``start`` calls
        it; tests and benchmarks call it to drive the consumer side in process, no sidecar."""
        if views.geometry != self._geometry:
            raise ValueError(f"ring geometry {views.geometry} != the lane's {self._geometry}")
        self._views = views
        self._data = views.data
        self._ctrl = views.ctrl
        self._rseq = int(views.ctrl[READ_SEQ])
        self._limit = self._rseq + self._geometry.capacity
        self._install_classes()

    def _install_classes(self) -> None:
        """One dict per enabled class, reachable by the enum member and by its name."""
        self._enabled.clear()
        self._class_of.clear()
        for cls in self.config.classes:
            table: dict[str, int] = {}
            for key in (cls, cls.value):
                self._enabled[key] = table
                self._class_of[key] = cls

    def close(self, timeout: float) -> int:
        """Seal the marker stream: the sidecar drains the ring, accounts for every observation
        (a trailing gap for drops at the end), fdatasyncs and exits. Returns the durable
        marker seq. A sidecar that does not finish in ``timeout`` is killed and recorded as
        failed. Call on the kernel thread, before the entry stream's last entry."""
        process = self._process
        ctrl = self._ctrl
        if process is not None and ctrl is not None and not self._failed:
            with self._lock:
                self._closing = True
            ctrl[FINAL_OBS] = self._obs
            ctrl[FINAL_RSEQ] = self._rseq
            ctrl[CLOSE_REQUEST] = 1
            self._bell()
            if not wait_for_state(ctrl, SIDECAR_STATE, STATE_CLOSED, process, timeout):
                process.kill()
            process.wait()
            if int(ctrl[SIDECAR_STATE]) != STATE_CLOSED:
                self._fail(_exit_detail(process, self._views))
        self._refresh_durable()
        if self._failed:
            self._settle_stream()
        self.report_failure()
        self._enabled.clear()
        return self._durable_marker_seq

    def _settle_stream(self) -> None:
        """After a failure, seal what the dead sidecar left: fsync its last segment (frames it
        wrote but did not sync yet) and take the watermark from the stream's intact prefix on
        disk, which is what the manifest must say. A torn tail (the sidecar died inside a
        write) is cut here, its bytes kept in a ``.torn`` file: recovery never revisits a
        sealed run."""
        run_dir = self._run_dir
        if run_dir is None or writer_alive(run_dir, MARKER_LOCK_NAME):
            return
        segments = list_segments(run_dir, MARKER_STREAM)
        try:
            if segments:
                fd = os.open(segments[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            cut_torn_tail(run_dir, MARKER_STREAM)
            scan = scan_stream(run_dir, MARKER_STREAM, deep=False)
        except OSError as exc:
            log.error("could not settle the marker stream of %s: %s", run_dir, exc)
            return
        if not scan.damage:
            self._durable_marker_seq = scan.last_seq or 0

    def kill(self) -> None:
        """Stop the sidecar (if running) and release the ring; idempotent."""
        with self._lock:
            self._closing = True  # the monitor must not take this exit for a failure
        self._enabled.clear()
        self._limit = -1
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
        if process is not None:
            process.wait()
        monitor = self._monitor
        if monitor is not None and monitor.ident is not None:  # ident: it was started
            monitor.join(1.0)
        self._refresh_durable()
        self._data = None
        self._ctrl = None
        self._bell = _no_bell
        if self._doorbell is not None:
            self._doorbell.close()
            self._doorbell = None
        views, self._views = self._views, None
        region, self._region = self._region, None
        if region is not None:  # created by start(); a ring given to bind() is the caller's
            unlink_name(region.name)  # normally gone already: the sidecar unlinks on attach
            if views is not None:
                views.release()
            with contextlib.suppress(BufferError):  # an interrupted start may hold a view
                region.close()
        self._process = None

    def _refresh_durable(self) -> None:
        ctrl = self._ctrl
        if ctrl is not None:
            self._durable_marker_seq = int(ctrl[DURABLE_MARKER_SEQ])
            self._durable_obs = int(ctrl[DURABLE_OBS])

    @property
    def failed(self) -> bool:
        return self._failed

    def in_flight(self) -> int:
        """Ring records published and not yet taken by the sidecar."""
        ctrl = self._ctrl
        return 0 if ctrl is None else self._rseq - int(ctrl[READ_SEQ])

    @property
    def sidecar_pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def stats(self) -> MarkerStats:
        """The lane's counters and the sidecar's durable marks (shared-memory reads)."""
        self._refresh_durable()
        return MarkerStats(
            self._obs,
            self.dropped,
            self.gaps,
            self._streams,
            self._failed,
            self._durable_marker_seq,
            self._durable_obs,
        )

    # -- failure ----------------------------------------------------------------------------

    def _watch(self, process: subprocess.Popen[bytes]) -> None:
        """Wait for the sidecar to exit; an exit nobody asked for fails the lane."""
        process.wait()
        with self._lock:
            # Checked and acted on under the lock: kill() cannot release the ring meanwhile.
            if self._process is not process or self._closing or self._failed:
                return
            self._mark_failed(_exit_detail(process, self._views))
        self._log_failure()

    def _fail(self, detail: str) -> None:
        """Turn the lane into a drop counter; the gap is recorded by ``report_failure``."""
        with self._lock:
            if self._failed:
                return
            self._mark_failed(detail)
        self._log_failure()

    def _mark_failed(self, detail: str) -> None:
        self._failed = True
        self._limit = -1  # every later observation takes the slow path, which drops
        self._refresh_durable()
        self._failure_from = self._durable_obs + 1
        self._failure_detail = detail
        self._failure_pending = True

    def _log_failure(self) -> None:
        log.error(
            "data-marker lane failed (%s); observations from %d on are not recorded",
            self._failure_detail,
            self._failure_from,
        )

    def report_failure(self) -> None:
        """Append the pending ``MarkerLaneFailed`` entry (kernel thread only)."""
        with self._lock:
            if not self._failure_pending:
                return
            self._failure_pending = False
        payload = gap_body(
            self._failure_from,
            None,
            GAP_WRITER_CLOSED,
            self._entries.seq,
            marker_high_watermark=self._durable_marker_seq,
            detail=self._failure_detail,
        )
        try:
            self._append_entry(TOPIC_MARKER_LANE_FAILED, payload)
        except Exception:  # a halted or closed store: the failure is in the log only
            log.exception("could not record the marker lane failure in the entry stream")

    # -- the hot path -----------------------------------------------------------------------

    def observe(
        self, data_class: DataMarkerClass | str, instrument_id: str, ts_event: int, ts_init: int
    ) -> None:
        """Record that one market-data message was seen (see the module rules)."""
        table = self._enabled.get(data_class)
        if table is None:
            return  # class not enabled (or no run open)
        entries = self._entries
        if threading.get_ident() != entries.owner:
            raise entries.wrong_thread()
        stream = table.get(instrument_id)
        obs = self._obs + 1
        if stream is None:  # a new stream (raises for a bad id before numbering anything)
            stream = self._new_stream(table, data_class, instrument_id, obs)
        self._obs = obs
        if stream < 0:
            return
        rseq = self._rseq + 1
        if rseq > self._limit and not self._room(rseq, obs):
            return
        self._pack(
            self._data,
            (rseq & self._smask) * RECORD_SIZE,
            ts_event,
            ts_init,
            entries.seq,
            obs,
            stream,
            KIND_OBS,
            rseq,
        )
        self._rseq = rseq
        wake = self._ctrl[WAKE_SEQ]
        if rseq >= wake and wake != self._rang:
            self._rang = wake
            self._bell()

    def _room(self, last_rseq: int, obs: int) -> bool:
        """The slow path: refresh the free space; no room (or a failed lane) drops ``obs``."""
        if not self._failed and self._ctrl is not None:
            self._limit = int(self._ctrl[READ_SEQ]) + self._geometry.capacity
            if last_rseq <= self._limit:
                return True
        self.dropped += 1
        if obs != self._last_drop + 1:
            self.gaps += 1
            if len(self.gap_ranges) < MAX_GAP_RANGES:
                self.gap_ranges.append((obs, obs))
        elif self.gap_ranges and self.gap_ranges[-1][1] == obs - 1:
            self.gap_ranges[-1] = (self.gap_ranges[-1][0], obs)
        self._last_drop = obs
        if self._failure_pending:
            self.report_failure()
        return False

    def _new_stream(
        self, table: dict[str, int], data_class: object, instrument_id: str, obs: int
    ) -> int:
        """Define a stream: its name chunks, then its header, all or nothing. -1: dropped."""
        name = str(instrument_id).encode()
        if len(name) > MAX_INSTRUMENT_BYTES:
            raise ValueError(
                f"instrument id of {len(name)} bytes is over the {MAX_INSTRUMENT_BYTES}-byte limit"
            )
        chunks = [name[i : i + NAME_CHUNK] for i in range(0, len(name), NAME_CHUNK)]
        first = self._rseq + 1
        last = first + len(chunks)
        if last > self._limit and not self._room(last, obs):
            return -1
        stream = self._streams
        data = self._data
        rseq = first
        for chunk in chunks:
            off = (rseq & self._smask) * RECORD_SIZE
            NAME_RECORD.pack_into(data, off, chunk, stream, KIND_NAME, rseq)
            rseq += 1
        code = CLASS_CODES[self._class_of[data_class]]
        off = (rseq & self._smask) * RECORD_SIZE
        self._pack(data, off, code, len(name), self._entries.seq, 0, stream, KIND_STREAM, rseq)
        self._rseq = rseq
        self._streams = stream + 1
        table[instrument_id] = stream
        return stream


def _exit_detail(process: subprocess.Popen[bytes], views: MarkerViews | None) -> str:
    text = ""
    if views is not None:
        try:
            text = views.control.error_text()
        except ValueError:  # views released meanwhile
            text = ""
    code = process.returncode
    return text or f"sidecar process exited unexpectedly (code {code})"


def _no_bell() -> None:
    return None
