"""Wait strategies: how a consumer with nothing to do spends its time.

A strategy has one method, ``idle(streak)``, called with the number of consecutive empty polls.
The writer's loop stays free of backoff policy, and a benchmark can swap strategies.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol


class WaitStrategy(Protocol):
    def idle(self, streak: int) -> None: ...


class BackoffWait:
    """Spin briefly, then yield the core, then sleep until the doorbell rings.

    On a 2-core machine three spinning processes would starve each other, so the spin phase
    is short; the sleep phase costs nothing while the pipeline is idle.
    """

    def __init__(
        self,
        sleep: Callable[[float], None],
        *,
        spins: int = 64,
        yields: int = 256,
        sleep_timeout: float = 0.05,
    ) -> None:
        self._sleep = sleep
        self._spins = spins
        self._yields = spins + yields
        self._timeout = sleep_timeout

    def idle(self, streak: int) -> None:
        if streak < self._spins:
            return
        if streak < self._yields:
            os.sched_yield()
            return
        self._sleep(self._timeout)


class SleepingWait:
    """Fixed short sleeps: predictable, slower to react; useful as a benchmark baseline."""

    def __init__(self, interval: float = 0.0005) -> None:
        self._interval = interval

    def idle(self, streak: int) -> None:
        import time

        time.sleep(self._interval)
