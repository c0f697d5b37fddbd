"""The store's cache protocol (``capture/cache.py``) on a NautilusTrader ``Cache``.

``NautilusCache(cache)`` is what ``EventStore.restore_parent_cache`` and
``storage.read.replay.replay_run`` replay into: ``restore`` rebuilds a snapshot
(``nautilus/snapshot.py``), ``apply`` applies one captured entry. ``snapshot`` is what the
capture anchors.

Rules of this module:

1. Orders, positions and accounts change only as NautilusTrader changes them. Order events go
   through a private ``ExecutionEngine`` over this cache (``ExecutionEngine.process``), so
   fills move positions by NautilusTrader's own rules of the installed version (netting,
   hedging, flips, re-opened netting positions and their snapshots); ``OrderInitialized``
   adds the order (``OrderUnpacker.from_init``), as a strategy's ``submit_order`` does;
   ``AccountState`` creates or updates the account (``AccountFactory``).
2. Only ``events.order.*`` carries order events into the cache: ``OrderFilled`` is published
   on ``events.fills.*`` too, with the same event id, and must count once.
3. The engine's OMS type per strategy is NautilusTrader's own rule read backwards: a fill
   whose position id is ``<instrument>-<strategy>`` was netted, any other was hedged.
4. The payload encoding comes from ``RunStarted`` (``extra.nautilus.encoding``), from a
   restored snapshot, or from the constructor; a payload that needs it before any of those is
   a :class:`NautilusReplayError`.
5. Nothing is published outside this adapter: the engine runs on a private MessageBus with no
   listeners, and the portfolio endpoints it sends to are no-ops.
"""

from __future__ import annotations

import json
from typing import Any, Final

from nautilus_trader.accounting.factory import AccountFactory
from nautilus_trader.cache.cache import Cache
from nautilus_trader.common.component import MessageBus, TestClock
from nautilus_trader.config import StrategyConfig
from nautilus_trader.execution.engine import ExecutionEngine
from nautilus_trader.model.enums import OmsType
from nautilus_trader.model.events import AccountState, OrderFilled, OrderInitialized
from nautilus_trader.model.instruments import Instrument
from nautilus_trader.model.orders.unpacker import OrderUnpacker
from nautilus_trader.trading.strategy import Strategy

from ringtape.nautilus import snapshot
from ringtape.nautilus.encoding import EncodingError, PayloadEncoding
from ringtape.nautilus.routes import INSTRUMENT_TOPIC
from ringtape.storage.format.entry import TOPIC_RUN_STARTED, Entry

_PORTFOLIO_ENDPOINTS: Final = ("Portfolio.update_order", "Portfolio.update_position")


class NautilusReplayError(ValueError):
    """An entry that cannot be applied to a NautilusTrader cache."""


def encoding_of_run_started(payload: bytes) -> PayloadEncoding | None:
    """The payload encoding a ``RunStarted`` payload records (``None``: not a NautilusTrader
    run)."""
    try:
        started = json.loads(payload)
        facts = started.get("extra", {}).get("nautilus")
    except (ValueError, AttributeError):
        raise NautilusReplayError("RunStarted payload is not a JSON object") from None
    if not isinstance(facts, dict):
        return None
    try:
        return PayloadEncoding.from_dict(facts.get("encoding"))
    except EncodingError as exc:
        raise NautilusReplayError(f"RunStarted: {exc}") from None


