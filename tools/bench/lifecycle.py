"""``lifecycle``: what ``open()`` and ``seal()`` cost, back to back, with data markers on.

One store opens and seals runs one after another (a backtest parameter sweep), a few hundred
entries and observations in each; every ``open()`` and ``seal()`` is timed on the wall clock.
The first open of a store is reported apart (``first_open_ms``): its children were started
when the store was constructed, and it is the one a live kernel pays once at boot.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any, Final

from ringtape.capture.config import (
    DataMarkerClass,
    DataMarkerConfig,
    Environment,
    EventStoreConfig,
    RegisteredComponents,
)
from ringtape.capture.store import EventStore
from ringtape.tools.bench.common import Run

TARGET_OPEN_MS: Final = 100.0
TARGET_SEAL_MS: Final = 30.0
ENTRIES_PER_RUN: Final = 500


def section_lifecycle(run: Run) -> dict[str, Any]:
    runs = 4 if run.plan.cpu_repeats < 5 else 15
    markers = DataMarkerConfig(high_fidelity=["BTCUSDT-PERP.BINANCE"])
    config = EventStoreConfig(base_dir=str(run.tmp / "lifecycle"), data_markers=markers)
    run.log(f"lifecycle: {runs} runs opened and sealed back to back, markers on")
    opens: list[float] = []
    seals: list[float] = []
    items = run.items
    store = EventStore(config)
    try:
        for _ in range(runs):
            t0 = time.perf_counter()
            store.open(uuid.uuid4(), RegisteredComponents(), Environment.BACKTEST)
            opens.append((time.perf_counter() - t0) * 1e3)
            for i in range(ENTRIES_PER_RUN):
                topic, payload = items[i]
                store.observe_data(DataMarkerClass.Quote, "BTCUSDT-PERP.BINANCE", i, i)
                store.append(topic, payload)
            t0 = time.perf_counter()
            store.seal()
            seals.append((time.perf_counter() - t0) * 1e3)
            if store.is_halted():
                raise RuntimeError(f"the store halted: {store.halt_reason()}")
    finally:
        store.close()
    later = opens[1:] or opens
    open_ms = statistics.median(later)
    seal_ms = statistics.median(seals)
    return {
        "method": "perf_counter around open() and seal() of runs back to back on one store",
        "runs": runs,
        "data_markers": True,
        "first_open_ms": opens[0],
        "open_ms_runs": opens,
        "seal_ms_runs": seals,
        "open_ms": open_ms,
        "seal_ms": seal_ms,
        "target": {"open_ms": TARGET_OPEN_MS, "seal_ms": TARGET_SEAL_MS},
        "met_detail": {"open_ms": open_ms <= TARGET_OPEN_MS, "seal_ms": seal_ms <= TARGET_SEAL_MS},
        "met": open_ms <= TARGET_OPEN_MS and seal_ms <= TARGET_SEAL_MS,
    }
