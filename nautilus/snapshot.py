"""A NautilusTrader cache as snapshot bytes, and back.

NautilusTrader's Python cache has no whole-cache snapshot, and pickles (its position
snapshots) must never be read from a file someone hands us. So a snapshot stores what rebuilds
each object through NautilusTrader's own constructors: the bus-serialised events of every
order (``OrderUnpacker.from_init`` + ``apply``), of every account (``AccountFactory.create`` +
``apply``), the fills of every position and of every closed-cycle position snapshot
(``Position(instrument, fill)`` + ``apply``), and the serialised instruments.

Layout: one msgpack map, ``{"format": "ringtape.nautilus.cache/1", "nautilus_trader":
version, "encoding": {...}, "instruments": [payload], "accounts": [[payload]],
"orders": [[payload]], "positions": [[payload]], "position_snapshots": [[payload]]}``; every
payload is bytes in the recorded encoding (``encoding.PayloadEncoding``).

Not in a snapshot (the cache holds it, the bus never carried it): market data, the key-value
store, margins a portfolio computes, mark prices, order books, venue and strategy state.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
import nautilus_trader
from nautilus_trader.accounting.factory import AccountFactory
from nautilus_trader.cache.cache import Cache
from nautilus_trader.model.enums import OmsType
from nautilus_trader.model.orders.unpacker import OrderUnpacker
from nautilus_trader.model.position import Position

from ringtape.nautilus.encoding import EncodingError, PayloadEncoding

FORMAT: Final = "ringtape.nautilus.cache/1"
_LISTS: Final = ("instruments", "accounts", "orders", "positions", "position_snapshots")


class SnapshotError(ValueError):
    """Snapshot bytes that are not a ringtape NautilusTrader cache snapshot."""


def oms_type_of(position_id: Any, instrument_id: Any, strategy_id: Any) -> OmsType:
    """NETTING when the position id is NautilusTrader's netting id (``<instrument>-<strategy>``,
    what its execution engine assigns under NETTING), else HEDGING."""
    if position_id is not None and position_id.value == f"{instrument_id}-{strategy_id}":
        return OmsType.NETTING
    return OmsType.HEDGING


def take(cache: Cache, encoding: PayloadEncoding) -> bytes:
    """The snapshot bytes of ``cache``'s orders, positions, accounts and instruments."""
    serialize = encoding.serializer().serialize

    def events(items: list[Any]) -> list[list[bytes]]:
        return [[serialize(e) for e in item.events] for item in items]

    return msgspec.msgpack.encode(
        {
            "format": FORMAT,
            "nautilus_trader": nautilus_trader.__version__,
            "encoding": encoding.to_dict(),
            "instruments": [serialize(i) for i in cache.instruments()],
            "accounts": events(cache.accounts()),
            "orders": events(cache.orders()),
            "positions": events(cache.positions()),
            "position_snapshots": events(cache.position_snapshots()),
        }
    )


def _parse(blob: bytes) -> dict[str, Any]:
    try:
        data = msgspec.msgpack.decode(blob)
    except msgspec.DecodeError as exc:
        raise SnapshotError(f"not a cache snapshot: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise SnapshotError(f"not a {FORMAT} snapshot (format {found!r})")
    for key in _LISTS:
        value = data.get(key)
        if not isinstance(value, list):
            raise SnapshotError(f"snapshot: {key} is not a list")
    return data


def restore(blob: bytes, cache: Cache) -> PayloadEncoding:
    """Rebuild the snapshot's objects into ``cache`` (reset first); returns its encoding."""
    data = _parse(blob)
    try:
        encoding = PayloadEncoding.from_dict(data.get("encoding"))
    except EncodingError as exc:
        raise SnapshotError(f"snapshot: {exc}") from None
    deserialize = encoding.serializer().deserialize
    cache.reset()
    try:
        for payload in data["instruments"]:
            cache.add_instrument(deserialize(payload))
        for payloads in data["accounts"]:
            states = [deserialize(p) for p in payloads]
            account = AccountFactory.create(states[0])
            for state in states[1:]:
                account.apply(state)
            cache.add_account(account)
        for payloads in data["orders"]:
            events = [deserialize(p) for p in payloads]
            order = OrderUnpacker.from_init(events[0])
            for event in events[1:]:
                order.apply(event)
            cache.add_order(order, order.position_id)
        for payloads in data["positions"]:
            position = _position(cache, payloads, deserialize)
            cache.add_position(
                position, oms_type_of(position.id, position.instrument_id, position.strategy_id)
            )
        for payloads in data["position_snapshots"]:
            cache.snapshot_position(_position(cache, payloads, deserialize))
    except SnapshotError:
        raise
    except Exception as exc:  # NautilusTrader's own checks: a bad event, a missing instrument
        raise SnapshotError(f"snapshot does not rebuild: {type(exc).__name__}: {exc}") from None
    return encoding


def _position(cache: Cache, payloads: list[bytes], deserialize: Any) -> Position:
    fills = [deserialize(p) for p in payloads]
    if not fills:
        raise SnapshotError("snapshot: a position without fills")
    instrument = cache.instrument(fills[0].instrument_id)
    if instrument is None:
        raise SnapshotError(f"snapshot: no instrument {fills[0].instrument_id} for a position")
    position = Position(instrument, fills[0])
    for fill in fills[1:]:
        position.apply(fill)
    return position
