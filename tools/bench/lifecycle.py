"""``lifecycle``: what ``open()`` and ``seal()`` cost, back to back, with data markers on.

One store opens and seals runs one after another (a backtest parameter sweep), a few hundred
entries and observations in each; every ``open()`` and ``seal()`` is timed on the wall clock.
The runs are backtests, for which the store starts the next run's writer and sidecar ahead as
each ``open()`` returns (a live or sandbox run starts them as it ends instead, so that their
imports do not compete with its start): runs that last longer than a child's start-up find
them ready (the judged figures, ``spares_ready``); runs back to back (``back_to_back``) wait
for them, and their imports compete with ``seal()`` for the cores.
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
PAUSE_S: Final = 1.0  # longer than a child's start-up here (0.3-0.4 s)


def section_lifecycle(run: Run) -> dict[str, Any]:
    runs = 4 if run.plan.cpu_repeats < 5 else 12
    run.log(f"lifecycle: {runs} runs opened and sealed with a pause, then {runs} back to back")
    ready = _cycle(run, runs, pause_s=PAUSE_S)
    back = _cycle(run, runs, pause_s=0.0)
    open_ms = statistics.median(ready["open_ms_runs"])
    seal_ms = statistics.median(ready["seal_ms_runs"])
    return {
        "method": (
            "perf_counter around open() and seal() of runs on one store, markers on: with"
            f" {PAUSE_S:g} s between runs (the children started ahead are ready: runs longer"
            " than a child's start-up), and back to back (they are still starting)"
        ),
        "runs": runs,
        "data_markers": True,
        "spares_ready": ready,
        "back_to_back": back,
        "open_ms": open_ms,
        "seal_ms": seal_ms,
        "back_to_back_open_ms": statistics.median(back["open_ms_runs"]),
        "back_to_back_seal_ms": statistics.median(back["seal_ms_runs"]),
        "target": {"open_ms": TARGET_OPEN_MS, "seal_ms": TARGET_SEAL_MS},
        "met_detail": {"open_ms": open_ms <= TARGET_OPEN_MS, "seal_ms": seal_ms <= TARGET_SEAL_MS},
        "met": open_ms <= TARGET_OPEN_MS and seal_ms <= TARGET_SEAL_MS,
    }


def _cycle(run: Run, runs: int, pause_s: float) -> dict[str, Any]:
    markers = DataMarkerConfig(high_fidelity=["BTCUSDT-PERP.BINANCE"])
    base = run.tmp / f"lifecycle-{'paused' if pause_s else 'back-to-back'}"
    config = EventStoreConfig(base_dir=str(base), data_markers=markers)
    opens: list[float] = []
    seals: list[float] = []
    items = run.items
    store = EventStore(config)
    try:
        time.sleep(pause_s)  # the first run's children, started at construction
        for _ in range(runs):
            t0 = time.perf_counter()
            store.open(uuid.uuid4(), RegisteredComponents(), Environment.BACKTEST)
            opens.append((time.perf_counter() - t0) * 1e3)
            for i in range(ENTRIES_PER_RUN):
                topic, payload = items[i]
                store.observe_data(DataMarkerClass.Quote, "BTCUSDT-PERP.BINANCE", i, i)
                store.append(topic, payload)
            time.sleep(pause_s)
            t0 = time.perf_counter()
            store.seal()
            seals.append((time.perf_counter() - t0) * 1e3)
            if store.is_halted():
                raise RuntimeError(f"the store halted: {store.halt_reason()}")
    finally:
        store.close()
    return {"pause_s": pause_s, "open_ms_runs": opens, "seal_ms_runs": seals}
