"""Real NautilusTrader backtests for the integration tests: synthetic data, a strategy that
trades in every way the cache must follow (market orders that flip positions, limit orders
that rest and are canceled), and the cache state the parity tests compare."""

from __future__ import annotations

import contextlib
import random
from decimal import Decimal
from typing import Any

from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
from nautilus_trader.cache.cache import Cache
from nautilus_trader.common.config import LoggingConfig, MessageBusConfig
from nautilus_trader.config import StrategyConfig
from nautilus_trader.examples.strategies.ema_cross import EMACross, EMACrossConfig
from nautilus_trader.model.currencies import USD
from nautilus_trader.model.data import (
    Bar,
    BarType,
    BookOrder,
    OrderBookDelta,
    OrderBookDeltas,
    OrderBookDepth10,
    QuoteTick,
    TradeTick,
)
from nautilus_trader.model.enums import (
    AccountType,
    AggressorSide,
    BookAction,
    BookType,
    OmsType,
    OrderSide,
    PositionSide,
)
from nautilus_trader.model.identifiers import InstrumentId, TradeId, TraderId, Venue
from nautilus_trader.model.objects import Money, Price, Quantity
from nautilus_trader.serialization.base import register_serializable_type
from nautilus_trader.test_kit.providers import TestInstrumentProvider
from nautilus_trader.test_kit.stubs.data import TestDataStubs
from nautilus_trader.trading.strategy import Strategy

START_NS = 1_700_000_000_000_000_000
STEP_NS = 100_000_000
AUDUSD = TestInstrumentProvider.default_fx_ccy("AUD/USD")
AAPL = TestInstrumentProvider.equity("AAPL", "XNAS")
BAR_TYPE = BarType.from_str("AUD/USD.SIM-100-TICK-MID-INTERNAL")
AAPL_BARS = BarType.from_str("AAPL.XNAS-1-MINUTE-LAST-EXTERNAL")
LOGGING = LoggingConfig(log_level="ERROR", bypass_logging=True)


def quotes(n: int, seed: int = 42) -> list[QuoteTick]:
    """A random walk of AUD/USD quotes, 100 ms apart."""
    rnd = random.Random(seed)
    mid = 0.65
    out = []
    for i in range(n):
        mid += rnd.gauss(0, 0.00005)
        ts = START_NS + i * STEP_NS
        out.append(
            QuoteTick(
                AUDUSD.id,
                Price(round(mid - 0.00001, 5), 5),
                Price(round(mid + 0.00001, 5), 5),
                Quantity.from_int(1_000_000),
                Quantity.from_int(1_000_000),
                ts,
                ts,
            )
        )
    return out


class FlipperConfig(StrategyConfig, frozen=True):
    every: int = 40


