"""What "the same cache" means for a replay: the parts of a NautilusTrader cache a run
rebuilds, as plain values that compare with ``==`` and print.

Orders: status, filled quantity, average price, event count, position. Positions: side,
quantity, realized PnL, open or closed, average open and close prices, event count. Closed
netting cycles (position snapshots): instrument, realized PnL, peak quantity. Accounts: every
balance (total, locked, free) and the event count.
"""

from __future__ import annotations

from typing import Any

from nautilus_trader.model.enums import PositionSide


def cache_summary(cache: Any) -> dict[str, Any]:
    """The comparable state of a NautilusTrader cache (see the module docstring)."""
    return {
        "orders": {
            o.client_order_id.value: (
                o.status_string(),
                str(o.filled_qty),
                o.avg_px,
                o.event_count,
                str(o.position_id),
            )
            for o in cache.orders()
        },
        "positions": {
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
        },
        "position_snapshots": sorted(
            (s.instrument_id.value, str(s.realized_pnl), str(s.peak_qty))
            for s in cache.position_snapshots()
        ),
        "accounts": {
            a.id.value: (
                sorted(
                    (str(c), str(b.total), str(b.locked), str(b.free))
                    for c, b in a.balances().items()
                ),
                a.event_count,
            )
            for a in cache.accounts()
        },
    }


def differences(live: dict[str, Any], replayed: dict[str, Any]) -> list[str]:
    """One line per object that differs between two summaries (empty: the same)."""
    lines = []
    for part in ("orders", "positions", "accounts"):
        a, b = live.get(part, {}), replayed.get(part, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                lines.append(f"{part[:-1]} {key}: live {a.get(key)}, replayed {b.get(key)}")
    if live.get("position_snapshots") != replayed.get("position_snapshots"):
        lines.append("position snapshots differ")
    return lines
