"""``EventStore``: the kernel-facing store (the ``KernelEventStore`` seam).

Lifecycle: ``EventStore(config)`` (boot) → ``restore_parent_cache`` → ``open`` → ``append``… →
``seal``. ``open`` creates the run directory and manifest, the shared-memory ring and the writer
process (``capture/session.py``), appends ``RunStarted`` (seq 1) and returns once it is durable.
``seal`` appends ``RunEnded``, waits until it is durable, marks the manifest ``ended`` and frees
everything. The hot path is ``capture/producer.py``'s; ``append`` is bound to it directly.

Threads: by default one thread produces, the one that called ``open()``; ``append``,
``append_linked``, ``observe_data``, the anchorer and ``seal`` from any other thread raise
``WrongThread`` and write nothing. ``seal`` is allowed from any thread once the store has halted
(it then only releases) or once the producer thread has ended (nothing can race it then).
``StoreOptions(producers="threads")`` serialises all of them with a lock instead, for kernels
that append from several threads.

Halt policy: the store is fail-stop. When the ring stays full past ``halt_threshold``, when the
writer dies, or when the disk fails, the store halts: ``append`` raises :class:`StoreHalted`
from then on and ``on_halt(reason)`` is called once (from the appending thread for a stall, from
the store's monitor thread otherwise). The reason is the cause, whatever noticed it first: a
writer that died or failed while the ring was full is ``WriterDied``/``BackendDisk``, not a
stall. The recommended kernel policy is to stop trading on ``on_halt`` — cancel open orders,
refuse new ones — because from that moment decisions are no longer recorded. The halted run stays
``running``; the next boot's recovery sweep seals it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import subprocess
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from ringtape.capture.anchors import AnchorRecord
from ringtape.capture.cache import Cache
from ringtape.capture.child import Spares
from ringtape.capture.config import (
    DataMarkerClass,
    Environment as Environment,
    EventStoreConfig,
    RegisteredComponents,
)
from ringtape.capture.errors import (
    AnchorRefused,
    HaltReason,
    ReplayError,
    RunStartedTimeout,
    StoreHalted,
    StoreNotOpen,
)
from ringtape.capture.faults import FaultPlan
from ringtape.capture.liveness import owner_alive, process_created
from ringtape.capture.markers import MarkerLane
from ringtape.capture.producer import Producer
from ringtape.capture.retention_supervisor import spawn_supervisor
from ringtape.capture.ring import RingGeometry
from ringtape.capture.session import Session, StoreStats, stop_process
from ringtape.capture.shm import remove_orphans
from ringtape.capture.wait import WAIT_STRATEGIES
from ringtape.capture.writer import WriterArgs
from ringtape.storage.format.blob import MAX_BLOB_BYTES
from ringtape.storage.format.entry import (
    TOPIC_RUN_ENDED,
    TOPIC_RUN_STARTED,
    TOPIC_SNAPSHOT_ANCHOR,
    encode_entry,
)
from ringtape.storage.read.reader import CorruptionError
from ringtape.storage.read.replay import ReplayResult, ReplaySourceError, replay_run
from ringtape.storage.run.blobs import Anchor, blob_ref
from ringtape.storage.run.layout import RunPaths, inside, new_run_id
from ringtape.storage.run.lock import WriterLock
from ringtape.storage.run.manifest import Manifest, write_manifest
from ringtape.storage.run.status import RunStatus, check_transition
from ringtape.storage.run.sweep import SweepReport, sweep_instance
from ringtape.storage.segment.writer import DEFAULT_SEGMENT_BYTES

log = logging.getLogger("ringtape.store")

PRODUCER_MODES: Final = ("single", "threads")
ANCHOR_MODES: Final = ("best_effort", "mandatory")
WRITER_MODULE: Final = "ringtape.capture.writer"
SIDECAR_MODULE: Final = "ringtape.capture.marker_sidecar"
F = TypeVar("F", bound=Callable[..., Any])


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
    # "single": one producer thread (the one that called open()); "threads": serialise several.
    producers: str = "single"
    # How the writer idles (a name in capture.wait.WAIT_STRATEGIES; benchmarks swap it).
    writer_wait: str = "sleep"
    # Start the next run's writer and sidecar processes ahead (at construction; as each live
    # or sandbox run ends; as each backtest opens), so that open() does not wait for an
    # interpreter to start and import: two idle processes beside the store's own. close()
    # (or the end of the store) ends them.
    prestart: bool = True
    # "best_effort": a snapshot the writer cannot take yet is superseded or skipped (counted);
    # "mandatory": anchor() waits for a slot (at most halt_threshold), else the store halts.
    anchors: str = "best_effort"
    # Staging for snapshots up to this size is prepared at open(), off the kernel's thread;
    # larger ones are prepared after the first (which pays for its shared memory itself).
    anchor_reserve_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if self.producers not in PRODUCER_MODES:
            raise ValueError(f"producers: {self.producers!r} is not one of {PRODUCER_MODES}")
        if self.anchors not in ANCHOR_MODES:
            raise ValueError(f"anchors: {self.anchors!r} is not one of {ANCHOR_MODES}")
        if not 0 <= self.anchor_reserve_bytes <= MAX_BLOB_BYTES:
            raise ValueError(
                f"anchor_reserve_bytes: {self.anchor_reserve_bytes} is not in 0..{MAX_BLOB_BYTES}"
            )
        if self.writer_wait not in WAIT_STRATEGIES:
            raise ValueError(
                f"writer_wait: {self.writer_wait!r} is not one of {sorted(WAIT_STRATEGIES)}"
            )
        if self.compression_level not in range(1, 23):
            raise ValueError(f"compression_level: {self.compression_level} is not in 1..22")
        if self.segment_max_bytes < 4096:
            raise ValueError(f"segment_max_bytes: {self.segment_max_bytes} is under 4096")
        if not self.seal_timeout_s > 0:
            raise ValueError(f"seal_timeout_s: {self.seal_timeout_s} is not positive")


def _json_object(value: Mapping[str, Any], name: str) -> dict[str, Any]:
    """``value`` as a JSON object (checked now: a bad value must not reach a half-open run)."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{name}: expected a mapping, got {type(value).__name__}")
    try:
        text = json.dumps(dict(value), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: not JSON-serialisable: {exc}") from None
    result: dict[str, Any] = json.loads(text)
    return result


def _as_uuid(value: uuid.UUID | str, name: str) -> uuid.UUID:
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not a UUID") from None


class EventStore:
    """The run-lifecycle event store a trading kernel writes through.

    ``EventStore(config, instance_id=None, clock=None, options=None)``; the instance id is a
    UUID (or its string) and the clock any object with ``timestamp_ns()``.
    """

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
        self._session: Session | None = None
        self._lock = threading.Lock()  # guards the session and the halt state
        self._halt_reason: HaltReason | None = None
        self._halted = False
        self._open = False
        self._run_id: str | None = None
        self._parent_run_id: str | None = config.replay_from_run_id
        self._final_durable = 0
        self._last_anchor = 0
        self._last_anchors: list[AnchorRecord] = []
        self._supervisor: subprocess.Popen[bytes] | None = None
        self._threshold_s = config.halt_threshold.total_seconds()
        # The producer and the lane call back through a weak reference: without a cycle, a
        # store nobody holds is freed at once, and its finalizer ends the children it started.
        me = weakref.proxy(self)
        self._producer = Producer(self._geometry, self._now, me, self._threshold_s)
        # Children started ahead for the next open() (StoreOptions.prestart).
        self._spares = Spares()
        self._finalizer = weakref.finalize(self, self._spares.close)
        self._markers: MarkerLane | None = None
        if config.data_markers is not None:
            # One lane for the store's life, started per run: a kernel may keep the bound
            # ``observe_data`` across runs.
            self._markers = MarkerLane(
                config.data_markers,
                self._producer,
                lambda topic, payload: me._append_marker_failure(topic, payload),
                self._spares,
            )
        self._bind_hot_path()
        self._swept: set[uuid.UUID] = set()
        self.last_sweep: SweepReport | None = None
        self.last_replay: ReplayResult | None = None
        remove_orphans()
        self._prestart()
        if self._instance_id is not None:
            self._boot_sweep(self._instance_id)

    def _bind_hot_path(self) -> None:
        """Bind ``append`` (and ``observe_data``) to the producer's and the lane's own methods:
        a call less per entry. With several producer threads each goes through one lock."""
        producer = self._producer
        observe = self._markers.observe if self._markers is not None else None
        if self.options.producers == "single":
            self.append = producer.append  # type: ignore[method-assign]
            if observe is not None:
                self.observe_data = observe  # type: ignore[method-assign]
            return
        self._producer_lock = threading.RLock()
        self.append = self._serialised(producer.append)  # type: ignore[method-assign]
        self.append_linked = self._serialised(self.append_linked)  # type: ignore[method-assign]
        if observe is not None:
            self.observe_data = self._serialised(observe)  # type: ignore[method-assign]

    def _serialised(self, call: F) -> F:
        lock = self._producer_lock
        producer = self._producer
        get_ident = threading.get_ident

        @functools.wraps(call)
        def serialised(*args: Any, **kwargs: Any) -> Any:
            with lock:
                producer.owner = get_ident()
                return call(*args, **kwargs)

        return serialised  # type: ignore[return-value]

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
        self._spares.reopen()  # after close(): this run's end starts the next one's children
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
        *,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Open a fresh run; returns once ``RunStarted`` (seq 1) is durable.

        Idempotent: opening again while the same run is open does nothing; after ``seal`` it
        opens a new run (a kernel reset/rerun). A different instance id while open is an error.
        ``extra``: kernel-specific facts for the ``RunStarted`` payload (its ``"extra"`` key, a
        JSON object; absent when not given), e.g. how the kernel encodes its payloads.
        """
        iid = _as_uuid(instance_id, "instance_id")
        env = Environment.parse(environment)
        started_extra = None if extra is None else _json_object(extra, "extra")
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
        self.options.faults.kernel_point("open_before_manifest")
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
        run_started: dict[str, Any] = {
            "run_id": run_id,
            "instance_id": str(iid),
            "parent_run_id": self._parent_run_id,
            "environment": str(env),
            "registered_components": components.to_dict(),
            "identity": self.config.identity.to_dict(),
            "config": self.config.to_dict(),
        }
        if started_extra is not None:
            run_started["extra"] = started_extra
        payload = json.dumps(run_started, separators=(",", ":")).encode()
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
            self._producer.append(TOPIC_RUN_STARTED, payload, payload_type="json", ts_init=start_ts)
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
        if env is Environment.BACKTEST:
            # Backtests run back to back (a parameter sweep) and nothing waits on them in real
            # time: the next run's children import while this one runs, so its open() finds
            # them ready. A live or sandbox run's start is left alone (see _teardown).
            self._prestart()
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

        ``ts_init`` is ns since the UNIX epoch (default: the store's clock). Raises
        ``StoreHalted`` after a halt, ``StoreNotOpen`` when no run is open, ``WrongThread`` from
        a thread other than the producer's, ``EntryTooLarge`` for an entry over the format's or
        the ring's limits, and ``TypeError``/``ValueError`` for a bad field (a negative
        ``ts_init``, a payload that is not bytes); nothing is written then. The entry is not
        durable yet when this returns: see ``durable_seq()``.
        """
        return self._producer.append(topic, payload, payload_type=payload_type, ts_init=ts_init)

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
        self._check_thread()
        ts = self._now() if ts_init is None else ts_init
        record = encode_entry(0, ts, 0, topic, payload, payload_type, correlation_id, causation_id)
        return self._producer.append_record(record)

    def observe_data(
        self, data_class: DataMarkerClass | str, instrument_id: str, ts_event: int, ts_init: int
    ) -> None:
        """Note that a market-data message was seen (``config.data_markers``); never blocks.

        With markers configured this name is bound to the lane's ``MarkerLane.observe``, a no-op
        while no run is open; call it on the thread that appends. Without
        ``config.data_markers`` it is this no-op.
        """
        return None

    def marker_lane(self) -> MarkerLane | None:
        """The data-marker lane (``None`` without ``config.data_markers``)."""
        return self._markers

    def durable_seq(self) -> int:
        """The highest seq that is fdatasync'd (0: nothing yet). A shared-memory read."""
        session = self._session
        if session is None:
            return self._final_durable
        try:
            return session.durable_seq()
        except ValueError:  # released by a teardown on another thread just now
            return self._final_durable

    def stats(self) -> StoreStats | None:
        """The live pipeline's counters (``None`` when no run is open): shared-memory reads,
        cheap enough for a monitoring loop, from any thread."""
        session = self._session
        if session is None:
            return None
        try:
            return session.stats(self._producer.seq)
        except ValueError:  # released by a teardown on another thread just now
            return None

    def seal(self, ts_init: int | None = None) -> None:
        """Append ``RunEnded``, make everything durable, mark the run ``ended``; idempotent.

        A halted store is not sealed (its run stays ``running`` for the recovery sweep); its
        writer and shared memory are released all the same, from any thread.
        """
        session = self._session
        if session is None:
            return
        if self._halted:
            self._teardown(kill=True)
            return
        if self.options.producers == "threads":
            with self._producer_lock:
                self._producer.owner = threading.get_ident()
                self._seal(session, ts_init)
            return
        owner = self._producer.owner_thread
        if owner is not None and not owner.is_alive():
            self._producer.take_over(threading.current_thread())  # nobody can race it now
        self._check_thread()
        self._seal(session, ts_init)

    def _seal(self, session: Session, ts_init: int | None) -> None:
        ts = self._now() if ts_init is None else ts_init
        markers = self._markers
        if markers is not None:  # seal the marker stream first: its failure goes before RunEnded
            session.manifest.marker_high_watermark = markers.close(self.options.seal_timeout_s)
        try:
            last = self._producer.append(TOPIC_RUN_ENDED, b"", ts_init=ts)
        except StoreHalted:
            self._teardown(kill=True)
            return
        session.request_close(last)
        if not self._wait_durable(last, self.options.seal_timeout_s):
            self._halt(
                session.writer_failure()
                or HaltReason("WriterError", "RunEnded not durable after seal timeout")
            )
            self._teardown(kill=True)
            return
        if not session.join_writer(self.options.seal_timeout_s):
            # Every entry is durable, but the writer died (or hung) finishing the blobs of
            # the last anchors: a blob temp may be left mid-write. The recovery sweep seals
            # such a run whole (temps removed, anchors checked); the kernel must not.
            self._halt(session.close_failure())
            self._teardown(kill=True)
            return
        faults = self.options.faults
        faults.kernel_point("seal_before_manifest")
        manifest = session.manifest
        check_transition(manifest.status, RunStatus.ENDED)
        manifest.status = RunStatus.ENDED
        manifest.high_watermark = last
        manifest.end_ts_init = ts
        manifest.ts_init_backwards = session.stats(last).ts_init_backwards
        manifest.anchor_fates = session.anchors.counts()  # the writer finished its blobs
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
        entry appended so far (the watermark returned). It costs about one copy of the bytes:
        they go to shared memory, a ``SnapshotAnchor`` entry ``{anchor_id, high_watermark,
        blob_ref, size}`` is appended, and the writer process compresses, hashes and writes the
        blob, durably, off this thread. The anchor is a restore point once its blob is
        durable; ``anchors()`` says what became of each. When the writer is still busy with
        earlier anchors the snapshot supersedes the one waiting (or is skipped): counted,
        never a halt, unless ``StoreOptions(anchors="mandatory")``. An anchor behind the
        previous one raises ``AnchorRefused``.
        """
        if not self._open:
            return None
        if self.options.producers == "threads":
            return self._serialised(self._anchor)
        return self._anchor

    def anchors(self) -> list[AnchorRecord]:
        """The anchors of the open run (or of the last one, once sealed) and their states:
        ``pending``, ``durable``, ``superseded``, ``skipped`` or ``failed``."""
        session = self._session
        if session is not None:
            with contextlib.suppress(ValueError):  # released by a teardown just now
                return session.anchors.records()
        return list(self._last_anchors)

    def anchor_capacity(self) -> int:
        """The largest snapshot ``anchor()`` takes now without allocating shared memory on the
        calling thread (0 when no run is open). It grows ahead of the snapshots anchored and
        starts at ``StoreOptions.anchor_reserve_bytes`` once its staging is prepared."""
        session = self._session
        return 0 if session is None else session.anchors.staging.capacity()

    def _anchor(self, snapshot: bytes | bytearray | memoryview) -> int:
        self._check_thread()
        session = self._session
        if session is None or not self._open:
            raise StoreNotOpen("no run is open: the anchor was not recorded")
        error = self.halted_error()
        if error is not None:
            raise error
        if not isinstance(snapshot, bytes | bytearray | memoryview):
            raise TypeError(f"a snapshot is bytes, not {type(snapshot).__name__}")
        if isinstance(snapshot, memoryview) and snapshot.format != "B":
            snapshot = snapshot.cast("B")  # its len then counts bytes, not items
        if len(snapshot) > MAX_BLOB_BYTES:
            raise ValueError(f"a snapshot of {len(snapshot):,} bytes is over {MAX_BLOB_BYTES:,}")
        watermark = self._producer.seq
        if watermark < self._last_anchor:
            raise AnchorRefused(
                f"anchor at {watermark} is behind the previous anchor at {self._last_anchor}"
            )
        stage = session.anchors
        mandatory = self.options.anchors == "mandatory"
        slot = stage.free_slot(supersede=not mandatory)
        if slot is None and mandatory:
            slot = self._wait_for_slot(session)
        if slot is None:
            stage.skip(
                watermark,
                len(snapshot),
                "neither anchor slot was free: the writer is busy with earlier anchors",
            )
            return watermark
        anchor_id = stage.fill(slot, snapshot, watermark)
        self.options.faults.kernel_point("anchor_before_entry", anchor_id)
        anchor = Anchor(watermark, blob_ref(anchor_id), "", len(snapshot), 0, anchor_id)
        seq = self._producer.append(TOPIC_SNAPSHOT_ANCHOR, anchor.to_payload(), payload_type="json")
        stage.publish(slot, anchor_id, seq)
        # The writer may have taken the entry before the slot said FILLED; if it is idle now,
        # this bell makes it look at the board again.
        session.doorbell.ring()
        session.manifest.anchors.append(dataclasses.replace(anchor, seq=seq).to_index())
        self._last_anchor = watermark
        return watermark

    def _wait_for_slot(self, session: Session) -> int:
        """Mandatory anchors: wait (at most ``halt_threshold``) for the writer to free a slot,
        else halt: this store's restore points are part of what it promises."""
        deadline = time.monotonic() + self._threshold_s
        while time.monotonic() < deadline:
            slot = session.anchors.free_slot(supersede=False)
            if slot is not None:
                return slot
            if self._halted:
                raise self._halted_error()
            time.sleep(0.001)
        self._halt(
            session.writer_failure()
            or HaltReason(
                "AnchorStall",
                f"no anchor slot freed up within {self._threshold_s * 1e3:.0f} ms"
                " (mandatory anchors)",
                stalled_for_s=self._threshold_s,
                threshold_s=self._threshold_s,
            )
        )
        raise self._halted_error()

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

    def close(self) -> None:
        """Seal the open run (if any) and end the children started ahead for the next one.
        A store can still open a run after this; its first ``open()`` then starts its
        children itself."""
        self._spares.close()  # first: the seal's teardown must start none for a next run
        self.seal()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the producer asks on its slow path ----------------------------------------------

    def halted_error(self) -> StoreHalted | None:
        return self._halted_error() if self._halted else None

    def stall(self, stalled_for_s: float) -> StoreHalted:
        """The ring stayed full: halt with the cause (a writer that died or failed meanwhile),
        or with ``BackpressureStall`` when the writer is alive and merely behind."""
        session = self._session
        cause = None if session is None else session.writer_failure()
        self._halt(cause or HaltReason.backpressure(stalled_for_s, self._threshold_s))
        return self._halted_error()

    # -- internals ----------------------------------------------------------------------------

    def _check_thread(self) -> None:
        producer = self._producer
        if producer.owner != -1 and threading.get_ident() != producer.owner:
            raise producer.wrong_thread()

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

    def _start_session(
        self, paths: RunPaths, manifest: Manifest, env: Environment, lock: WriterLock
    ) -> None:
        def writer_args(shm_name: str, doorbell: bytes, anchor_board: str) -> WriterArgs:
            return WriterArgs(
                shm_name=shm_name,
                capacity=self._geometry.capacity,
                run_dir=str(paths.run_dir),
                run_id=paths.run_id,
                doorbell=doorbell,
                parent_pid=os.getpid(),
                segment_max_bytes=self.options.segment_max_bytes,
                compression_level=self.options.compression_level,
                max_batch_entries=self.config.max_batch_entries,
                max_batch_latency_s=self.config.max_batch_latency.total_seconds(),
                publish_clock="ts_init" if env is Environment.BACKTEST else "wall",
                wait=self.options.writer_wait,
                anchor_board=anchor_board,
                prune_blobs=self.config.retention.kind == "SnapshotAnchored",
                halt_threshold_s=self._threshold_s,
                faults=self.options.faults.writer_plan,
            )

        session = Session.start(
            paths,
            manifest,
            lock,
            self._geometry,
            writer_args,
            self._on_writer_exit,
            self._spares,
            self.options.anchor_reserve_bytes,
        )
        self._session = session
        self._producer.bind(session.views, session.doorbell.ring, threading.current_thread())
        self._open = True
        if self._markers is not None:
            self._markers.start(
                paths.run_dir,
                paths.run_id,
                segment_max_bytes=self.options.segment_max_bytes,
                compression_level=self.options.compression_level,
                ready_timeout=self.config.run_started_timeout.total_seconds(),
                stall_s=self._threshold_s,
            )

    def _append_marker_failure(self, topic: str, payload: bytes) -> object:
        return self._producer.append(topic, payload, payload_type="json")

    def _on_writer_exit(self, session: Session) -> None:
        """The monitor thread: the writer exited. An exit nobody asked for halts the store."""
        with self._lock:
            if self._session is not session or not self._open or session.closed_cleanly():
                return
            reason = session.writer_failure() or HaltReason(
                "WriterDied", "writer process exited unexpectedly"
            )
        self._halt(reason)

    def _halt(self, reason: HaltReason) -> None:
        with self._lock:
            if self._halted:
                return
            self._halt_reason = reason
            self._halted = True
            self._producer.stop()  # every later append takes the slow path, which raises
        log.error("event store halted: %s", reason)
        callback = self.options.on_halt
        if callback is not None:
            try:
                callback(reason)
            except Exception:
                log.exception("on_halt callback raised")

    def _wait_durable(self, seq: int, timeout: float) -> bool:
        session = self._session
        if session is None:
            return False
        return session.wait_durable(seq, timeout, lambda: self._halted)

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
            stop_process(supervisor)
        self._producer.unbind()  # appends now take the slow path: StoreHalted or StoreNotOpen
        with contextlib.suppress(ValueError):
            self._last_anchors = session.anchors.records()
        self._final_durable = session.close(kill=kill)
        # The next run's children start importing now (unless a backtest started them as it
        # opened), not while a live run is open: two interpreters importing take a core for a
        # few hundred ms, which on a machine of a core or two is the trading thread's or the
        # writer's, and the durable lag's tail with it.
        self._prestart()

    def _prestart(self) -> None:
        """Start the next run's writer (and sidecar) now, so that ``open()`` finds them with
        their interpreter started and their modules imported."""
        if not self.options.prestart:
            return
        modules = [WRITER_MODULE] + ([SIDECAR_MODULE] if self._markers is not None else [])
        try:
            self._spares.refill(*modules)
        except OSError as exc:  # no spare: open() starts its children itself
            log.warning("could not start the next run's children ahead: %s", exc)


def event_store_factory(
    config: EventStoreConfig, options: StoreOptions | None = None
) -> Callable[[uuid.UUID | str, Clock | None], EventStore]:
    """The kernel's factory: ``(instance_id, clock) -> EventStore``."""

    def factory(instance_id: uuid.UUID | str, clock: Clock | None) -> EventStore:
        return EventStore(config, instance_id=instance_id, clock=clock, options=options)

    return factory
