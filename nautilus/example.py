"""A small, self-contained NautilusTrader backtest: NautilusTrader's own ``EMACross`` example
strategy on a seeded random walk of AUD/USD quotes at a simulated venue. ``ringtape demo
--nautilus`` and ``ringtape bench`` run it; it needs no data files.
"""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any, Final

from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
from nautilus_trader.common.config import LoggingConfig
from nautilus_trader.examples.strategies.ema_cross import EMACross, EMACrossConfig
from nautilus_trader.model.currencies import USD
from nautilus_trader.model.data import BarType, QuoteTick
from nautilus_trader.model.enums import AccountType, OmsType
from nautilus_trader.model.identifiers import TraderId, Venue
from nautilus_trader.model.objects import Money, Price, Quantity
from nautilus_trader.test_kit.providers import TestInstrumentProvider

START_NS: Final = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z
STEP_NS: Final = 100_000_000  # a quote every 100 ms
TRADER_ID: Final = "EXAMPLE-001"


def synthetic_quotes(instrument: Any, n: int, seed: int = 42) -> list[QuoteTick]:
    """``n`` quotes of a random walk around 0.65, one every 100 ms, the same for a seed."""
    rnd = random.Random(seed)
    mid = 0.65
    size = Quantity.from_int(1_000_000)
    out = []
    for i in range(n):
        mid += rnd.gauss(0, 0.00005)
        ts = START_NS + i * STEP_NS
        bid = Price(round(mid - 0.00001, 5), 5)
        ask = Price(round(mid + 0.00001, 5), 5)
        out.append(QuoteTick(instrument.id, bid, ask, size, size, ts, ts))
    return out


def ema_cross_backtest(
    n_quotes: int,
    *,
    trader_id: str = TRADER_ID,
    message_bus: Any = None,
    seed: int = 42,
) -> BacktestEngine:
    """A built, not yet run, ``BacktestEngine``: EMACross(10, 20) on 100-tick bars of
    ``n_quotes`` AUD/USD quotes, a netting margin account of 1,000,000 USD, no logging.
    ``message_bus``: a ``MessageBusConfig`` (default none: JSON payloads)."""
    instrument = TestInstrumentProvider.default_fx_ccy("AUD/USD")
    engine = BacktestEngine(
        BacktestEngineConfig(
            trader_id=TraderId(trader_id),
            logging=LoggingConfig(log_level="ERROR", bypass_logging=True),
            message_bus=message_bus,
        )
    )
    engine.add_venue(
        Venue("SIM"),
        OmsType.NETTING,
        AccountType.MARGIN,
        base_currency=USD,
        starting_balances=[Money(1_000_000, USD)],
    )
    engine.add_instrument(instrument)
    engine.add_data(synthetic_quotes(instrument, n_quotes, seed))
    engine.add_strategy(
        EMACross(
            EMACrossConfig(
                instrument_id=instrument.id,
                bar_type=BarType.from_str(f"{instrument.id}-100-TICK-MID-INTERNAL"),
                trade_size=Decimal(100_000),
                fast_ema_period=10,
                slow_ema_period=20,
                request_bars=False,
            )
        )
    )
    return engine
