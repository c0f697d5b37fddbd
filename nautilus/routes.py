"""What each MessageBus topic is to the capture: market data (and which data-marker class), a
lifecycle event, an order event, an instrument, or anything else.

The table below is everything NautilusTrader's data topics say (``DataEngine`` topic
builders, 1.221 and 1.231); a topic is classified once and the result cached by the capture.

| topic | marker class | marker key |
|---|---|---|
| ``data.quotes.<venue>.<symbol>`` | ``Quote`` | ``<symbol>.<venue>``, the instrument id |
| ``data.trades.<venue>.<symbol>`` | ``Trade`` | ``<symbol>.<venue>`` |
| ``data.bars.<bar type>`` | ``Bar`` | the bar type (one cursor per bar type) |
| ``data.book.deltas.<venue>.<symbol topic>`` | ``BookDeltas`` | the payload's ``instrument_id`` |
| ``data.book.depth.<venue>.<symbol topic>`` | ``BookDepth10`` | the payload's ``instrument_id`` |

Venues hold no ``.``, so the symbol is everything after the venue. Book topics use
``Symbol.topic()``, which turns a composite symbol into a wildcard (``ESZ4.XCME`` → ``ESZ4*``),
so their instrument id is read from the payload. ``historical.``-prefixed topics (request
responses, 1.231) are data that was asked for, not data that arrived: they are ordinary entries
without markers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from ringtape.capture.config import DataMarkerClass

# Entries ringtape writes itself for a NautilusTrader kernel (never a bus topic): an instrument
# taken from the kernel's cache, because it was published before the capture attached, or
# never (an instrument provider may load instruments straight into the cache).
INSTRUMENT_TOPIC: Final = "ringtape.nautilus.Instrument"


class Kind(enum.IntEnum):
    OTHER = 0
    DATA = 1  # market data: a data marker, and an entry unless markers only
    SYSTEM = 2  # events.system.<component>: ComponentStateChanged (the kernel's lifecycle)
    ORDER = 3  # events.order.<strategy>: order events (an order's instrument is captured)
    INSTRUMENT = 4  # data.instrument.<venue>.<symbol>: an instrument published by a data client


@dataclass(frozen=True, slots=True)
class Route:
    kind: Kind
    marker: DataMarkerClass | None = None
    key: str | None = None  # the marker key when the topic holds it; None: from the payload


OTHER: Final = Route(Kind.OTHER)
SYSTEM: Final = Route(Kind.SYSTEM)
ORDER: Final = Route(Kind.ORDER)
INSTRUMENT: Final = Route(Kind.INSTRUMENT)

_VENUE_SYMBOL: Final = (
    ("data.quotes.", DataMarkerClass.Quote),
    ("data.trades.", DataMarkerClass.Trade),
)
_FROM_PAYLOAD: Final = (
    ("data.book.deltas.", DataMarkerClass.BookDeltas),
    ("data.book.depth.", DataMarkerClass.BookDepth10),
)
_BARS: Final = "data.bars."


def route(topic: str) -> Route:
    """Classify one topic (see the module table)."""
    for prefix, marker in _VENUE_SYMBOL:
        if topic.startswith(prefix):
            venue, dot, symbol = topic[len(prefix) :].partition(".")
            if dot and venue and symbol:
                return Route(Kind.DATA, marker, f"{symbol}.{venue}")
            return OTHER
    for prefix, marker in _FROM_PAYLOAD:
        if topic.startswith(prefix):
            return Route(Kind.DATA, marker, None)
    if topic.startswith(_BARS) and len(topic) > len(_BARS):
        return Route(Kind.DATA, DataMarkerClass.Bar, topic[len(_BARS) :])
    if topic.startswith("events.system."):
        return SYSTEM
    if topic.startswith("events.order."):
        return ORDER
    if topic.startswith("data.instrument."):
        return INSTRUMENT
    return OTHER
