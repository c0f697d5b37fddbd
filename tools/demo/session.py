"""A simulated trading session: the demo's kernel, and the tests' source of realistic streams.

Seeded and clock-free: the same seed gives the same messages, whatever the machine. A session
yields two kinds of message:

- market data (``MarketData``): quotes and trades for a few instruments, and bars now and
  then. A kernel shows each to the data-marker lane (``observe_data``); quotes are not entries.
- captured bus messages (``BusMessage``): the strategy's commands and the execution events they
  cause (submitted, accepted, filled, position changed, account state), plus bars and
  strategy signals — the entries the kernel appends, as JSON payloads.

The strategy is a toy mean-reversion on the mid price; what matters is that orders, fills,
positions and accounts evolve as a real session's do, so a cache replayed from the record can
be compared with the live one.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

INSTRUMENTS: Final = ("BTCUSDT-PERP.BINANCE", "ETHUSDT-PERP.BINANCE", "SOLUSDT.BINANCE")
START_PRICES: Final = {INSTRUMENTS[0]: 64_000.0, INSTRUMENTS[1]: 3_200.0, INSTRUMENTS[2]: 145.0}


@dataclass(frozen=True, slots=True)
class MarketData:
    data_class: str  # "Quote", "Trade", "Bar", "BookDeltas", "BookDepth10"
    instrument_id: str
    ts_event: int
    ts_init: int


@dataclass(frozen=True, slots=True)
class BusMessage:
    topic: str
    payload: bytes
    payload_type: str
    ts_init: int


def _dumps(body: dict[str, object]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


class TradingSession:
    """``messages(n)`` yields ``n`` market-data ticks and the bus messages they cause."""

    def __init__(self, seed: int = 7, start_ns: int = 1_700_000_000_000_000_000) -> None:
        self._rng = random.Random(seed)
        self._ts = start_ns
        self._mid = dict(START_PRICES)
        self._position = dict.fromkeys(INSTRUMENTS, 0.0)
        self._balance = 1_000_000.0
        self._order_count = 0
        self._ticks = 0

    def timestamp_ns(self) -> int:
        """The session's clock: the ts_init of the latest message (a kernel's ``Clock``)."""
        return self._ts

    def messages(self, ticks: int) -> Iterator[MarketData | BusMessage]:
        rng = self._rng
        for _ in range(ticks):
            self._ticks += 1
            self._ts += rng.randint(20_000, 200_000)
            instrument = INSTRUMENTS[rng.randrange(len(INSTRUMENTS))]
            mid = self._mid[instrument] * (1 + rng.gauss(0, 0.0002))
            self._mid[instrument] = mid
            kind = "Quote" if rng.random() < 0.7 else "Trade"
            yield MarketData(kind, instrument, self._ts - rng.randint(50_000, 400_000), self._ts)
            if rng.random() < 0.05:
                yield MarketData("BookDeltas", instrument, self._ts - 80_000, self._ts)
            if self._ticks % 500 == 0:
                yield from self._bars()
            drift = mid / START_PRICES[instrument] - 1
            if abs(drift) > 0.0004 and rng.random() < 0.5:
                yield from self._trade(instrument, mid, "SELL" if drift > 0 else "BUY")

    def _bars(self) -> Iterator[MarketData | BusMessage]:
        for instrument in INSTRUMENTS:
            mid = self._mid[instrument]
            yield MarketData("Bar", instrument, self._ts, self._ts)
            body = {
                "bar_type": f"{instrument}-1-MINUTE-LAST-EXTERNAL",
                "open": round(mid * 0.999, 2),
                "high": round(mid * 1.001, 2),
                "low": round(mid * 0.998, 2),
                "close": round(mid, 2),
                "volume": round(self._rng.uniform(10, 500), 3),
                "ts_event": self._ts,
            }
            yield BusMessage(f"data.bars.{instrument}", _dumps(body), "Bar", self._ts)

    def _trade(self, instrument: str, mid: float, side: str) -> Iterator[BusMessage]:
        rng = self._rng
        self._order_count += 1
        order_id = f"O-20261125-{self._order_count:06d}"
        qty = round(rng.choice((0.01, 0.05, 0.1, 0.25, 0.5, 1.0)), 3)
        price = round(mid * (0.9995 if side == "BUY" else 1.0005), 2)
        common = {
            "order_id": order_id,
            "instrument_id": instrument,
            "strategy_id": "MeanRevert-001",
            "side": side,
            "quantity": qty,
        }

        def event(kind: str, extra: dict[str, object]) -> BusMessage:
            self._ts += rng.randint(1_000, 30_000)
            body = {**common, **extra, "ts_event": self._ts}
            return BusMessage(
                f"events.order.{kind}", _dumps(body), f"Order{kind.title()}", self._ts
            )

        signal = {"instrument_id": instrument, "signal": side, "mid": round(mid, 2)}
        yield BusMessage("events.signal.MeanRevert-001", _dumps(signal), "Signal", self._ts)
        yield event("submitted", {"price": price, "type": "LIMIT", "time_in_force": "GTC"})
        yield event("accepted", {"venue_order_id": f"V-{self._order_count:08d}"})
        if rng.random() < 0.15:
            yield event("canceled", {"reason": "stale"})
            return
        filled = 0.0
        while filled < qty:
            part = qty if rng.random() < 0.7 else round(qty / 2, 3)
            part = min(part, round(qty - filled, 3))
            filled = round(filled + part, 3)
            fill_px = round(price * (1 + rng.gauss(0, 0.00005)), 2)
            yield event("filled", {"last_qty": part, "last_px": fill_px, "filled_qty": filled})
            signed = part if side == "BUY" else -part
            self._position[instrument] = round(self._position[instrument] + signed, 6)
            self._balance -= signed * fill_px + abs(signed * fill_px) * 0.0004
            self._ts += rng.randint(500, 5_000)
            position = {
                "position_id": f"{instrument}-MeanRevert-001",
                "instrument_id": instrument,
                "fill_qty": signed,
                "last_px": fill_px,
                "ts_event": self._ts,
            }
            yield BusMessage(
                "events.position.changed", _dumps(position), "PositionChanged", self._ts
            )
            account = {
                "account_id": "BINANCE-001",
                "balance_total": round(self._balance, 2),
                "currency": "USDT",
                "ts_event": self._ts,
            }
            yield BusMessage("events.account.state", _dumps(account), "AccountState", self._ts)
