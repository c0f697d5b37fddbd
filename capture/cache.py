"""The cache a run is replayed into: a small protocol and a reference in-memory cache.

A kernel's cache implements :class:`Cache`. ``ReferenceCache`` is the one the demo and the tests
use: orders, positions and accounts keyed by id, updated from entries whose topic starts with
``events.order.``, ``events.position.`` or ``events.account.`` and whose payload is a JSON
object carrying the id (``order_id``, ``position_id``, ``account_id``). Other entries —
market data, lifecycle entries, anchors — do not change it.
"""

from __future__ import annotations

import json
from typing import Any, Final, Protocol

from ringtape.storage.format.entry import Entry


class Cache(Protocol):
    def snapshot(self) -> bytes:
        """The whole state as bytes (what a snapshot anchor stores)."""
        ...

    def restore(self, blob: bytes) -> None:
        """Replace the state with a snapshot taken by ``snapshot``."""
        ...

    def apply(self, entry: Entry) -> None:
        """Apply one entry, in seq order."""
        ...


_KINDS: Final = (
    ("events.order.", "orders", "order_id"),
    ("events.position.", "positions", "position_id"),
    ("events.account.", "accounts", "account_id"),
)


class ReferenceCache:
    """Orders, positions and accounts keyed by id; each event merges its fields in.

    Position events carrying ``fill_qty`` add it to ``quantity`` (not idempotent on purpose:
    replaying an entry twice, or skipping one, shows up as a different state).
    """

    def __init__(self) -> None:
        self.orders: dict[str, dict[str, Any]] = {}
        self.positions: dict[str, dict[str, Any]] = {}
        self.accounts: dict[str, dict[str, Any]] = {}
        self.applied = 0
        self.last_seq = 0

    def apply(self, entry: Entry) -> None:
        kind = next((k for k in _KINDS if entry.topic.startswith(k[0])), None)
        if kind is None:
            return
        prefix, table_name, key = kind
        body = json.loads(entry.payload)
        table: dict[str, dict[str, Any]] = getattr(self, table_name)
        item = table.setdefault(str(body[key]), {})
        fill = body.get("fill_qty")
        if table_name == "positions" and fill is not None:
            item["quantity"] = item.get("quantity", 0) + fill
        item.update({k: v for k, v in body.items() if k != "fill_qty"})
        item["last_event"] = entry.topic.removeprefix(prefix)
        self.applied += 1
        self.last_seq = entry.seq

    def state(self) -> dict[str, Any]:
        return {
            "orders": self.orders,
            "positions": self.positions,
            "accounts": self.accounts,
        }

    def snapshot(self) -> bytes:
        return json.dumps(self.state(), sort_keys=True, separators=(",", ":")).encode()

    def restore(self, blob: bytes) -> None:
        data = json.loads(blob)
        self.orders = data["orders"]
        self.positions = data["positions"]
        self.accounts = data["accounts"]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReferenceCache) and self.state() == other.state()

    __hash__ = None  # type: ignore[assignment]
