"""``RingtapeCapture``: a NautilusTrader MessageBus listener that records a kernel's run.

``RingtapeCapture(config).attach(kernel)`` builds the store (its boot sweep recovers this
trader's crashed runs), captures the instruments already in the kernel's cache and adds itself
with ``kernel.msgbus.add_listener``. NautilusTrader then calls ``publish(topic, payload)`` for
every message published on the bus, after the subscribers ran, with the bytes its own
serializer made, and ``is_closed()`` before each; those two are the whole listener protocol.

Rules of this module:

1. Nothing raises into NautilusTrader. An exception out of a listener aborts the engine's run
   (and its dispose), so every path through ``publish`` catches, counts in
   :class:`CaptureStats` and logs; after a seal, a close or a halt, publishes are counted and
   dropped.
2. One publish, one entry: the topic as is, the payload bytes as is, the message's type name as
   ``payload_type`` (``nautilus/payload.py``), ``ts_init`` the kernel's clock when it arrived.
   Market data also becomes a data marker (``nautilus/routes.py``), and with
   ``markers_only`` only that.
3. Lifecycle (``nautilus/lifecycle.py`` names the states): the run opens at the first
   component that starts (``ComponentStateChanged`` STARTING or RUNNING); what was published
   between ``attach`` and then waits in a bounded buffer and goes in first. It is sealed when
   the trader is disposed or reset (the trader is the last component NautilusTrader disposes),
   or by ``close()``, or at interpreter exit. Not at stop: NautilusTrader still publishes
   after every component reported STOPPED (a strategy's closing fill in a backtest).
4. A halt of the store stops trading by NautilusTrader's own means, on the thread that
   publishes: ``risk_engine.set_trading_state(TradingState.HALTED)`` denies every new order
   (cancels still pass) from the next message on. A store that cannot open halts trading too.
5. Threads: a backtest publishes on one thread, so the store has one producer (the thread that
   opened it). A live node's bus is driven by its event loop, but adapters, timers and
   ``close()`` may come from other threads, so there the store serialises producers with a lock
   (``producers="threads"``). ``producers=`` overrides the choice.
6. Snapshot anchors are taken on market data only (``anchor_every`` entries apart): a data
   message reaches the listener after everything it caused was published, and nothing in
   NautilusTrader changes orders, positions or accounts between a change and its publish
   across a data publish, so the kernel's cache then holds exactly what the entries say.
7. Batches (backtests): between two messages NautilusTrader runs tens of microseconds of its
   own code, which evicts ours from the CPU caches, so a message handled at once costs several
   times what the same work costs in a tight loop. A backtest's capture therefore keeps each
   message's ``(topic, payload, ts_init)`` and handles ``batch`` (64) of them at a time, in
   order, exactly as one at a time; a lifecycle message, ``flush()``, ``anchor()`` and
   ``close()`` hand over at once. The cost: a halt is acted on up to ``batch`` messages late,
   and a backtest process that crashes loses the messages not yet handed over (a rerun
   recreates them). A live node (``batch=1``) hands every message over as it arrives.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from nautilus_trader.model.enums import TradingState
from nautilus_trader.model.identifiers import InstrumentId

from ringtape.capture.config import Environment, EventStoreConfig
from ringtape.capture.errors import StoreHalted, StoreNotOpen
from ringtape.capture.store import PRODUCER_MODES, EventStore, StoreOptions
from ringtape.nautilus import lifecycle, snapshot
from ringtape.nautilus.encoding import PayloadEncoding
from ringtape.nautilus.identity import (
    components_of,
    environment_of,
    instance_id_for,
    started_facts,
)
from ringtape.nautilus.payload import (
    data_header_reader,
    instrument_header_reader,
    type_name_reader,
)
from ringtape.nautilus.routes import INSTRUMENT_TOPIC, Kind, Route, route

log = logging.getLogger("ringtape.nautilus")

DEFAULT_MAX_PENDING: Final = 10_000
DEFAULT_BACKTEST_BATCH: Final = 64
_SYSTEM_TOPICS: Final = "events.system."
# Route kinds as module constants: a global read is cheaper than an enum attribute.
_DATA: Final = Kind.DATA
_ORDER: Final = Kind.ORDER
_SYSTEM: Final = Kind.SYSTEM
_INSTRUMENT: Final = Kind.INSTRUMENT
_ROUTE_CACHE_LIMIT: Final = 100_000  # distinct topics remembered (a live node has hundreds)


@dataclass
class CaptureStats:
    """What the capture did besides appending (``RingtapeCapture.entries`` counts those)."""

    instruments: int = 0  # instruments captured from the kernel's cache
    anchors: int = 0
    anchor_failures: int = 0
    dropped_before_open: int = 0  # pending buffer full, or closed before the kernel started
    dropped_after_close: int = 0
    dropped_after_halt: int = 0
    refused: int = 0  # publishes that failed for another reason (logged)
    halt_reason: str | None = None
    trading_halted: bool = False
    open_error: str | None = None


def _no_publish(topic: str, payload: bytes) -> None:
    return None


class RingtapeCapture:
    """Records a NautilusTrader kernel's MessageBus into a ringtape run (module rules above).

    ``config`` and ``options`` are the store's. Keywords: ``instance_id`` (default: stable,
    from the trader id: ``identity.instance_id_for``), ``markers_only`` (market data as data
    markers only, not entries; needs ``config.data_markers``), ``halt_trading`` (default
    True), ``anchor_every`` (entries between automatic snapshot anchors; default none),
    ``restore_cache`` (restore the parent run into the kernel's cache at attach),
    ``producers`` (``"auto"``, ``"single"`` or ``"threads"``), ``batch`` (messages handled
    together; default 64 for a backtest, 1 otherwise; over 1 needs a single producer),
    ``max_pending`` (messages kept between attach and the kernel's start).

    ``publish(topic, payload)`` and ``is_closed()`` are NautilusTrader's listener protocol;
    ``publish`` is rebound as the capture moves from state to state (waiting, recording,
    halted, closed), so the hot path tests no state.
    """

    publish: Callable[[str, bytes], None]

    def __init__(
        self,
        config: EventStoreConfig,
        options: StoreOptions | None = None,
        *,
        instance_id: uuid.UUID | str | None = None,
        markers_only: bool = False,
        halt_trading: bool = True,
        anchor_every: int | None = None,
        restore_cache: bool = False,
        producers: str = "auto",
        batch: int | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if not isinstance(config, EventStoreConfig):
            raise TypeError("config must be an EventStoreConfig")
        config.require_base_dir()
        if markers_only and config.data_markers is None:
            raise ValueError("markers_only: needs config.data_markers (a DataMarkerConfig)")
        if anchor_every is not None and (isinstance(anchor_every, bool) or anchor_every < 1):
            raise ValueError(f"anchor_every: expected a positive entry count, got {anchor_every}")
        if producers != "auto" and producers not in PRODUCER_MODES:
            raise ValueError(f"producers: {producers!r} is not 'auto' or one of {PRODUCER_MODES}")
        if max_pending < 0:
            raise ValueError(f"max_pending: must be >= 0, got {max_pending}")
        if batch is not None and (isinstance(batch, bool) or batch < 1):
            raise ValueError(f"batch: expected a positive message count, got {batch}")
        if batch is not None and batch > 1 and producers == "threads":
            raise ValueError("batch: over 1 needs a single producer (producers='threads')")
        self.config = config
        self.options = options or StoreOptions()
        self.stats = CaptureStats()
        self._instance_id = None if instance_id is None else uuid.UUID(str(instance_id))
        self._markers_only = markers_only
        self._halt_trading = halt_trading
        self._anchor_every = anchor_every
        self._restore_cache = restore_cache
        self._producers = producers
        self._max_pending = max_pending
        self._batch_choice = batch
        self._batch = 1
        self._ops: list[tuple[str, bytes, int]] = []
        self._closed = False
        self._lock = threading.Lock()  # attach, open and close: never the hot path
        self._kernel: Any = None
        self._store: EventStore | None = None
        self._pending: list[tuple[str, bytes, int]] = []
        self._routes: dict[str, Route] = {}
        self._instruments: set[str] = set()
        self._seq = 0
        self._anchor_at = 1 << 63
        self.publish = _no_publish

    # -- the listener protocol -----------------------------------------------------------

    def is_closed(self) -> bool:
        """True once the run is sealed (or the capture closed): the bus skips the listener."""
        return self._closed

    # -- attaching, closing ----------------------------------------------------------------

    def attach(self, kernel: Any) -> RingtapeCapture:
        """Listen to ``kernel`` (``engine.kernel``, ``node.kernel``). Attach right after the
        engine or node is built: what was published before is not captured."""
        with self._lock:
            if self._kernel is not None:
                raise RuntimeError("this capture is already attached to a kernel")
            if self._closed:
                raise RuntimeError("this capture is closed")
            encoding = PayloadEncoding.of(kernel.msgbus.serializer)
            environment = environment_of(kernel)
            iid = self._instance_id or instance_id_for(kernel.trader_id)
            producers = self._producers
            if producers == "auto":
                producers = "single" if environment is Environment.BACKTEST else "threads"
            batch = self._batch_choice
            if batch is None:
                backtest = environment is Environment.BACKTEST and producers == "single"
                batch = DEFAULT_BACKTEST_BATCH if backtest else 1
            if batch > 1 and producers != "single":
                raise ValueError(f"batch: {batch} needs a single producer, not {producers!r}")
            options = dataclasses.replace(self.options, producers=producers)
            store = EventStore(self.config, instance_id=iid, options=options)
            restored = None
            if self._restore_cache:
                from ringtape.nautilus.cache import NautilusCache

                store.restore_parent_cache(iid, NautilusCache(kernel.cache, encoding))
                restored = store.last_replay.run_id if store.last_replay else None
            self._kernel = kernel
            self._store = store
            self._instance_id = iid
            self._environment = environment
            self._batch = batch
            self.encoding = encoding
            self._facts = {"markers_only": self._markers_only, "restored_from": restored}
            self._now = kernel.clock.timestamp_ns
            self._trader_id = kernel.trader_id.value
            self._trader_topic = f"events.system.{self._trader_id}"
            self._type_name = type_name_reader(encoding)
            self._data_header = data_header_reader(encoding)
            self._instrument_header = instrument_header_reader(encoding)
            self._state_of = lifecycle.state_reader(encoding)
            self._serialize = kernel.msgbus.serializer.serialize
            self._append = store.append
            lane = store.marker_lane()
            self._observe = None if lane is None else store.observe_data
            self._data_entries = not self._markers_only
            for instrument in kernel.cache.instruments():
                self._pending.append(self._instrument_entry(instrument))
            self.publish = self._before_open
            kernel.msgbus.add_listener(self)
            atexit.register(self._at_exit)
        return self

    def close(self) -> None:
        """Seal the run (or, before the kernel started, drop what waits); idempotent. From a
        thread other than the producer's, a single-producer store cannot seal: the run is then
        left to the recovery sweep (logged)."""
        if not self._closed and self._ops:
            self.flush()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.publish = self._after_close
            self.stats.dropped_before_open += len(self._pending)
            self._pending.clear()
            atexit.unregister(self._at_exit)
            store = self._store
            if store is not None:
                try:
                    store.close()  # seals, and ends the children started for a next run
                except Exception as exc:
                    log.error("ringtape: the run could not be sealed: %s", exc)

    def __enter__(self) -> RingtapeCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _at_exit(self) -> None:
        try:
            self.close()
        except Exception as exc:  # at exit, nobody is left to catch it
            log.error("ringtape: close at exit failed: %s", exc)

    # -- what a caller may ask ---------------------------------------------------------------

    @property
    def store(self) -> EventStore | None:
        """The store (``None`` before ``attach``)."""
        return self._store

    @property
    def instance_id(self) -> uuid.UUID | None:
        return self._instance_id

    @property
    def entries(self) -> int:
        """Entries in the run so far (its last seq: RunStarted included)."""
        return self._seq

    def anchor(self) -> int | None:
        """Anchor the kernel's cache now; returns the watermark (``None``: no run open).

        Call it from the thread that publishes, where the cache holds exactly what was
        published: a data handler or a timer, not inside an order or position event handler
        (there NautilusTrader has changed the cache before publishing the change).
        """
        store = self._store
        if store is None or self._closed or store.run_id() is None:
            return None
        if self._ops:
            self._flush()
        anchorer = store.snapshot_anchorer()
        if anchorer is None:
            return None
        blob = snapshot.take(self._kernel.cache, self.encoding)
        watermark = anchorer(blob)
        self.stats.anchors += 1
        if self._anchor_every is not None:
            self._anchor_at = self._seq + self._anchor_every
        return watermark

    # -- the states ------------------------------------------------------------------------

    def _before_open(self, topic: str, payload: bytes) -> None:
        """Attached, the kernel not started: wait, and open at the first component start."""
        try:
            ts = self._now()
            if topic.startswith(_SYSTEM_TOPICS):
                state = self._state_of(payload)
                if state.starts():
                    if self._open():
                        self._capture(topic, payload, ts)
                    return
                if state.component_id == self._trader_id and state.ends_run():
                    self.close()  # disposed without ever starting: no run
                    return
            if len(self._pending) < self._max_pending:
                self._pending.append((topic, payload, ts))
            else:
                self.stats.dropped_before_open += 1
        except Exception as exc:
            self._refused(topic, exc)

    def _open(self) -> bool:
        with self._lock:
            store = self._store
            if self._closed or store is None:
                return False
            kernel = self._kernel
            try:
                store.open(
                    self._instance_id,  # type: ignore[arg-type]
                    components_of(kernel),
                    self._environment,
                    extra=started_facts(kernel, self.encoding, **self._facts),
                )
            except Exception as exc:
                self.stats.open_error = f"{type(exc).__name__}: {exc}"
                log.error("ringtape: the run could not open, nothing is recorded: %s", exc)
                self._closed = True
                self.publish = self._after_close
                self.stats.dropped_before_open += len(self._pending)
                self._pending.clear()
                self._stop_trading(f"the event store could not open: {exc}")
                return False
            self._seq = 1
            if self._anchor_every is not None:
                self._anchor_at = 1 + self._anchor_every
            pending, self._pending = self._pending, []
            self.publish = self._record if self._batch == 1 else self._record_batched
        for topic, payload, ts in pending:
            self._capture(topic, payload, ts)
        return True

    def flush(self) -> None:
        """Hand the messages kept for the next batch to the store now (from the thread that
        publishes); without batches there are none."""
        if self._ops:
            self._flush()

    def _record(self, topic: str, payload: bytes) -> None:
        """The run is open, one message at a time: the hot path of a live node."""
        if self._capture(topic, payload, self._now()) and self._seq >= self._anchor_at:
            self._auto_anchor()

    def _record_batched(self, topic: str, payload: bytes) -> None:
        """The run is open, in batches (rule 7): the hot path of a backtest."""
        ops = self._ops
        ops.append((topic, payload, self._now()))
        if len(ops) >= self._batch or topic.startswith(_SYSTEM_TOPICS):
            self._flush()

    def _flush(self) -> None:
        ops, self._ops = self._ops, []
        capture = self._capture
        data = False
        for topic, payload, ts in ops:
            data = capture(topic, payload, ts)
        # Only the last message is a safe point for an anchor: it is the one being published.
        if data and self._seq >= self._anchor_at:
            self._auto_anchor()

    def _capture(self, topic: str, payload: bytes, ts: int) -> bool:
        """Record one message; True when it was market data."""
        try:
            where = self._routes.get(topic)
            if where is None:
                where = self._learn(topic)
            kind = where.kind
            if kind is _DATA:
                observe = self._observe
                if observe is None:  # no markers: the type name is all it needs
                    payload_type = self._type_name(payload)
                    self._seq = self._append(topic, payload, payload_type=payload_type, ts_init=ts)
                    return True
                header = self._data_header(payload)
                if self._data_entries:
                    self._seq = self._append(topic, payload, payload_type=header.type, ts_init=ts)
                ts_event, ts_init = header.ts_event, header.ts_init
                if ts_event.__class__ is not int or ts_init.__class__ is not int:
                    ts_event, ts_init = header.timestamps()
                key = where.key or header.instrument_id
                observe(where.marker, key, ts_event, ts_init)  # type: ignore[arg-type]
                return True
            payload_type = self._type_name(payload)
            if kind is _ORDER and payload_type == "OrderInitialized":
                self._instrument_of_order(payload, ts)
            self._seq = self._append(topic, payload, payload_type=payload_type, ts_init=ts)
            if kind is _SYSTEM:
                self._lifecycle(payload)
            elif kind is _INSTRUMENT:
                self._instruments.add(self._instrument_header(payload).id)
        except StoreHalted as exc:
            self._store_halted(exc)
        except StoreNotOpen:
            self.stats.dropped_after_close += 1
        except Exception as exc:
            self._refused(topic, exc)
        return False

    def _after_close(self, topic: str, payload: bytes) -> None:
        self.stats.dropped_after_close += 1

    def _after_halt(self, topic: str, payload: bytes) -> None:
        """Halted: nothing more is recorded; the dispose still releases the store."""
        self.stats.dropped_after_halt += 1
        try:
            if topic == self._trader_topic and self._state_of(payload).ends_run():
                self.close()
        except Exception as exc:
            self._refused(topic, exc)

    # -- helpers ------------------------------------------------------------------------------

    def _learn(self, topic: str) -> Route:
        if len(self._routes) >= _ROUTE_CACHE_LIMIT:
            self._routes.clear()
        where = route(topic)
        self._routes[topic] = where
        return where

    def _lifecycle(self, payload: bytes) -> None:
        state = self._state_of(payload)
        if state.component_id == self._trader_id and state.ends_run():
            self.close()

    def _instrument_entry(self, instrument: Any) -> tuple[str, bytes, int]:
        self._instruments.add(instrument.id.value)
        self.stats.instruments += 1
        return INSTRUMENT_TOPIC, self._serialize(instrument), self._now()

    def _instrument_of_order(self, payload: bytes, ts: int) -> None:
        """Before an order's first event: its instrument, if no entry holds it yet."""
        iid = self._instrument_header(payload).instrument_id
        if not iid or iid in self._instruments:
            return
        instrument = self._kernel.cache.instrument(InstrumentId.from_str(iid))
        if instrument is None:
            return
        topic, blob, _ = self._instrument_entry(instrument)
        self._seq = self._append(topic, blob, payload_type=type(instrument).__name__, ts_init=ts)

    def _auto_anchor(self) -> None:
        every = self._anchor_every or 0
        try:
            self.anchor()
        except StoreHalted as exc:
            self.stats.anchor_failures += 1
            self._store_halted(exc, dropped=0)
        except Exception as exc:
            self.stats.anchor_failures += 1
            self._anchor_at = self._seq + every
            log.error("ringtape: snapshot anchor failed: %s: %s", type(exc).__name__, exc)

    def _store_halted(self, exc: StoreHalted, dropped: int = 1) -> None:
        self.stats.dropped_after_halt += dropped
        if self.stats.halt_reason is not None:
            return
        self.publish = self._after_halt
        self.stats.halt_reason = str(exc)
        log.error("ringtape: the event store halted, nothing more is recorded: %s", exc)
        self._stop_trading(f"the event store halted: {exc}")

    def _stop_trading(self, why: str) -> None:
        if not self._halt_trading or self._kernel is None:
            return
        try:
            self._kernel.risk_engine.set_trading_state(TradingState.HALTED)
        except Exception as exc:
            log.critical("ringtape: could not halt trading (%s) after: %s", exc, why)
            return
        self.stats.trading_halted = True
        log.critical("ringtape: trading HALTED through the risk engine: %s", why)

    def _refused(self, topic: str, exc: Exception) -> None:
        self.stats.refused += 1
        if self.stats.refused <= 10 or self.stats.refused % 10_000 == 0:
            log.error(
                "ringtape: a publish on %s was not recorded (%d so far): %s: %s",
                topic,
                self.stats.refused,
                type(exc).__name__,
                exc,
            )