class NautilusCache:
    """A NautilusTrader ``Cache`` behind the store's ``Cache`` protocol (see the module rules).

    ``cache``: the cache to restore into (default: a fresh ``Cache()``); ``encoding``: the
    payload encoding, when it is known beforehand (a live kernel's, for ``snapshot``).
    """

    def __init__(self, cache: Cache | None = None, encoding: PayloadEncoding | None = None):
        self.cache: Cache = Cache() if cache is None else cache
        self.encoding = encoding
        self._deserialize = None if encoding is None else encoding.serializer().deserialize
        self._engine: ExecutionEngine | None = None
        self._clock = TestClock()
        self._oms: dict[Any, OmsType] = {}
        self.applied = 0  # entries that changed the cache
        self.last_seq = 0

    # -- the store's cache protocol --------------------------------------------------------

    def snapshot(self) -> bytes:
        """The cache's orders, positions, accounts and instruments (``nautilus/snapshot.py``)."""
        if self.encoding is None:
            raise NautilusReplayError("snapshot: the payload encoding is not known")
        return snapshot.take(self.cache, self.encoding)

    def restore(self, blob: bytes) -> None:
        """Replace the cache's state with a snapshot's."""
        try:
            self._set_encoding(snapshot.restore(blob, self.cache))
        except snapshot.SnapshotError as exc:
            raise NautilusReplayError(str(exc)) from None
        self._oms.clear()

    def apply(self, entry: Entry) -> None:
        """Apply one captured entry, in seq order (entries that do not change a cache are
        ignored: market data, lifecycle, positions' own events, fills' duplicates)."""
        topic = entry.topic
        if topic.startswith("events.order."):
            self._order_event(self._decode(entry))
        elif topic.startswith("events.account."):
            self._account_state(self._decode(entry))
        elif topic == INSTRUMENT_TOPIC or topic.startswith("data.instrument."):
            instrument = self._decode(entry)
            if not isinstance(instrument, Instrument):
                raise NautilusReplayError(f"seq {entry.seq}: {topic} holds no instrument")
            self.cache.add_instrument(instrument)
        elif topic == TOPIC_RUN_STARTED:
            found = encoding_of_run_started(entry.payload)
            if found is not None and self.encoding is None:
                self._set_encoding(found)
            return
        else:
            return
        self.applied += 1
        self.last_seq = entry.seq

    # -- internals -----------------------------------------------------------------------

    def _set_encoding(self, encoding: PayloadEncoding) -> None:
        self.encoding = encoding
        self._deserialize = encoding.serializer().deserialize

    def _decode(self, entry: Entry) -> Any:
        if self._deserialize is None:
            raise NautilusReplayError(
                f"seq {entry.seq}: the payload encoding is not known (no RunStarted of a"
                " NautilusTrader run, no snapshot, none given)"
            )
        try:
            return self._deserialize(entry.payload)
        except Exception as exc:
            raise NautilusReplayError(
                f"seq {entry.seq} ({entry.topic}, {entry.payload_type}): does not deserialise:"
                f" {type(exc).__name__}: {exc}"
            ) from None

    def _account_state(self, state: Any) -> None:
        if not isinstance(state, AccountState):
            raise NautilusReplayError(f"an account topic holds a {type(state).__name__}")
        account = self.cache.account(state.account_id)
        if account is None:
            self.cache.add_account(AccountFactory.create(state))
        else:
            account.apply(state)
            self.cache.update_account(account)

    def _order_event(self, event: Any) -> None:
        if isinstance(event, OrderInitialized):
            self.cache.add_order(OrderUnpacker.from_init(event))
            return
        engine = self._engine_for(event)
        if isinstance(event, OrderFilled):
            self._register_oms(engine, event)
        self._clock.set_time(event.ts_init)
        engine.process(event)

    def _engine_for(self, event: Any) -> ExecutionEngine:
        engine = self._engine
        if engine is None:
            bus = MessageBus(event.trader_id, self._clock)
            engine = ExecutionEngine(bus, self.cache, self._clock)
            for endpoint in _PORTFOLIO_ENDPOINTS:
                bus.register(endpoint, _ignore)
            self._engine = engine
        return engine

    def _register_oms(self, engine: ExecutionEngine, fill: OrderFilled) -> None:
        oms = snapshot.oms_type_of(fill.position_id, fill.instrument_id, fill.strategy_id)
        if self._oms.get(fill.strategy_id) is oms:
            return
        name, _, tag = fill.strategy_id.value.rpartition("-")
        config = StrategyConfig(strategy_id=name, order_id_tag=tag, oms_type=oms.name)
        engine.register_oms_type(Strategy(config))
        self._oms[fill.strategy_id] = oms


def _ignore(message: object) -> None:
    return None
