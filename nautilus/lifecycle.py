"""The kernel's lifecycle as the capture reads it: ``ComponentStateChanged`` events.

A NautilusTrader kernel publishes no lifecycle event of its own; every component (engines,
simulated venues, the trader, strategies, actors) publishes its state changes on
``events.system.<component id>``. The capture acts on these:

| event | what the capture does |
|---|---|
| any component STARTING or RUNNING, no run open yet | opens the run |
| the trader DISPOSED (``engine.dispose()``, ``node.dispose()``) | records it, then seals |
| the trader RESETTING (``engine.reset()``: what follows is another run) | records it, then seals |
| anything else | records it |

The trader is the last component NautilusTrader disposes (1.221 and 1.231 alike), so its
DISPOSED is the last message of a kernel's life worth keeping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import msgspec

from ringtape.nautilus.encoding import PayloadEncoding
from ringtape.nautilus.payload import struct_reader

STARTS: Final = frozenset({"STARTING", "RUNNING"})
ENDS_RUN: Final = frozenset({"DISPOSED", "RESETTING"})


class ComponentState(msgspec.Struct):
    """The keys of a ``ComponentStateChanged`` payload the capture reads."""

    type: str = ""
    component_id: str = ""
    state: str = ""

    def starts(self) -> bool:
        return self.type == "ComponentStateChanged" and self.state in STARTS

    def ends_run(self) -> bool:
        return self.type == "ComponentStateChanged" and self.state in ENDS_RUN


def state_reader(encoding: PayloadEncoding) -> Callable[[bytes], ComponentState]:
    """A decoder of :class:`ComponentState` for payloads in ``encoding``."""
    return struct_reader(ComponentState, encoding)
