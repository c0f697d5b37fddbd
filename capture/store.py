"""``EventStore``: the kernel-facing store (the ``KernelEventStore`` seam) and its hot path.

Lifecycle: ``EventStore(config)`` (boot) → ``restore_parent_cache`` → ``open`` → ``append``… →
``seal``. ``open`` creates the run directory and manifest, the shared-memory ring and the writer
process, appends ``RunStarted`` (seq 1) and returns once it is durable. ``seal`` appends
``RunEnded``, waits until it is durable, marks the manifest ``ended`` and frees everything.

Halt policy: the store is fail-stop. When the ring stays full past ``halt_threshold``, when the
writer dies, or when the disk fails, the store halts: ``append`` raises :class:`StoreHalted`
from then on and ``on_halt(reason)`` is called once (from the appending thread for a stall, from
the store's monitor thread otherwise). The recommended kernel policy is to stop trading on
``on_halt`` — cancel open orders, refuse new ones — because from that moment decisions are no
longer recorded. The halted run stays ``running``; the next boot's recovery sweep seals it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeAlias

from ringtape.capture.cache import Cache
from ringtape.capture.config import (
    DataMarkerClass,
    Environment as Environment,
    EventStoreConfig,
    RegisteredComponents,
)
from ringtape.capture.control import STATE_FAILED
from ringtape.capture.doorbell import Doorbell, new_address
from ringtape.capture.errors import (
    DISK_ERRNOS,
    AnchorRefused,
    EntryTooLarge,
    HaltReason,
    ReplayError,
    RunStartedTimeout,
    StoreHalted,
    StoreNotOpen,
)
from ringtape.capture.faults import FaultPlan
from ringtape.capture.liveness import owner_alive, process_created
from ringtape.capture.markers import MarkerLane
from ringtape.capture.retention_supervisor import spawn_supervisor
from ringtape.capture.ring import (
    CLOSE_REQUEST,
    CONSUMER_SLEEPING,
    DURABLE_SEQ,
    READ_POS,
    READ_SEQ,
    WRITER_ERRNO,
    WRITER_STATE,
    RingGeometry,
    RingViews,
)
from ringtape.capture.shm import SharedRegion, remove_orphans, unlink_name
from ringtape.capture.writer import WriterArgs, spawn_writer
from ringtape.storage.format.entry import (
    ENTRY_HEADER,
    ENTRY_HEADER_SIZE,
    MAX_PAYLOAD_LEN,
    MAX_PAYLOAD_TYPE_LEN,
    MAX_TOPIC_LEN,
    TOPIC_RUN_ENDED,
    TOPIC_RUN_STARTED,
    TOPIC_SNAPSHOT_ANCHOR,
    encode_entry,
)
from ringtape.storage.read.reader import CorruptionError
from ringtape.storage.read.replay import ReplayResult, ReplaySourceError, replay_run
from ringtape.storage.run.blobs import write_blob
from ringtape.storage.run.layout import RunPaths, inside, new_run_id
from ringtape.storage.run.lock import WriterLock
from ringtape.storage.run.manifest import Manifest, write_manifest
from ringtape.storage.run.status import RunStatus, check_transition
from ringtape.storage.run.sweep import SweepReport, sweep_instance
from ringtape.storage.segment.writer import DEFAULT_SEGMENT_BYTES

log = logging.getLogger("ringtape.store")

_ENCODER_CACHE_LIMIT = 16384
_DURABLE_POLL_S = 0.0005

# (pack_into, record size, first 16 header bytes, topic + payload_type bytes)
_Encoder: TypeAlias = tuple[Callable[..., None], int, bytes, bytes]


class Clock(Protocol):
    def timestamp_ns(self) -> int: ...


class SystemClock:
    """Wall clock, ns since the UNIX epoch."""

    timestamp_ns = staticmethod(time.time_ns)


@dataclass
class StoreOptions:
    """Tuning and hooks that are not part of the seam's config (so its JSON stays the seam's)."""

    segment_max_bytes: int = DEFAULT_SEGMENT_BYTES
    compression_level: int = 1
    on_halt: Callable[[HaltReason], None] | None = None
    faults: FaultPlan = field(default_factory=FaultPlan)
    seal_timeout_s: float = 30.0
    recover_on_boot: bool = True
    # Start the retention supervisor process with the run, passing over the instance this
    # often (None: no supervisor; run `ringtape prune` instead). Ignored for RetentionMode Full.
    retention_interval_s: float | None = None


def _as_uuid(value: uuid.UUID | str, name: str) -> uuid.UUID:
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not a UUID") from None


class _Session:
    """Everything that exists only while a run is open."""

    def __init__(
        self,
        paths: RunPaths,
        manifest: Manifest,
        region: SharedRegion,
        views: RingViews,
        process: subprocess.Popen[bytes],
        doorbell: Doorbell,
        lock: WriterLock,
    ) -> None:
        self.paths = paths
        self.lock = lock
        self.manifest = manifest
        self.region = region
        self.views = views
        self.process = process
        self.doorbell = doorbell
        self.monitor: threading.Thread | None = None


class EventStore:
    """The run-lifecycle event store a trading kernel writes through.

    ``EventStore(config, instance_id=None, clock=None)``; the instance id is a UUID4 (or its
    string) and the clock any object with ``timestamp_ns()``.
    """

    # Producer state, read on every append.
    _ring_bytes: int
    _rmask: int
    _smask: int
    _seq: int
    _pos: int
    _fast_limit: int
    _seq_limit: int

    def __init__(
        self,
        config: EventStoreConfig,
        *,
        instance_id: uuid.UUID | str | None = None,
        clock: Clock | None = None,
        options: StoreOptions | None = None,
    ) -> None:
        if not isinstance(config, EventStoreConfig):
            raise TypeError("config must be an EventStoreConfig")
        self.config = config
        self.options = options or StoreOptions()
        self._instance_id = None if instance_id is None else _as_uuid(instance_id, "instance_id")
        self._clock: Clock = clock or SystemClock()
        self._now = self._clock.timestamp_ns
        self._geometry = RingGeometry.for_capacity(config.channel_capacity)
        self._session: _Session | None = None
        self._lock = threading.Lock()
        self._halt_reason: HaltReason | None = None
        self._halted = False
        self._open = False
        self._run_id: str | None = None
        self._parent_run_id: str | None = config.replay_from_run_id
        self._final_durable = 0
        self._last_anchor = 0
        self._supervisor: subprocess.Popen[bytes] | None = None
        self._markers: MarkerLane | None = None
        if config.data_markers is not None:
            # One lane for the store's life, started per run: a kernel may keep the bound
            # ``observe_data`` across runs. Binding the lane's method saves a call per message.
            self._markers = MarkerLane(config.data_markers, self, self._append_marker_failure)
            self.observe_data = self._markers.observe  # type: ignore[method-assign]
        self._swept: set[uuid.UUID] = set()
        self.last_sweep: SweepReport | None = None
        self.last_replay: ReplayResult | None = None
        self._reset_producer()
        remove_orphans()
        if self._instance_id is not None:
            self._boot_sweep(self._instance_id)

    # -- the seam -------------------------------------------------------------------------

    def restore_parent_cache(self, instance_id: uuid.UUID | str, cache: Cache) -> None:
        """Restore ``cache`` from the replay source, or from the run the boot sweep recovered.

        The source is ``config.replay_from_run_id`` when set (it must be sealed and not
        quarantined, else ``ReplayError``), otherwise the newest run the boot sweep recovered
        (if that one cannot be replayed — quarantined, say — the error is logged and the cache
        is left as it is). The newest valid anchor's snapshot is restored, then the entries
        after it are applied in seq order, every frame verified. Never publishes anything.
        If replay stops at damage (``ReplayError``) the cache may hold part of the state:
        discard it rather than trade on it.
        """
        iid = _as_uuid(instance_id, "instance_id")
        base_dir = self.config.require_base_dir()
        self._boot_sweep(iid)
        configured = self.config.replay_from_run_id
        source = configured or self._parent_run_id
        if source is None:
            return
        try:
            run_dir = inside(base_dir / str(iid), source)
            self.last_replay = replay_run(run_dir, cache)
        except (ReplaySourceError, ValueError) as exc:
            if configured is not None:
                raise ReplayError(str(exc)) from None
            log.error("not restoring from recovered run %s: %s", source, exc)
        except CorruptionError as exc:
            raise ReplayError(f"replay of {source} stopped at damage: {exc}") from None
        else:
            log.info(
                "restored cache from %s: anchor %s, %d entries applied",
                source,
                self.last_replay.anchor.high_watermark if self.last_replay.anchor else "none",
                self.last_replay.applied,
            )

    def open(
        self,
        instance_id: uuid.UUID | str,
        components: RegisteredComponents,
        environment: Environment | str,
    ) -> None:
        """Open a fresh run; returns once ``RunStarted`` (seq 1) is durable.

        Idempotent: opening again while the same run is open does nothing; after ``seal`` it
        opens a new run (a kernel reset/rerun). A different instance id while open is an error.
        """
        iid = _as_uuid(instance_id, "instance_id")
        env = Environment.parse(environment)
        if self._open:
            if iid != self._instance_id:
                raise ValueError(f"a run of instance {self._instance_id} is open; seal it first")
            if self._halted:
                raise StoreHalted(self._halt_reason or HaltReason("Halted", "halted")) from None
            return
        base_dir = self.config.require_base_dir()
        self._boot_sweep(iid)
        self._instance_id = iid
        self._last_anchor = 0
        self._halted = False
        self._halt_reason = None
        start_ts = self._now()
        run_id = new_run_id(start_ts)
        paths = RunPaths(base_dir, str(iid), run_id)
        paths.create()
        # Locked before the first manifest exists, released after the last one is written:
        # no sweep can ever take this run for a dead one while it is being written.
        lock = WriterLock.acquire(paths.run_dir)
        lock.record_owner(os.getpid(), process_created())
        manifest = Manifest(
            run_id=run_id,
            instance_id=str(iid),
            status=RunStatus.RUNNING,
            start_ts_init=start_ts,
            parent_run_id=self._parent_run_id,
            identity=self.config.identity.to_dict(),
            registered_components=components.to_dict(),
            feature_flags=[*self.config.identity.feature_flags, self.config.retention.feature_flag],
            retention=self.config.retention.to_dict(),
            environment=str(env),
        )
        payload = json.dumps(
            {
                "run_id": run_id,
                "instance_id": str(iid),
                "parent_run_id": self._parent_run_id,
                "environment": str(env),
                "registered_components": components.to_dict(),
                "identity": self.config.identity.to_dict(),
                "config": self.config.to_dict(),
            },
            separators=(",", ":"),
        ).encode()
        try:
            write_manifest(paths.run_dir, manifest)
            self._start_session(paths, manifest, env, lock)
        except BaseException:  # Ctrl-C included: nothing half-open may stay behind
            if self._session is not None:
                self._teardown(kill=True)  # releases the lock too
            else:
                lock.release()
            raise
        try:
            started = time.monotonic()
            self.append(TOPIC_RUN_STARTED, payload, payload_type="json", ts_init=start_ts)
            timeout = self.config.run_started_timeout.total_seconds()
            if not self._wait_durable(1, timeout):
                raise RunStartedTimeout(
                    f"RunStarted not durable after {time.monotonic() - started:.3f} s"
                    f" (run_started_timeout {timeout:.3f} s)"
                    + (f": {self._halt_reason}" if self._halt_reason else "")
                )
        except BaseException:
            self._teardown(kill=True)
            raise
        self._run_id = run_id
        interval = self.options.retention_interval_s
        if interval is not None and self.config.retention.kind != "Full":
            self._supervisor = spawn_supervisor(base_dir, str(iid), self.config.retention, interval)

    def append(
        self,
        topic: str,
        payload: bytes,
        *,
        payload_type: str = "",
        ts_init: int | None = None,
    ) -> int:
        """Append one entry; returns its seq. No system call, no lock, no wait unless full.

        Raises ``StoreHalted`` after a halt, ``StoreNotOpen`` when no run is open and
        ``EntryTooLarge`` for an entry the ring cannot hold; nothing is written then. (A halt
        or a closed run sets the limits below so that the check falls to the slow path.)
        """
        if ts_init is None:
            ts_init = self._now()
        plen = len(payload)
        encoder = self._encoders.get((topic, payload_type, plen))
        if encoder is None:
            encoder = self._encoder(topic, payload_type, plen)
        pack, n, head, text = encoder
        pos = self._pos
        seq = self._seq + 1
        if pos + n > self._fast_limit or seq > self._seq_limit:
            pos = self._make_room(pos, n, seq)
        pack(self._data, pos & self._rmask, head, seq, ts_init, text, payload)
        self._index[seq & self._smask] = pos  # the commit: the consumer trusts nothing before
        self._seq = seq
        self._pos = pos + n
        ctrl = self._ctrl
        if ctrl[CONSUMER_SLEEPING]:
            self._bell()
        return seq

    def observe_data(
        self, data_class: DataMarkerClass | str, instrument_id: str, ts_event: int, ts_init: int
    ) -> None:
        """Note that a market-data message was seen (``config.data_markers``); never blocks.

        With markers configured this name is bound to the lane's ``MarkerLane.observe`` (one
        call less on the hot path), a no-op while no run is open: call it on the thread that
        appends. Without ``config.data_markers`` it is this no-op.
        """
        return None

    def marker_lane(self) -> MarkerLane | None:
        """The data-marker lane (``None`` without ``config.data_markers``)."""
        return self._markers

    def durable_seq(self) -> int:
        """The highest seq that is fdatasync'd (0: nothing yet). A shared-memory read."""
        ctrl = self._ctrl
        if ctrl is None:
            return self._final_durable
        try:
            return int(ctrl[DURABLE_SEQ])
        except ValueError:  # released by a teardown on another thread just now
            return self._final_durable

    def seal(self, ts_init: int | None = None) -> None:
        """Append ``RunEnded``, make everything durable, mark the run ``ended``; idempotent.

        A halted store is not sealed (its run stays ``running`` for the recovery sweep); its
        writer and shared memory are released all the same.
        """
        session = self._session
        if session is None:
            return
        if self._halted:
            self._teardown(kill=True)
            return
        ts = self._now() if ts_init is None else ts_init
        markers = self._markers
        if markers is not None:  # seal the marker stream first: its failure goes before RunEnded
            session.manifest.marker_high_watermark = markers.close(self.options.seal_timeout_s)
        try:
            last = self.append(TOPIC_RUN_ENDED, b"", ts_init=ts)
        except StoreHalted:
            self._teardown(kill=True)
            return
        session.views.ctrl[CLOSE_REQUEST] = last
        session.doorbell.ring()
        if not self._wait_durable(last, self.options.seal_timeout_s):
            self._halt(HaltReason("WriterError", "RunEnded not durable after seal timeout"))
            self._teardown(kill=True)
            return
        _join(session.process, self.options.seal_timeout_s)
        faults = self.options.faults
        faults.kernel_point("seal_before_manifest")
        manifest = session.manifest
        check_transition(manifest.status, RunStatus.ENDED)
        manifest.status = RunStatus.ENDED
        manifest.high_watermark = last
        manifest.end_ts_init = ts
        write_manifest(
            session.paths.run_dir,
            manifest,
            before_rename=lambda: faults.kernel_point("manifest_before_rename"),
        )
        self._teardown(kill=False)

    def snapshot_anchorer(self) -> Callable[[bytes], int] | None:
        """A callable that anchors a cache snapshot to the open run (``None`` when closed).

        ``anchor(snapshot_bytes) -> high_watermark``: call it on the kernel thread right after
        taking the snapshot, with no append in between, because the snapshot reflects every
        entry appended so far. It waits (at most ``halt_threshold``, else the store halts) until
        those entries are durable, stores the bytes as a content-addressed blob (fsynced), then
        appends a ``SnapshotAnchor`` entry ``{high_watermark, blob_ref, content_hash}``. An
        anchor behind the previous one raises ``AnchorRefused``.
        """
        return self._anchor if self._open else None

    def _anchor(self, snapshot: bytes) -> int:
        session = self._session
        if session is None or not self._open:
            raise StoreNotOpen("no run is open: the anchor was not recorded")
        if self._halted:
            raise self._halted_error()
        watermark = self._seq
        if watermark < self._last_anchor:
            raise AnchorRefused(
                f"anchor at {watermark} is behind the previous anchor at {self._last_anchor}"
            )
        threshold = self.config.halt_threshold.total_seconds()
        if not self._wait_durable(watermark, threshold):
            if not self._halted:
                self._halt(
                    HaltReason(
                        "AnchorStall",
                        f"entries up to {watermark} not durable within {threshold * 1e3:.0f} ms",
                        stalled_for_s=threshold,
                        threshold_s=threshold,
                    )
                )
            raise self._halted_error()
        hook = self.options.faults.kernel_partial_write("blob_mid_write")
        blob = write_blob(session.paths.run_dir, bytes(snapshot), during_write=hook)
        anchor = dataclasses.replace(blob, high_watermark=watermark)
        seq = self.append(TOPIC_SNAPSHOT_ANCHOR, anchor.to_payload(), payload_type="json")
        session.manifest.anchors.append(dataclasses.asdict(dataclasses.replace(anchor, seq=seq)))
        self._last_anchor = watermark
        return watermark

    def run_id(self) -> str | None:
        """The run id of the open run (``None`` when no run is open)."""
        return self._run_id if self._open else None

    def parent_run_id(self) -> str | None:
        """The configured replay source or the recovered parent run, when there is one."""
        return self._parent_run_id

    def is_event_store_replay_configured(self) -> bool:
        return self.config.replay_from_run_id is not None

    def is_halted(self) -> bool:
        return self._halted

    def halt_reason(self) -> HaltReason | None:
        return self._halt_reason

    def run_dir(self) -> Path | None:
        session = self._session
        return None if session is None else session.paths.run_dir

    def writer_pid(self) -> int | None:
        session = self._session
        return None if session is None else session.process.pid

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.seal()

    # -- the producer ---------------------------------------------------------------------

    def _reset_producer(self) -> None:
        g = self._geometry
        self._ring_bytes = g.ring_bytes
        self._rmask = g.ring_bytes - 1
        self._smask = g.slots - 1
        self._seq = 0
        self._pos = 0
        self._fast_limit = -1  # forces the slow path (which raises StoreNotOpen) until open
        self._seq_limit = -1
        self._encoders: dict[tuple[str, str, int], _Encoder] = {}
        self._ctrl: Any = None
        self._index: Any = None
        self._data: Any = None
        self._bell: Callable[[], None] = _no_bell

    def _encoder(self, topic: str, payload_type: str, plen: int) -> _Encoder:
        """A compiled struct that writes a whole record (header, topic, type, payload) in one
        ``pack_into``; cached per (topic, payload_type, payload length)."""
        t = topic.encode()
        pt = payload_type.encode()
        if len(t) > MAX_TOPIC_LEN or len(pt) > MAX_PAYLOAD_TYPE_LEN or plen > MAX_PAYLOAD_LEN:
            raise EntryTooLarge(
                f"topic ({len(t)} B), payload_type ({len(pt)} B) or payload ({plen} B) over the"
                f" limits ({MAX_TOPIC_LEN} B, {MAX_PAYLOAD_TYPE_LEN} B, {MAX_PAYLOAD_LEN} B)"
            )
        if len(self._encoders) >= _ENCODER_CACHE_LIMIT:
            self._encoders.clear()
        text = t + pt
        n = ENTRY_HEADER_SIZE + len(text) + plen
        # The first 16 header bytes are the same for every record of this shape; ts_publish
        # is left zero (pad bytes) for the writer to stamp.
        head = ENTRY_HEADER.pack(n, plen, len(t), len(pt), 0, 0, 0, 0)[:16]
        layout = struct.Struct(f"<16sQQ8x{len(text)}s{plen}s")
        encoder = (layout.pack_into, n, head, text)
        self._encoders[(topic, payload_type, plen)] = encoder
        return encoder

    def append_linked(
        self,
        topic: str,
        payload: bytes,
        *,
        payload_type: str = "",
        ts_init: int | None = None,
        correlation_id: uuid.UUID | None = None,
        causation_id: uuid.UUID | None = None,
    ) -> int:
        """``append`` with correlation/causation ids in the entry's headers."""
        ts = self._now() if ts_init is None else ts_init
        record = encode_entry(0, ts, 0, topic, payload, payload_type, correlation_id, causation_id)
        return self._append_record(record)

    def _append_record(self, record: bytes) -> int:
        """The general path for a pre-encoded record (seq and ts_publish are filled in)."""
        n = len(record)
        pos = self._pos
        seq = self._seq + 1
        if pos + n > self._fast_limit or seq > self._seq_limit:
            pos = self._make_room(pos, n, seq)
        off = pos & self._rmask
        self._data[off : off + n] = record
        self._data[off + 16 : off + 24] = seq.to_bytes(8, "little")
        self._index[seq & self._smask] = pos
        self._seq = seq
        self._pos = pos + n
        if self._ctrl[CONSUMER_SLEEPING]:
            self._bell()
        return seq

    def _boot_sweep(self, iid: uuid.UUID) -> None:
        """Recover the instance's runs left open by dead writers, once per instance."""
        if iid in self._swept or not self.options.recover_on_boot or not self.config.base_dir:
            return
        self._swept.add(iid)
        report = sweep_instance(Path(self.config.base_dir) / str(iid), owner_alive=owner_alive)
        self.last_sweep = report
        if report.newest_recovered is not None and self.config.replay_from_run_id is None:
            self._parent_run_id = report.newest_recovered

    def _halted_error(self) -> StoreHalted:
        return StoreHalted(self._halt_reason or HaltReason("Halted", "the store halted"))

    def _make_room(self, pos: int, n: int, seq: int) -> int:
        """The slow path: skip to the next lap if the record does not fit before the ring's
        end, refresh the limits from the consumer, and wait while full — then halt.
        Returns the position to write at; ``_fast_limit`` lets the hot path skip all this
        until the next lap end or the consumer's last known read position.
        """
        if self._halted:
            raise self._halted_error()
        ctrl = self._ctrl
        if ctrl is None:
            raise StoreNotOpen("no run is open: call open() first")
        ring_bytes = self._ring_bytes
        if n > self._geometry.max_record:
            raise EntryTooLarge(
                f"entry of {n} bytes exceeds the ring's limit of {self._geometry.max_record}"
                f" bytes (channel_capacity {self._geometry.capacity})"
            )
        if (pos & self._rmask) + n > ring_bytes:
            pos = (pos + self._rmask) & ~self._rmask  # no room before the end: next lap
        lap_end = (pos & ~self._rmask) + ring_bytes
        threshold = self.config.halt_threshold.total_seconds()
        started = 0.0
        tries = 0
        while True:
            pos_limit = int(ctrl[READ_POS]) + ring_bytes
            self._seq_limit = int(ctrl[READ_SEQ]) + self._geometry.capacity
            if pos + n <= pos_limit and seq <= self._seq_limit:
                self._fast_limit = min(pos_limit, lap_end)
                if self.is_halted():  # the monitor thread halted us meanwhile: keep it so
                    self._fast_limit = -1
                    raise self._halted_error()
                return pos
            if self._halted:
                raise self._halted_error()
            if ctrl[CONSUMER_SLEEPING]:
                self._bell()
            now = time.monotonic()
            if not started:
                started = now
            elif now - started >= threshold:
                reason = HaltReason.backpressure(now - started, threshold)
                self._halt(reason)
                raise StoreHalted(reason)
            tries += 1
            if tries < 64:
                os.sched_yield()
            else:
                time.sleep(0.0001)

    # -- session management ---------------------------------------------------------------

    def _start_session(
        self, paths: RunPaths, manifest: Manifest, env: Environment, lock: WriterLock
    ) -> None:
        g = self._geometry
        region = SharedRegion.create(g.region_size)
        views = RingViews(region.buf, g)
        views.init_control(os.getpid())
        address = new_address()
        args = WriterArgs(
            shm_name=region.name,
            capacity=g.capacity,
            run_dir=str(paths.run_dir),
            run_id=paths.run_id,
            doorbell=address,
            parent_pid=os.getpid(),
            max_batch_entries=self.config.max_batch_entries,
            max_batch_latency_s=self.config.max_batch_latency.total_seconds(),
            segment_max_bytes=self.options.segment_max_bytes,
            compression_level=self.options.compression_level,
            publish_clock="ts_init" if env is Environment.BACKTEST else "wall",
            faults=self.options.faults.writer_plan,
            lock_fd=lock.fd,
        )
        doorbell = Doorbell(address)
        try:
            process = spawn_writer(args)
        except BaseException:
            doorbell.close()
            views.release()
            region.close()
            unlink_name(region.name)
            raise
        session = _Session(paths, manifest, region, views, process, doorbell, lock)
        self._session = session
        self._reset_producer()
        self._ctrl = views.ctrl
        self._index = views.index
        self._data = views.data
        self._bell = doorbell.ring
        self._fast_limit = g.ring_bytes
        self._seq_limit = g.capacity
        self._open = True
        monitor = threading.Thread(
            target=self._monitor, args=(session,), name="ringtape-monitor", daemon=True
        )
        session.monitor = monitor
        monitor.start()
        if self._markers is not None:
            self._markers.start(
                paths.run_dir,
                paths.run_id,
                segment_max_bytes=self.options.segment_max_bytes,
                compression_level=self.options.compression_level,
                ready_timeout=self.config.run_started_timeout.total_seconds(),
            )

    def _append_marker_failure(self, topic: str, payload: bytes) -> object:
        return self.append(topic, payload, payload_type="json")

    def _monitor(self, session: _Session) -> None:
        """Wait for the writer to exit; an exit nobody asked for halts the store."""
        session.process.wait()
        with self._lock:
            if self._session is not session or not self._open:
                return
            ctrl = session.views.ctrl
            if ctrl[CLOSE_REQUEST] and ctrl[DURABLE_SEQ] >= ctrl[CLOSE_REQUEST]:
                return  # a clean close
            err = int(ctrl[WRITER_ERRNO])
            text = session.views.control.error_text()
            failed = int(ctrl[WRITER_STATE]) == STATE_FAILED
        code = session.process.returncode
        if failed and err in DISK_ERRNOS:
            reason = HaltReason.disk(err, text)
        elif failed:
            reason = HaltReason("WriterError", text or f"writer failed (exit {code})", errno=err)
        else:
            reason = HaltReason("WriterDied", f"writer process exited unexpectedly (code {code})")
        self._halt(reason)

    def _halt(self, reason: HaltReason) -> None:
        with self._lock:
            if self._halted:
                return
            self._halt_reason = reason
            self._halted = True
            self._fast_limit = -1  # every later append takes the slow path, which raises
        log.error("event store halted: %s", reason)
        callback = self.options.on_halt
        if callback is not None:
            try:
                callback(reason)
            except Exception:
                log.exception("on_halt callback raised")

    def _wait_durable(self, seq: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        ctrl = self._ctrl
        while ctrl[DURABLE_SEQ] < seq:
            if self._halted or time.monotonic() >= deadline:
                return bool(ctrl[DURABLE_SEQ] >= seq)
            time.sleep(_DURABLE_POLL_S)
        return True

    def _teardown(self, *, kill: bool) -> None:
        """Stop the writer (killing it if asked or if it does not stop) and free the ring."""
        with self._lock:
            session = self._session
            if session is None:
                return
            self._open = False
            self._session = None
        if self._markers is not None:
            self._markers.kill()
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.terminate()
            if not _join(supervisor, 5.0):
                supervisor.kill()
                supervisor.wait()
        process = session.process
        if kill and process.poll() is None:
            process.kill()
        if not _join(process, 5.0):
            process.kill()
            process.wait()
        self._final_durable = int(session.views.ctrl[DURABLE_SEQ])
        # on_halt may call seal() from the monitor thread itself: it cannot join itself.
        if session.monitor is not None and session.monitor is not threading.current_thread():
            session.monitor.join(1.0)
        self._fast_limit = -1  # appends now take the slow path: StoreHalted or StoreNotOpen
        self._seq_limit = -1
        self._ctrl = None
        self._index = None
        self._data = None
        self._bell = _no_bell
        session.doorbell.close()
        session.views.release()
        session.region.close()
        unlink_name(session.region.name)  # normally gone already: the writer unlinks on attach
        session.lock.release()  # last: the run's manifest is final (or left for the sweep)


def _join(process: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def _no_bell() -> None:
    return None


def event_store_factory(
    config: EventStoreConfig, options: StoreOptions | None = None
) -> Callable[[uuid.UUID | str, Clock | None], EventStore]:
    """The kernel's factory: ``(instance_id, clock) -> EventStore``."""

    def factory(instance_id: uuid.UUID | str, clock: Clock | None) -> EventStore:
        return EventStore(config, instance_id=instance_id, clock=clock, options=options)

    return factory