class Flipper(Strategy):
    """Market orders of varying size and side (positions open, grow, close, flip), and limit
    orders far from the market that rest until canceled."""

    SIZES = (
        (OrderSide.BUY, 100_000),
        (OrderSide.SELL, 250_000),
        (OrderSide.BUY, 50_000),
        (OrderSide.BUY, 300_000),
        (OrderSide.SELL, 200_000),
    )

    def __init__(self, config: FlipperConfig) -> None:
        super().__init__(config)
        self.seen = 0
        self.resting: Any = None

    def on_start(self) -> None:
        self.subscribe_quote_ticks(AUDUSD.id)

    def on_quote_tick(self, tick: QuoteTick) -> None:
        self.seen += 1
        every = self.config.every
        if self.seen % every == 0:
            side, size = self.SIZES[(self.seen // every) % len(self.SIZES)]
            self.submit_order(self.order_factory.market(AUDUSD.id, side, Quantity.from_int(size)))
        if self.seen % (every * 3) == 7:
            price = Price(round(tick.bid_price.as_double() - 0.01, 5), 5)
            self.resting = self.order_factory.limit(
                AUDUSD.id, OrderSide.BUY, Quantity.from_int(10_000), price
            )
            self.submit_order(self.resting)
        if self.seen % (every * 3) == 20 and self.resting is not None and self.resting.is_open:
            self.cancel_order(self.resting)


def ema_cross() -> EMACross:
    return EMACross(
        EMACrossConfig(
            instrument_id=AUDUSD.id,
            bar_type=BAR_TYPE,
            trade_size=Decimal(100_000),
            fast_ema_period=10,
            slow_ema_period=20,
            request_bars=False,
        )
    )


def fx_engine(
    n_quotes: int,
    *,
    trader_id: str = "TESTER-001",
    strategy: Strategy | None = None,
    oms: OmsType = OmsType.NETTING,
    message_bus: MessageBusConfig | None = None,
) -> BacktestEngine:
    """A backtest on ``n_quotes`` AUD/USD quotes at venue SIM (a margin account)."""
    engine = BacktestEngine(
        BacktestEngineConfig(
            trader_id=TraderId(trader_id), logging=LOGGING, message_bus=message_bus
        )
    )
    engine.add_venue(
        Venue("SIM"),
        oms,
        AccountType.MARGIN,
        base_currency=USD,
        starting_balances=[Money(1_000_000, USD)],
    )
    engine.add_instrument(AUDUSD)
    engine.add_data(quotes(n_quotes))
    engine.add_strategy(strategy if strategy is not None else Flipper(FlipperConfig()))
    return engine


def register_depth10() -> None:
    """Make OrderBookDepth10 publishable (process-global; needed before an engine is built)."""
    with contextlib.suppress(KeyError):  # registered already in this process
        register_serializable_type(
            OrderBookDepth10, OrderBookDepth10.to_dict, OrderBookDepth10.from_dict
        )


def market_data_engine(trader_id: str = "MARKETS-001") -> BacktestEngine:
    """A backtest fed every kind of market data for AAPL.XNAS: deltas, depth-10, quotes,
    trades and external bars, ``rounds`` times over (no strategy)."""
    register_depth10()
    engine = BacktestEngine(BacktestEngineConfig(trader_id=TraderId(trader_id), logging=LOGGING))
    engine.add_venue(
        Venue("XNAS"),
        OmsType.NETTING,
        AccountType.CASH,
        base_currency=USD,
        starting_balances=[Money(1_000_000, USD)],
        book_type=BookType.L2_MBP,
    )
    engine.add_instrument(AAPL)
    engine.add_data(market_data(AAPL.id, rounds=5))
    return engine


def market_data(iid: InstrumentId, rounds: int) -> list[Any]:
    out: list[Any] = []
    ts = START_NS
    for r in range(rounds):
        bid, ask = Price(99.0 + r, 2), Price(100.0 + r, 2)
        size = Quantity(100, 0)
        out.append(
            OrderBookDeltas(
                iid,
                [
                    OrderBookDelta.clear(iid, 0, ts, ts),
                    OrderBookDelta(
                        iid, BookAction.ADD, BookOrder(OrderSide.BUY, bid, size, 1), 0, 1, ts, ts
                    ),
                    OrderBookDelta(
                        iid, BookAction.ADD, BookOrder(OrderSide.SELL, ask, size, 2), 128, 2, ts, ts
                    ),
                ],
            )
        )
        ts += 1_000_000
        out.append(TestDataStubs.order_book_depth10(instrument_id=iid, ts_event=ts, ts_init=ts))
        ts += 1_000_000
        out.append(QuoteTick(iid, bid, ask, size, size, ts, ts))
        ts += 1_000_000
        out.append(
            TradeTick(iid, bid, Quantity(10, 0), AggressorSide.BUYER, TradeId(f"T{r}"), ts, ts)
        )
        ts += 60_000_000_000
        out.append(Bar(AAPL_BARS, bid, ask, bid, ask, Quantity(1000, 0), ts, ts))
    return out


def cache_state(cache: Cache) -> dict[str, Any]:
    """What the parity tests compare: orders (id, status, filled quantity, average price,
    event count, position), positions (side, quantity, realized PnL, open/closed, average
    prices, event count), closed-cycle position snapshots, account balances."""
    orders = {
        o.client_order_id.value: (
            o.status_string(),
            str(o.filled_qty),
            o.avg_px,
            o.event_count,
            str(o.position_id),
        )
        for o in cache.orders()
    }
    positions = {
        p.id.value: (
            PositionSide(p.side).name,
            str(p.quantity),
            str(p.realized_pnl),
            p.is_closed,
            p.avg_px_open,
            p.avg_px_close,
            p.event_count,
        )
        for p in cache.positions()
    }
    snapshots = sorted(
        (s.instrument_id.value, str(s.realized_pnl), str(s.peak_qty))
        for s in cache.position_snapshots()
    )
    accounts = {
        a.id.value: (
            sorted(
                (str(c), str(b.total), str(b.locked), str(b.free)) for c, b in a.balances().items()
            ),
            a.event_count,
        )
        for a in cache.accounts()
    }
    return {"orders": orders, "positions": positions, "snapshots": snapshots, "accounts": accounts}
