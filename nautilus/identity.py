"""Who a NautilusTrader kernel is, in the store's terms: instance id, environment, components,
and the facts recorded in ``RunStarted`` (``extra.nautilus``).

The instance id must be stable across restarts: the boot sweep recovers the crashed runs of
*that* instance and makes the newest the new run's parent. A NautilusTrader kernel draws a
fresh ``UUID4`` every boot (``kernel.instance_id``), so ringtape derives its own from the
trader id, ``uuid5(NAMESPACE_URL, "ringtape:<trader id>")`` — the same rule the README gives
any kernel — and records NautilusTrader's in ``RunStarted``.
"""

from __future__ import annotations

import uuid
from typing import Any

import nautilus_trader

from ringtape.capture.config import Environment, RegisteredComponents
from ringtape.nautilus.encoding import PayloadEncoding


def instance_id_for(trader_id: object) -> uuid.UUID:
    """The stable ringtape instance id of a trader (a ``TraderId`` or its string)."""
    value = getattr(trader_id, "value", trader_id)
    return uuid.uuid5(uuid.NAMESPACE_URL, f"ringtape:{value}")


def environment_of(kernel: Any) -> Environment:
    """The kernel's ``Environment`` (NautilusTrader's enum) as ringtape's."""
    return Environment.parse(kernel.environment)


def _type_path(component: object) -> str:
    cls = type(component)
    return f"{cls.__module__}.{cls.__qualname__}"


def components_of(kernel: Any) -> RegisteredComponents:
    """The trader's actors, strategies and execution algorithms (id → class path), and the
    bus's subscriptions and endpoints as they are when the run opens."""
    trader = kernel.trader
    return RegisteredComponents(
        actors={a.id.value: _type_path(a) for a in trader.actors()},
        strategies={s.id.value: _type_path(s) for s in trader.strategies()},
        algorithms={e.id.value: _type_path(e) for e in trader.exec_algorithms()},
        subscriptions=sorted({str(s.topic) for s in kernel.msgbus.subscriptions()}),
        endpoints=sorted(str(e) for e in kernel.msgbus.endpoints()),
    )


def started_facts(kernel: Any, encoding: PayloadEncoding, **options: Any) -> dict[str, Any]:
    """``RunStarted``'s ``extra`` for a NautilusTrader kernel."""
    return {
        "nautilus": {
            "nautilus_trader": nautilus_trader.__version__,
            "trader_id": kernel.trader_id.value,
            "kernel_instance_id": kernel.instance_id.value,
            "machine_id": str(kernel.machine_id),
            "kernel_name": str(kernel.name),
            "encoding": encoding.to_dict(),
            **options,
        }
    }
