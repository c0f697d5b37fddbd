"""Wait strategies: how a consumer with nothing to do spends its time.

A strategy has one method, ``idle(streak)``, called with the number of consecutive empty polls.
The writer's loop stays free of backoff policy, and a benchmark can swap strategies
(``StoreOptions.writer_wait`` names one of :data:`WAIT_STRATEGIES`).

Each strategy is built with ``sleep(timeout)``: the consumer's *announced* sleep, which sets
``WAKE_SEQ`` so that the producer rings the doorbell, and returns when rung or after
``timeout``. A strategy that never calls it is never rung: it must poll.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Final, Protocol

Sleep = Callable[[float], None]


class WaitStrategy(Protocol):
    def idle(self, streak: int) -> None: ...


class SleepWait:
    """Sleep at once, until the doorbell rings (or ``sleep_timeout``): the cheapest idle on a
    busy 2-core machine, where a spinning consumer takes a core from the trading thread. The
    first append after an idle spell pays one doorbell (a ``sendto``) and the consumer wakes
    in tens of microseconds: nothing beside ``max_batch_latency``."""

    def __init__(self, sleep: Sleep, *, sleep_timeout: float = 0.05) -> None:
        self._sleep = sleep
        self._timeout = sleep_timeout

    def idle(self, streak: int) -> None:
        self._sleep(self._timeout)


class BackoffWait:
    """Spin briefly, then yield the core, then sleep until the doorbell rings.

    On a 2-core machine three spinning processes would starve each other, so the spin phase
    is short; the sleep phase costs nothing while the pipeline is idle.
    """

    def __init__(
        self,
        sleep: Sleep,
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
    """Fixed short sleeps, never announced (so the producer never rings): predictable, a
    system call per poll even when idle; a baseline for benchmarks."""

    def __init__(self, sleep: Sleep, *, interval: float = 0.0005) -> None:
        del sleep  # never announced: this strategy polls
        self._interval = interval

    def idle(self, streak: int) -> None:
        time.sleep(self._interval)


WAIT_STRATEGIES: Final[dict[str, Callable[[Sleep], WaitStrategy]]] = {
    "sleep": SleepWait,
    "backoff": BackoffWait,
    "polling": SleepingWait,
}
